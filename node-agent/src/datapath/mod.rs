//! Loading the eBPF object, pinning its maps, attaching its programs to a
//! cgroup with pinned bpf_links, and tearing it all down again.
//!
//! Pin layout under the bpffs directory:
//! `maps/<name>` for every map and `links/connect4`, `links/connect6`.
//! Pins keep the datapath alive (and attached) when the agent dies.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use aya::programs::CgroupSockAddr;
use aya::{Ebpf, EbpfLoader};
use baton_ebpf::{MetaValue, LAYOUT_VERSION, MAPS, PROG_CONNECT4, PROG_CONNECT6};

use crate::maps::{set::map_pin_path, MapError, MapSet};
use crate::sys::{self, AttachType, FsError, SysError};

/// Errors bringing the datapath up or down.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// bpffs / cgroup filesystem problem.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A pinned map from an earlier agent has another layout.
    #[error(
        "pinned map {path} does not match this build ({detail}); remove the pins with \
         `baton-agent teardown` or upgrade through a handover"
    )]
    IncompatiblePin {
        /// Pin path.
        path: String,
        /// What differs.
        detail: String,
    },
    /// aya could not load the object or a program (verifier log included).
    #[error("loading the eBPF object: {0}")]
    Load(String),
    /// A bpf syscall failed.
    #[error("{what}: {source}")]
    Sys {
        /// What we were doing.
        what: String,
        /// Cause.
        source: SysError,
    },
    /// Opening the maps failed.
    #[error(transparent)]
    Map(#[from] MapError),
    /// Other I/O.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A pinned link is attached somewhere else.
    #[error(
        "pinned link {path} is attached to cgroup id {found}, not to {cgroup} (id {expected})"
    )]
    ForeignLink {
        /// Pin path.
        path: String,
        /// cgroup id the link is on.
        found: u64,
        /// Configured cgroup.
        cgroup: String,
        /// Its id.
        expected: u64,
    },
}

/// Where and how to run the datapath.
#[derive(Clone, Debug)]
pub struct DatapathConfig {
    /// Directory on a bpffs for pins.
    pub pin_dir: PathBuf,
    /// cgroup v2 directory the programs attach to.
    pub cgroup: PathBuf,
    /// Mount a bpffs on `pin_dir` when it is not on one.
    pub mount_bpffs: bool,
    /// max_entries overrides by map name (tests use tiny maps to force E2BIG).
    pub max_entries: BTreeMap<String, u32>,
}

/// One attached, pinned link.
#[derive(Debug)]
pub struct AttachedLink {
    /// Attach point.
    pub attach: AttachType,
    /// Link fd.
    pub fd: OwnedFd,
    /// Pin path.
    pub pin: PathBuf,
}

/// The running datapath.
pub struct Datapath {
    /// Handles on every map.
    pub maps: MapSet,
    /// The attached links.
    pub links: Vec<AttachedLink>,
    /// Pin directory.
    pub pin_dir: PathBuf,
    /// The maps existed already (restart from pins): the agent must adopt them.
    pub reused_maps: bool,
    /// Generation recorded in the meta map.
    pub generation: u64,
    _ebpf: Ebpf,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("pin_dir", &self.pin_dir)
            .field("reused_maps", &self.reused_maps)
            .finish()
    }
}

/// Pin path of a link.
pub fn link_pin_path(pin_dir: &Path, attach: AttachType) -> PathBuf {
    pin_dir.join("links").join(match attach {
        AttachType::Connect4 => "connect4",
        AttachType::Connect6 => "connect6",
    })
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DatapathError {
    let what = what.into();
    move |source| DatapathError::Io { what, source }
}

/// Checks pinned maps (if any) against this build; `true` when all exist.
fn check_pins(cfg: &DatapathConfig) -> Result<bool, DatapathError> {
    let mut present = 0;
    for spec in MAPS.iter() {
        let path = map_pin_path(&cfg.pin_dir, spec.name);
        if !path.exists() {
            continue;
        }
        present += 1;
        let fd = sys::obj_get(&path).map_err(|source| DatapathError::Sys {
            what: format!("open {}", path.display()),
            source,
        })?;
        let info = sys::map_info(fd.as_fd()).map_err(|source| DatapathError::Sys {
            what: "map info".into(),
            source,
        })?;
        let want_max = cfg
            .max_entries
            .get(spec.name)
            .copied()
            .unwrap_or(spec.max_entries);
        let mut detail = Vec::new();
        if info.map_type != spec.kind as u32 {
            detail.push(format!("type {} != {}", info.map_type, spec.kind as u32));
        }
        if info.key_size != spec.key_size {
            detail.push(format!("key size {} != {}", info.key_size, spec.key_size));
        }
        if info.value_size != spec.value_size {
            detail.push(format!(
                "value size {} != {}",
                info.value_size, spec.value_size
            ));
        }
        if info.max_entries != want_max {
            detail.push(format!("max_entries {} != {}", info.max_entries, want_max));
        }
        if !detail.is_empty() {
            return Err(DatapathError::IncompatiblePin {
                path: path.display().to_string(),
                detail: detail.join(", "),
            });
        }
    }
    Ok(present == MAPS.len())
}

fn cgroup_id(dir: &Path) -> Result<u64, DatapathError> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(dir)
        .map_err(io(format!("stat {}", dir.display())))?
        .ino())
}

