//! Loading the eBPF object, pinning its maps, attaching its programs to a
//! cgroup with pinned bpf_links, and tearing it all down again.
//!
//! Pin layout under the bpffs directory:
//! `maps/<name>` for every map and `links/connect4`, `links/connect6`.
//! Pins keep the datapath alive (and attached) when the agent dies.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use aya::Ebpf;
use baton_ebpf::{MetaValue, LAYOUT_VERSION, MAPS};

use crate::maps::{set::map_pin_path, MapError, MapSet};
use crate::migrate::MigrateError;
use crate::sys::{self, AttachType, FsError, SysError};

pub mod load;
pub mod recover;
pub mod stage;
#[cfg(feature = "test-hooks")]
pub mod test_hooks;

pub use recover::MigrationSummary;

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
    /// A pinned map cannot be carried over to this build.
    #[error(transparent)]
    Migrate(#[from] MigrateError),
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
    /// What happened to the maps found at start.
    pub migration: MigrationSummary,
    /// The programs the links run, per attach point.
    pub progs: Vec<(AttachType, OwnedFd)>,
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

fn cgroup_id(dir: &Path) -> Result<u64, DatapathError> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(dir)
        .map_err(io(format!("stat {}", dir.display())))?
        .ino())
}

fn sys_err(what: impl Into<String>) -> impl FnOnce(SysError) -> DatapathError {
    let what = what.into();
    move |source| DatapathError::Sys { what, source }
}

/// Attaches `progs` to the cgroup through the pinned links: an existing pin
/// is updated in place (no detach gap), a missing one is created and pinned.
pub fn attach_links(
    pin_dir: &Path,
    cgroup: &Path,
    progs: &[(AttachType, OwnedFd)],
) -> Result<Vec<AttachedLink>, DatapathError> {
    let cg = File::open(cgroup).map_err(io(format!("open cgroup {}", cgroup.display())))?;
    let cg_id = cgroup_id(cgroup)?;
    let mut links = Vec::new();
    for (attach, prog) in progs {
        let pin = link_pin_path(pin_dir, *attach);
        let fd = if pin.exists() {
            let fd = sys::obj_get(&pin).map_err(sys_err(format!("open {}", pin.display())))?;
            let info = sys::link_info(fd.as_fd()).map_err(sys_err("link info"))?;
            if info.cgroup_id != cg_id {
                return Err(DatapathError::ForeignLink {
                    path: pin.display().to_string(),
                    found: info.cgroup_id,
                    cgroup: cgroup.display().to_string(),
                    expected: cg_id,
                });
            }
            sys::link_update(fd.as_fd(), prog.as_fd(), None)
                .map_err(sys_err(format!("link update {}", pin.display())))?;
            fd
        } else {
            let fd = sys::link_create(prog.as_fd(), cg.as_fd(), *attach).map_err(sys_err(
                format!("attach {attach:?} to {}", cgroup.display()),
            ))?;
            sys::obj_pin(fd.as_fd(), &pin).map_err(sys_err(format!("pin {}", pin.display())))?;
            fd
        };
        links.push(AttachedLink {
            attach: *attach,
            fd,
            pin,
        });
    }
    Ok(links)
}

impl Datapath {
    /// Loads, pins and attaches the datapath. Existing pins (an agent died or
    /// restarted) are adopted: maps of the same layout are reused, maps whose
    /// layout changed are migrated entry by entry, and the links switch to
    /// the new programs with BPF_LINK_UPDATE.
    pub fn start(cfg: &DatapathConfig) -> Result<Self, DatapathError> {
        sys::ensure_bpffs(&cfg.pin_dir, cfg.mount_bpffs)?;
        sys::check_cgroup2(&cfg.cgroup)?;
        for sub in ["maps", "links"] {
            std::fs::create_dir_all(cfg.pin_dir.join(sub))
                .map_err(io(format!("mkdir {}", cfg.pin_dir.display())))?;
        }
        stage::clean_stale(&cfg.pin_dir);
        let plan = recover::plan(cfg)?;
        if plan.all_reused() {
            // Nothing to convert: aya opens the live pins (or creates them).
            let summary = plan.summary();
            drop(plan);
            let loaded = load::load(&cfg.pin_dir, &cfg.max_entries)?;
            let maps = MapSet::open_pinned(&cfg.pin_dir)?;
            let links = attach_links(&cfg.pin_dir, &cfg.cgroup, &loaded.progs)?;
            return Self::assemble(cfg.pin_dir.clone(), maps, links, loaded, summary);
        }
        let (loaded, maps, summary, stage) = recover::migrate(cfg, plan)?;
        // The links switch to programs using the staged maps; only then do
        // the live pins move, so a crash in between leaves the old pins,
        // intact, for the next start to migrate again.
        let links = match attach_links(&cfg.pin_dir, &cfg.cgroup, &loaded.progs) {
            Ok(l) => l,
            Err(e) => {
                stage.remove();
                return Err(e);
            }
        };
        recover::promote_all(cfg, stage, &maps, &summary)?;
        tracing::info!(?summary, "datapath recovered from pins with migration");
        Self::assemble(cfg.pin_dir.clone(), maps, links, loaded, summary)
    }

    /// Builds the running datapath from its parts and bumps the generation.
    pub fn assemble(
        pin_dir: PathBuf,
        maps: MapSet,
        links: Vec<AttachedLink>,
        loaded: load::Loaded,
        summary: MigrationSummary,
    ) -> Result<Self, DatapathError> {
        let reused = summary.adopted();
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
            pin_dir,
            reused_maps: reused,
            generation: meta.generation,
            migration: summary,
            progs: loaded.progs,
            _ebpf: loaded.ebpf,
        })
    }

    /// Detaches the programs and removes every pin (full teardown).
    pub fn teardown(self) -> Result<(), DatapathError> {
        // Detached here, not when the descriptors close: the kernel releases
        // a closed link from a work item, and connects must stop being
        // rewritten by the time the agent has exited.
        for link in &self.links {
            if let Err(e) = crate::sys::link_detach(link.fd.as_fd()) {
                tracing::warn!(attach = ?link.attach, error = %e, "detaching a link; it goes when closed");
            }
        }
        let pin_dir = self.pin_dir.clone();
        drop(self);
        remove_pins(&pin_dir)
    }

    /// Program descriptor for an attach point.
    pub fn prog(&self, attach: AttachType) -> Option<BorrowedFd<'_>> {
        self.progs
            .iter()
            .find(|(a, _)| *a == attach)
            .map(|(_, fd)| fd.as_fd())
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
    stage::clean_stale(pin_dir);
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
