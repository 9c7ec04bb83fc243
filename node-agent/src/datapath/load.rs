//! Loading this build's object. [`load`]: every map pinned in one directory
//! (pins that exist there are used as they are, aya opens them; missing ones
//! are created and pinned); callers decide beforehand which maps may be
//! reused. [`open_object`] + [`load_program`] are its two steps, which
//! `preflight` also runs without pins: maps created for the load are never
//! pinned and go away with the [`Ebpf`].

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use aya::programs::{CgroupSockAddr, ProgramError};
use aya::{Ebpf, EbpfError, EbpfLoader};
use baton_ebpf::{MAPS, PROG_CONNECT4, PROG_CONNECT6};

use super::DatapathError;
use crate::maps::set::map_pin_path;
use crate::sys::AttachType;

/// The loaded object: programs verified and loaded, maps pinned.
pub struct Loaded {
    /// Keeps programs and maps loaded.
    pub ebpf: Ebpf,
    /// Program descriptors per attach point.
    pub progs: Vec<(AttachType, OwnedFd)>,
}

/// The build's programs and where they attach, in load order.
pub const PROGRAMS: [(&str, AttachType); 2] = [
    (PROG_CONNECT4, AttachType::Connect4),
    (PROG_CONNECT6, AttachType::Connect6),
];

/// Test hook: refuse to load, as a verifier rejection would
/// (`BATON_TEST_REJECT_PROGRAMS=1`). Lets e2e tests play a bad build.
pub const REJECT_ENV: &str = "BATON_TEST_REJECT_PROGRAMS";

/// Why this build's object or one of its programs did not load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The object did not load (maps, BTF, relocations) before any program
    /// reached the verifier.
    #[error("loading the eBPF object: {0}")]
    Object(#[source] Box<EbpfError>),
    /// The object lacks a program this build attaches.
    #[error("program {0} missing from the object")]
    Missing(&'static str),
    /// `BPF_PROG_LOAD` failed: the kernel's verifier rejected the program
    /// (or, without a verifier log, the kernel refused it for another
    /// reason such as a missing capability).
    #[error("program {program}: the kernel refused to load it: {source}")]
    Program {
        /// Program name.
        program: &'static str,
        /// aya's error, with the verifier log.
        #[source]
        source: Box<ProgramError>,
    },
    /// [`REJECT_ENV`] is set.
    #[error("{program}: rejected by {REJECT_ENV} (test hook standing in for the verifier)")]
    TestHook {
        /// Program name.
        program: &'static str,
    },
    /// Other I/O (a descriptor copy, the pin directory).
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A test-only fault (feature `test-hooks`) could not be applied.
    #[error("test hook: {0}")]
    Hook(String),
}

impl LoadError {
    /// The kernel verifier's log, when the kernel refused a program with one.
    pub fn verifier_log(&self) -> Option<String> {
        match self {
            LoadError::Program { source, .. } => match source.as_ref() {
                ProgramError::LoadError { verifier_log, .. } => {
                    let log = verifier_log.to_string();
                    (!log.trim().is_empty()).then_some(log)
                }
                _ => None,
            },
            _ => None,
        }
    }
}

impl From<LoadError> for DatapathError {
    fn from(e: LoadError) -> Self {
        match e {
            // DatapathError::Load says "loading the eBPF object" itself.
            LoadError::Object(e) => DatapathError::Load(e.to_string()),
            e => DatapathError::Load(e.to_string()),
        }
    }
}

/// One program, loaded.
#[derive(Debug)]
pub struct LoadedProgram {
    /// Program name.
    pub name: &'static str,
    /// Where it attaches.
    pub attach: AttachType,
    /// Its descriptor (a copy: the [`Ebpf`] keeps its own).
    pub fd: OwnedFd,
    /// Time of the load (the verifier's run).
    pub took: Duration,
    /// Instructions the verifier processed (kernel ≥ 5.16).
    pub verified_insns: Option<u32>,
    /// Size of the translated program, bytes.
    pub xlated_bytes: Option<u32>,
}

/// Loads the object with maps pinned under `dir/maps/`.
pub fn load(dir: &Path, max_entries: &BTreeMap<String, u32>) -> Result<Loaded, DatapathError> {
    std::fs::create_dir_all(dir.join("maps")).map_err(|source| DatapathError::Io {
        what: format!("mkdir {}", dir.join("maps").display()),
        source,
    })?;
    let mut ebpf = open_object(Some(dir), max_entries)?;
    let mut progs = Vec::new();
    for (name, attach) in PROGRAMS {
        let p = load_program(&mut ebpf, name, attach)?;
        progs.push((attach, p.fd));
    }
    Ok(Loaded { ebpf, progs })
}

/// Opens this build's object: maps created (or, with `pins`, opened and
/// pinned under `pins/maps/`), BTF loaded, relocations done; no program is
/// loaded yet. Without `pins` nothing is pinned: the maps live as long as
/// the returned [`Ebpf`].
pub fn open_object(
    pins: Option<&Path>,
    max_entries: &BTreeMap<String, u32>,
) -> Result<Ebpf, LoadError> {
    // Declared before the loader, which borrows it.
    #[cfg(feature = "test-hooks")]
    let refuse_one_in = super::test_hooks::refuse_one_in()?;
    let mut loader = EbpfLoader::new();
    #[cfg(feature = "test-hooks")]
    loader.override_global(baton_ebpf::TEST_REFUSE_ONE_IN_GLOBAL, &refuse_one_in, true);
    let paths: Vec<(&str, std::path::PathBuf)> = match pins {
        Some(dir) => MAPS
            .iter()
            .map(|s| (s.name, map_pin_path(dir, s.name)))
            .collect(),
        None => Vec::new(),
    };
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    for (name, n) in max_entries {
        loader.map_max_entries(name, *n);
    }
    #[cfg(feature = "test-hooks")]
    let broken = super::test_hooks::broken_object()?;
    #[cfg(feature = "test-hooks")]
    let object = broken.as_ref().map_or(baton_ebpf::object(), |b| b.bytes());
    #[cfg(not(feature = "test-hooks"))]
    let object = baton_ebpf::object();
    loader
        .load(object)
        .map_err(|e| LoadError::Object(Box::new(e)))
}

/// Loads program `name` of an opened object through the kernel's verifier
/// (nothing is attached).
pub fn load_program(
    ebpf: &mut Ebpf,
    name: &'static str,
    attach: AttachType,
) -> Result<LoadedProgram, LoadError> {
    if std::env::var(REJECT_ENV).is_ok_and(|v| v == "1") {
        return Err(LoadError::TestHook { program: name });
    }
    let program_err = |e: ProgramError| LoadError::Program {
        program: name,
        source: Box::new(e),
    };
    let p: &mut CgroupSockAddr = ebpf
        .program_mut(name)
        .ok_or(LoadError::Missing(name))?
        .try_into()
        .map_err(program_err)?;
    let t0 = Instant::now();
    p.load().map_err(program_err)?;
    let took = t0.elapsed();
    let info = p.info().map_err(program_err)?;
    let fd = p
        .fd()
        .map_err(program_err)?
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| LoadError::Io {
            what: format!("dup {name} fd"),
            source,
        })?;
    Ok(LoadedProgram {
        name,
        attach,
        fd,
        took,
        verified_insns: info.verified_instruction_count(),
        xlated_bytes: info.size_translated(),
    })
}
