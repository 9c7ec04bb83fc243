//! Drop guards: the bench's own cgroup, its own bpffs mount, and child processes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Our own child cgroup; on drop moves this process back to its original cgroup and removes it.
pub struct CgroupGuard {
    pub dir: PathBuf,
    home: PathBuf,
}

impl CgroupGuard {
    pub fn create() -> Result<Self> {
        let mount = baton_agent::sys::find_cgroup2_mount().context("no cgroup v2 mount found")?;
        let own = baton_e2e::sandbox::current_cgroup().context("reading /proc/self/cgroup")?;
        let home = mount.join(own.trim_start_matches('/'));
        let dir = mount.join(format!("baton-bench-{}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        Ok(Self { dir, home })
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        let _ = std::fs::write(
            self.home.join("cgroup.procs"),
            format!("{}\n", std::process::id()),
        );
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "baton-bench: could not remove cgroup {}",
            self.dir.display()
        );
    }
}

/// A private bpffs mount in a temporary directory; unmounted (dropping every pin) on drop.
pub struct BpffsGuard {
    dir: tempfile::TempDir,
}

impl BpffsGuard {
    pub fn mount() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("baton-bench-bpffs")
            .tempdir()?;
        nix::mount::mount(
            Some("bpf"),
            dir.path(),
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mount -t bpf bpf {}", dir.path().display()))?;
        Ok(Self { dir })
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for BpffsGuard {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("baton-bench: umount {}: {e}", self.dir.path().display());
        }
    }
}

/// A child process killed (SIGTERM, then SIGKILL) and reaped on drop.
pub struct ChildGuard(pub Option<std::process::Child>);

impl ChildGuard {
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.0.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}
