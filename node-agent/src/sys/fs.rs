//! bpffs and cgroup v2 helpers.

use std::path::Path;

const BPF_FS_MAGIC: i64 = 0xcafe4a11;
const CGROUP2_SUPER_MAGIC: i64 = 0x63677270;

/// Filesystem errors the datapath setup can hit.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// statfs or mkdir failed.
    #[error("{path}: {source}")]
    Io {
        /// Path involved.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The directory is not on the expected filesystem.
    #[error("{path} is not on a {expected} filesystem (mount one with `{hint}`)")]
    WrongFs {
        /// Path involved.
        path: String,
        /// Filesystem expected.
        expected: &'static str,
        /// How to fix it.
        hint: String,
    },
    /// Mounting bpffs failed.
    #[error("mount -t bpf bpf {path}: {source}")]
    Mount {
        /// Mount point.
        path: String,
        /// Cause.
        source: nix::Error,
    },
}

fn fs_magic(path: &Path) -> Result<i64, FsError> {
    let st = nix::sys::statfs::statfs(path).map_err(|e| FsError::Io {
        path: path.display().to_string(),
        source: e.into(),
    })?;
    Ok(st.filesystem_type().0 as i64)
}

/// Whether `path` lives on a bpffs.
pub fn is_bpffs(path: &Path) -> Result<bool, FsError> {
    Ok(fs_magic(path)? == BPF_FS_MAGIC)
}

/// Makes sure `dir` exists on a bpffs, mounting one there when `mount` is set.
pub fn ensure_bpffs(dir: &Path, mount: bool) -> Result<(), FsError> {
    std::fs::create_dir_all(dir).map_err(|e| FsError::Io {
        path: dir.display().to_string(),
        source: e,
    })?;
    if is_bpffs(dir)? {
        return Ok(());
    }
    if !mount {
        return Err(FsError::WrongFs {
            path: dir.display().to_string(),
            expected: "bpf",
            hint: format!("mount -t bpf bpf {}", dir.display()),
        });
    }
    nix::mount::mount(
        Some("bpf"),
        dir,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| FsError::Mount {
        path: dir.display().to_string(),
        source,
    })
}

/// Checks that `dir` is a cgroup v2 directory.
pub fn check_cgroup2(dir: &Path) -> Result<(), FsError> {
    if fs_magic(dir)? == CGROUP2_SUPER_MAGIC {
        Ok(())
    } else {
        Err(FsError::WrongFs {
            path: dir.display().to_string(),
            expected: "cgroup2",
            hint: "pass the cgroup v2 mount (e.g. /sys/fs/cgroup or /sys/fs/cgroup/unified) or a child of it".into(),
        })
    }
}

/// The first cgroup v2 mount point in /proc/self/mountinfo (hybrid hosts mount it at /sys/fs/cgroup/unified).
pub fn find_cgroup2_mount() -> Option<std::path::PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (post.split_whitespace().next()? == "cgroup2")
            .then(|| pre.split_whitespace().nth(4).map(std::path::PathBuf::from))?
    })
}