impl Datapath {
    /// Loads, pins and attaches the datapath (reusing compatible pins).
    pub fn start(cfg: &DatapathConfig) -> Result<Self, DatapathError> {
        sys::ensure_bpffs(&cfg.pin_dir, cfg.mount_bpffs)?;
        sys::check_cgroup2(&cfg.cgroup)?;
        for sub in ["maps", "links"] {
            std::fs::create_dir_all(cfg.pin_dir.join(sub))
                .map_err(io(format!("mkdir {}", cfg.pin_dir.display())))?;
        }
        let reused = check_pins(cfg)?;

        let mut loader = EbpfLoader::new();
        let paths: Vec<(&str, PathBuf)> = MAPS
            .iter()
            .map(|s| (s.name, map_pin_path(&cfg.pin_dir, s.name)))
            .collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        for (name, n) in &cfg.max_entries {
            loader.map_max_entries(name, *n);
        }
        let mut ebpf = loader
            .load(baton_ebpf::object())
            .map_err(|e| DatapathError::Load(e.to_string()))?;
        let maps = MapSet::open_pinned(&cfg.pin_dir)?;

        let cgroup =
            File::open(&cfg.cgroup).map_err(io(format!("open cgroup {}", cfg.cgroup.display())))?;
        let cg_id = cgroup_id(&cfg.cgroup)?;
        let mut links = Vec::new();
        for (prog, attach) in [
            (PROG_CONNECT4, AttachType::Connect4),
            (PROG_CONNECT6, AttachType::Connect6),
        ] {
            let p: &mut CgroupSockAddr = ebpf
                .program_mut(prog)
                .ok_or_else(|| {
                    DatapathError::Load(format!("program {prog} missing from the object"))
                })?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| DatapathError::Load(e.to_string()))?;
            p.load()
                .map_err(|e| DatapathError::Load(format!("{prog}: {e:?}")))?;
            let prog_fd = p
                .fd()
                .map_err(|e| DatapathError::Load(e.to_string()))?
                .as_fd();
            let pin = link_pin_path(&cfg.pin_dir, attach);
            let fd = if pin.exists() {
                // Restart from pins: swap the program in place, no detach gap.
                let fd = sys::obj_get(&pin).map_err(|source| DatapathError::Sys {
                    what: format!("open {}", pin.display()),
                    source,
                })?;
                let info = sys::link_info(fd.as_fd()).map_err(|source| DatapathError::Sys {
                    what: "link info".into(),
                    source,
                })?;
                if info.cgroup_id != cg_id {
                    return Err(DatapathError::ForeignLink {
                        path: pin.display().to_string(),
                        found: info.cgroup_id,
                        cgroup: cfg.cgroup.display().to_string(),
                        expected: cg_id,
                    });
                }
                sys::link_update(fd.as_fd(), prog_fd, None).map_err(|source| {
                    DatapathError::Sys {
                        what: format!("link update {}", pin.display()),
                        source,
                    }
                })?;
                fd
            } else {
                let fd = sys::link_create(prog_fd, cgroup.as_fd(), attach).map_err(|source| {
                    DatapathError::Sys {
                        what: format!("attach {prog} to {}", cfg.cgroup.display()),
                        source,
                    }
                })?;
                sys::obj_pin(fd.as_fd(), &pin).map_err(|source| DatapathError::Sys {
                    what: format!("pin {}", pin.display()),
                    source,
                })?;
                fd
            };
            links.push(AttachedLink { attach, fd, pin });
        }

        let mut meta = if reused {
            maps.meta()?
        } else {
            MetaValue::default()
        };
        meta.layout_version = LAYOUT_VERSION;
        meta.generation += 1;
        maps.set_meta(&meta)?;
        Ok(Self {
            maps,
            links,
            pin_dir: cfg.pin_dir.clone(),
            reused_maps: reused,
            generation: meta.generation,
            _ebpf: ebpf,
        })
    }

    /// Detaches the programs and removes every pin (full teardown).
    pub fn teardown(self) -> Result<(), DatapathError> {
        let pin_dir = self.pin_dir.clone();
        drop(self);
        remove_pins(&pin_dir)
    }
}

/// Removes the pins under `pin_dir` (links detach once nothing holds them).
pub fn remove_pins(pin_dir: &Path) -> Result<(), DatapathError> {
    for attach in [AttachType::Connect4, AttachType::Connect6] {
        remove_if_exists(&link_pin_path(pin_dir, attach))?;
    }
    for spec in MAPS.iter() {
        remove_if_exists(&map_pin_path(pin_dir, spec.name))?;
    }
    for sub in ["links", "maps"] {
        let _ = std::fs::remove_dir(pin_dir.join(sub));
    }
    Ok(())
}

fn remove_if_exists(p: &Path) -> Result<(), DatapathError> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DatapathError::Io {
            what: format!("unpin {}", p.display()),
            source: e,
        }),
    }
}
