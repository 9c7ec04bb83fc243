//! Sandboxes on the real kernel, removed on drop (also when a test panics):
//! a child cgroup of the test's own ([`CgroupDir`]), a private bpffs mount
//! ([`BpffsMount`]), a network namespace with only `lo` ([`Netns`]), and
//! [`Sandbox`], one test's set of them with a scratch directory.
//!
//! A test cgroup is always a new directory below the cgroup v2 hierarchy
//! ([`cgroup_root`]); the kit never attaches to, kills in or removes a
//! cgroup it did not create, least of all the machine's root cgroup.
//! [`enter`] is the other side: a process (the probe, the bench) confining
//! itself to a cgroup and a private network namespace.

pub mod enter;

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baton_agent::datapath::DatapathConfig;

use super::error::{Error, Result};

pub use enter::{
    add_backend_addresses, check_isolated, current_cgroup, enter, enter_netns, join_cgroup,
    set_link_up, thread_count, SandboxError,
};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The cgroup v2 hierarchy test cgroups are made in: `$BATON_CGROUP_ROOT`,
/// else the host's cgroup2 mount (`/sys/fs/cgroup/unified` on a hybrid host).
pub fn cgroup_root() -> Result<PathBuf> {
    std::env::var_os("BATON_CGROUP_ROOT")
        .map(PathBuf::from)
        .or_else(baton_agent::sys::find_cgroup2_mount)
        .ok_or_else(|| {
            Error::check(
                "finding the cgroup v2 hierarchy",
                "no cgroup2 mount (set BATON_CGROUP_ROOT)",
            )
        })
}

/// A cgroup directory this kit created; its processes killed and the
/// directory removed on drop.
#[derive(Debug)]
pub struct CgroupDir {
    path: PathBuf,
}

