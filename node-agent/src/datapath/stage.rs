//! A staging directory next to the live pins (`<pin_dir>/staging-<pid>`):
//! a new build loads its programs against maps pinned there (reused maps
//! pinned by descriptor, migrated ones created by the loader), so the live
//! pins only change once the links run the new programs.

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use super::DatapathError;
use crate::maps::set::map_pin_path;
use crate::sys;

// bpffs refuses names with a dot, so no hidden-file convention here.
const PREFIX: &str = "staging-";

/// One staging directory, owned by this process.
#[derive(Debug)]
pub struct Stage {
    /// `<pin_dir>/staging-<pid>`.
    pub dir: PathBuf,
    /// Its name under the pin directory.
    pub name: String,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> DatapathError {
    move |source| DatapathError::Io { what, source }
}

impl Stage {
    /// Creates (or empties) this process's staging directory.
    pub fn create(pin_dir: &Path) -> Result<Self, DatapathError> {
        let name = format!("{PREFIX}{}", std::process::id());
        let dir = pin_dir.join(&name);
        remove_dir(&dir);
        std::fs::create_dir_all(dir.join("maps"))
            .map_err(io(format!("mkdir {}", dir.display())))?;
        Ok(Self { dir, name })
    }

    /// Pins a reused map here so the loader picks exactly this map.
    pub fn pin(&self, name: &str, fd: BorrowedFd<'_>) -> Result<(), DatapathError> {
        let path = map_pin_path(&self.dir, name);
        sys::obj_pin(fd, &path).map_err(|source| DatapathError::Sys {
            what: format!("pin {}", path.display()),
            source,
        })
    }

    /// Removes the directory and what is still pinned in it.
    pub fn remove(self) {
        remove_dir(&self.dir);
    }
}

/// Validates a staging directory name a peer sent (no path tricks).
pub fn is_stage_name(name: &str) -> bool {
    name.strip_prefix(PREFIX)
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Moves `<stage>/maps/<name>` over the live pin `<pin_dir>/maps/<name>`
/// (rename(2) on bpffs replaces the target atomically), after checking the
/// staged pin is the map with kernel id `id`.
pub fn promote(pin_dir: &Path, stage: &str, name: &str, id: u32) -> Result<(), DatapathError> {
    if !is_stage_name(stage) || baton_ebpf::map_spec(name).is_none() {
        return Err(DatapathError::Io {
            what: format!("promote {stage}/{name}"),
            source: std::io::Error::other("not a staging pin of this agent's maps"),
        });
    }
    let from = map_pin_path(&pin_dir.join(stage), name);
    let fd = sys::obj_get(&from).map_err(|source| DatapathError::Sys {
        what: format!("open {}", from.display()),
        source,
    })?;
    let info =
        sys::map_info(std::os::fd::AsFd::as_fd(&fd)).map_err(|source| DatapathError::Sys {
            what: format!("map info {}", from.display()),
            source,
        })?;
    if info.id != id {
        return Err(DatapathError::Io {
            what: format!("promote {}", from.display()),
            source: std::io::Error::other(format!("pinned map id {} is not {id}", info.id)),
        });
    }
    let to = map_pin_path(pin_dir, name);
    std::fs::rename(&from, &to).map_err(io(format!(
        "rename {} -> {}",
        from.display(),
        to.display()
    )))
}

/// Pins `fd` as the live pin of `name`, replacing whatever is there
/// (pin beside, then rename over: never a moment without a pin).
pub fn repin(pin_dir: &Path, name: &str, fd: BorrowedFd<'_>) -> Result<(), DatapathError> {
    let to = map_pin_path(pin_dir, name);
    let tmp = pin_dir.join("maps").join(format!("{name}-repin"));
    let _ = std::fs::remove_file(&tmp);
    sys::obj_pin(fd, &tmp).map_err(|source| DatapathError::Sys {
        what: format!("pin {}", tmp.display()),
        source,
    })?;
    std::fs::rename(&tmp, &to).map_err(io(format!("rename {} -> {}", tmp.display(), to.display())))
}

/// Removes staging directories left by processes that no longer exist.
pub fn clean_stale(pin_dir: &Path) {
    let Ok(rd) = std::fs::read_dir(pin_dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() as i32 && !process_running(pid) {
            tracing::info!(dir = %e.path().display(), "removing a dead agent's staging pins");
            remove_dir(&e.path());
        }
    }
}

/// Whether process `pid` exists and is not a zombie (a killed agent its
/// parent has not reaped yet counts as gone).
pub fn process_running(pid: i32) -> bool {
    pid > 0
        && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .is_some_and(|zombie| !zombie)
}

fn remove_dir(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir.join("maps")) {
        for e in rd.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let _ = std::fs::remove_dir(dir.join("maps"));
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_names_are_strict() {
        assert!(is_stage_name("staging-123"));
        for bad in [
            "staging-",
            "staging-1/..",
            "../x",
            "staging-12a",
            "maps",
            ".staging-1",
        ] {
            assert!(!is_stage_name(bad), "{bad}");
        }
    }
}
