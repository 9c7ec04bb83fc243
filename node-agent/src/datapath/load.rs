//! Loading this build's object with every map pinned in one directory: pins
//! that exist there are used as they are (aya opens them), missing ones are
//! created and pinned. Callers decide beforehand which maps may be reused.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use aya::programs::CgroupSockAddr;
use aya::{Ebpf, EbpfLoader};
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

/// Test hook: refuse to load, as a verifier rejection would
/// (`BATON_TEST_REJECT_PROGRAMS=1`). Lets e2e tests play a bad build.
const REJECT_ENV: &str = "BATON_TEST_REJECT_PROGRAMS";

/// Loads the object with maps pinned under `dir/maps/`.
pub fn load(dir: &Path, max_entries: &BTreeMap<String, u32>) -> Result<Loaded, DatapathError> {
    std::fs::create_dir_all(dir.join("maps")).map_err(|source| DatapathError::Io {
        what: format!("mkdir {}", dir.join("maps").display()),
        source,
    })?;
    let mut loader = EbpfLoader::new();
    let paths: Vec<(&str, std::path::PathBuf)> = MAPS
        .iter()
        .map(|s| (s.name, map_pin_path(dir, s.name)))
        .collect();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    for (name, n) in max_entries {
        loader.map_max_entries(name, *n);
    }
    let mut ebpf = loader
        .load(baton_ebpf::object())
        .map_err(|e| DatapathError::Load(e.to_string()))?;
    let mut progs = Vec::new();
    for (prog, attach) in [
        (PROG_CONNECT4, AttachType::Connect4),
        (PROG_CONNECT6, AttachType::Connect6),
    ] {
        if std::env::var(REJECT_ENV).is_ok_and(|v| v == "1") {
            return Err(DatapathError::Load(format!(
                "{prog}: rejected by {REJECT_ENV} (test hook standing in for the verifier)"
            )));
        }
        let p: &mut CgroupSockAddr = ebpf
            .program_mut(prog)
            .ok_or_else(|| DatapathError::Load(format!("program {prog} missing from the object")))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| DatapathError::Load(e.to_string()))?;
        p.load()
            .map_err(|e| DatapathError::Load(format!("{prog}: {e:?}")))?;
        let fd = p
            .fd()
            .map_err(|e| DatapathError::Load(e.to_string()))?
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| DatapathError::Io {
                what: format!("dup {prog} fd"),
                source,
            })?;
        progs.push((attach, fd));
    }
    Ok(Loaded { ebpf, progs })
}
