//! `--bpffs` and `--cgroup`, as `run` would need them (statfs only: a
//! missing `--bpffs` is not created).

use std::path::{Path, PathBuf};

use baton_api::preflight::EnvironmentCheck;

use super::{outcome, PreflightConfig};
use crate::sys::{self, FsError};

/// Where the pins would go.
#[derive(Debug, PartialEq, Eq)]
enum Bpffs {
    /// The directory exists on a bpffs.
    Mounted,
    /// It does not exist; `run` creates it on the bpffs it lies in.
    Creatable(PathBuf),
    /// It exists (or would be created) outside any bpffs; `run` mounts one
    /// there only with `--mount-bpffs`.
    Elsewhere(PathBuf),
}

/// Checks both directories.
pub fn check(cfg: &PreflightConfig) -> EnvironmentCheck {
    let mut said = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let dir = cfg.pin_dir.display();
    let mounted = match bpffs(&cfg.pin_dir) {
        Ok(Bpffs::Mounted) => {
            said.push(format!("bpffs {dir} is mounted"));
            true
        }
        Ok(Bpffs::Creatable(at)) => {
            said.push(format!(
                "bpffs {dir} does not exist yet (a fresh node): run creates it on the bpffs at {}",
                at.display()
            ));
            false
        }
        Ok(Bpffs::Elsewhere(at)) if cfg.mount_bpffs => {
            said.push(format!(
                "{} is not on a bpffs: run mounts one at {dir} (--mount-bpffs)",
                at.display()
            ));
            false
        }
        Ok(Bpffs::Elsewhere(at)) => {
            problems.push(format!(
                "{} is not on a bpffs: run would fail (mount one at {dir}, or pass --mount-bpffs)",
                at.display()
            ));
            false
        }
        Err(e) => {
            problems.push(format!("bpffs {dir}: {e}"));
            false
        }
    };
    let cgroup_v2 = match &cfg.cgroup {
        None => {
            problems.push("no cgroup v2 mount found; pass --cgroup".into());
            false
        }
        Some(cg) => match sys::check_cgroup2(cg) {
            Ok(()) => {
                said.push(format!("cgroup {} is cgroup v2", cg.display()));
                true
            }
            Err(e) => {
                problems.push(e.to_string());
                false
            }
        },
    };
    let ok = problems.is_empty();
    EnvironmentCheck {
        outcome: outcome(ok),
        summary: if ok {
            said.join("; ")
        } else {
            problems.join("; ")
        },
        bpffs_mounted: mounted,
        cgroup_v2,
    }
}

/// What `dir` is: on a bpffs, creatable on one, or neither (with the
/// directory that decides: `dir` or its nearest existing ancestor).
fn bpffs(dir: &Path) -> Result<Bpffs, FsError> {
    let mut at = dir;
    loop {
        if at.exists() {
            let on = sys::is_bpffs(at)?;
            return Ok(match (on, at == dir) {
                (true, true) => Bpffs::Mounted,
                (true, false) => Bpffs::Creatable(at.to_path_buf()),
                (false, _) => Bpffs::Elsewhere(at.to_path_buf()),
            });
        }
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => return Ok(Bpffs::Elsewhere(dir.to_path_buf())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_off_any_bpffs_is_not_one() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let missing = tmp.path().join("a/b");
        assert_eq!(
            bpffs(&missing).expect("statfs"),
            Bpffs::Elsewhere(tmp.path().to_path_buf())
        );
        assert_eq!(
            bpffs(tmp.path()).expect("statfs"),
            Bpffs::Elsewhere(tmp.path().to_path_buf())
        );
    }
}