impl CgroupDir {
    /// Creates `<parent>/<name>`, which must not exist yet, in a cgroup v2
    /// directory `parent`.
    pub fn create(parent: &Path, name: &str) -> Result<CgroupDir> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(Error::check(
                "a test cgroup name",
                format!("{name:?} is not one path component"),
            ));
        }
        let fs = nix::sys::statfs::statfs(parent)
            .map_err(|e| Error::sys(format!("statfs {}", parent.display()), e))?;
        if fs.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC {
            return Err(Error::check(
                "a test cgroup's parent",
                format!("{} is not in a cgroup v2 hierarchy", parent.display()),
            ));
        }
        let path = parent.join(name);
        std::fs::create_dir(&path)
            .map_err(|e| Error::io(format!("creating cgroup {}", path.display()), e))?;
        Ok(CgroupDir { path })
    }

    /// Creates a child cgroup `name` of this one.
    pub fn child(&self, name: &str) -> Result<CgroupDir> {
        CgroupDir::create(&self.path, name)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// SIGKILLs every process in this cgroup and its descendants.
    pub fn kill_members(&self) {
        // cgroup.kill (Linux 5.14) takes the whole subtree at once; the
        // member list is the fallback.
        if std::fs::write(self.path.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        if let Ok(procs) = std::fs::read_to_string(self.path.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

impl Drop for CgroupDir {
    fn drop(&mut self) {
        for _ in 0..100 {
            self.kill_members();
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "warning: could not remove test cgroup {}",
            self.path.display()
        );
    }
}

/// A bpffs mounted by this kit; emptied (every pin removed, which detaches
/// pinned links nobody else holds) and unmounted on drop.
#[derive(Debug)]
pub struct BpffsMount {
    path: PathBuf,
}

impl BpffsMount {
    /// Mounts a fresh bpffs at `dir` (created if missing).
    pub fn mount(dir: &Path) -> Result<BpffsMount> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        nix::mount::mount(
            Some("bpf"),
            dir,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| Error::sys(format!("mounting a bpffs at {}", dir.display()), e))?;
        Ok(BpffsMount {
            path: dir.to_owned(),
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BpffsMount {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.path) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
        if let Err(e) = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("warning: unmounting {}: {e}", self.path.display());
        }
    }
}

/// A network namespace with only `lo` (up), kept alive by a descriptor;
/// clones share it, the last one dropped releases it.
#[derive(Clone, Debug)]
pub struct Netns(Arc<OwnedFd>);

impl Netns {
    /// Creates one (on a short-lived thread: this process stays where it is).
    pub fn new() -> Result<Netns> {
        let made = std::thread::scope(|s| {
            s.spawn(|| -> Result<OwnedFd> {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| Error::sys("unshare(CLONE_NEWNET)", e))?;
                set_link_up("lo").map_err(|e| Error::io("bringing lo up", e))?;
                enter::tune_netns();
                let f = std::fs::File::open("/proc/thread-self/ns/net")
                    .map_err(|e| Error::io("opening /proc/thread-self/ns/net", e))?;
                Ok(OwnedFd::from(f))
            })
            .join()
        });
        match made {
            Ok(fd) => Ok(Netns(Arc::new(fd?))),
            Err(_) => Err(Error::check(
                "creating a network namespace",
                "thread panicked",
            )),
        }
    }

    /// The namespace descriptor (for `setns`).
    pub fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Runs `f` on a thread inside the namespace (e.g. to reach a listener there).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let fd = self.raw_fd();
        let ran = std::thread::scope(|s| {
            s.spawn(move || -> Result<T> {
                // SAFETY: setns on this thread only; `fd` is open (self is borrowed).
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(Error::io("setns", std::io::Error::last_os_error()));
                }
                Ok(f())
            })
            .join()
        });
        ran.unwrap_or_else(|_| Err(Error::check("running in a network namespace", "panicked")))
    }
}

/// One test's sandbox: its own cgroup, a private bpffs for pins, a scratch
/// directory and, if asked for, a network namespace; all removed on drop
/// (pins and mount, then the cgroup with anything left in it, then the
/// scratch directory).
#[derive(Debug)]
pub struct Sandbox {
    netns: Option<Netns>,
    bpffs: BpffsMount,
    cgroup: CgroupDir,
    dir: tempfile::TempDir,
}

impl Sandbox {
    /// A cgroup `baton-test-<name>-<pid>-<n>` below [`cgroup_root`], a bpffs
    /// at `<scratch>/bpf`.
    pub fn new(name: &str) -> Result<Sandbox> {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let cgroup = CgroupDir::create(
            &cgroup_root()?,
            &format!("baton-test-{name}-{}-{n}", std::process::id()),
        )?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("baton-{name}-"))
            .tempdir()
            .map_err(|e| Error::io("creating a scratch directory", e))?;
        let bpffs = BpffsMount::mount(&dir.path().join("bpf"))?;
        Ok(Sandbox {
            netns: None,
            bpffs,
            cgroup,
            dir,
        })
    }

    /// [`Sandbox::new`] with a network namespace of its own.
    pub fn with_netns(name: &str) -> Result<Sandbox> {
        let mut sb = Sandbox::new(name)?;
        sb.netns = Some(Netns::new()?);
        Ok(sb)
    }

    /// The test's cgroup (what the agent attaches to and clients join).
    pub fn cgroup(&self) -> &Path {
        self.cgroup.path()
    }

    /// The bpffs mount (the agent's `--bpffs`).
    pub fn pin_dir(&self) -> &Path {
        self.bpffs.path()
    }

    /// The scratch directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The network namespace, if it has one.
    pub fn netns(&self) -> Option<&Netns> {
        self.netns.as_ref()
    }

    /// A datapath config for programs loaded by the test process itself.
    pub fn config(&self) -> DatapathConfig {
        DatapathConfig {
            pin_dir: self.pin_dir().to_owned(),
            cgroup: self.cgroup().to_owned(),
            mount_bpffs: false,
            max_entries: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_is_a_fresh_child_cgroup_and_a_bpffs_removed_on_drop() {
        let sb = Sandbox::with_netns("kit-selftest").unwrap();
        let (cgroup, pins) = (sb.cgroup().to_owned(), sb.pin_dir().to_owned());
        assert_ne!(cgroup, cgroup_root().unwrap());
        assert!(cgroup.join("cgroup.procs").is_file());
        let fs = nix::sys::statfs::statfs(&pins).unwrap();
        assert_eq!(fs.filesystem_type(), nix::sys::statfs::BPF_FS_MAGIC);
        let lo_only = sb.netns().unwrap().run(check_isolated).unwrap();
        assert!(lo_only.is_ok(), "{lo_only:?}");
        drop(sb);
        assert!(!cgroup.exists() && !pins.exists());
    }

    #[test]
    fn a_test_cgroup_is_one_new_directory_in_a_cgroup2_hierarchy() {
        let root = cgroup_root().unwrap();
        for bad in ["", ".", "..", "a/b"] {
            assert!(CgroupDir::create(&root, bad).is_err(), "{bad:?}");
        }
        let tmp = tempfile::tempdir().unwrap();
        assert!(
            CgroupDir::create(tmp.path(), "x").is_err(),
            "not a cgroup2 parent"
        );
        let name = format!("baton-kit-selftest-{}", std::process::id());
        let dir = CgroupDir::create(&root, &name).unwrap();
        assert!(CgroupDir::create(&root, &name).is_err(), "exists already");
        let child = dir.child("c").unwrap();
        let path = dir.path().to_owned();
        drop(child);
        drop(dir);
        assert!(!path.exists());
    }
}
