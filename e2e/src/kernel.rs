//! Test environment on the real kernel: a child cgroup of its own, a private
//! bpffs mount for pins, everything removed on drop (also when a test fails).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use baton_agent::datapath::{remove_pins, DatapathConfig};
use baton_agent::sys;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A cgroup + bpffs sandbox for one test.
pub struct TestEnv {
    /// The test's own cgroup v2 directory.
    pub cgroup: PathBuf,
    /// bpffs mount for pins.
    pub pin_dir: PathBuf,
    /// Scratch directory.
    pub dir: tempfile::TempDir,
}

/// cgroup v2 root: BATON_CGROUP_ROOT or the host's cgroup2 mount.
pub fn cgroup_root() -> PathBuf {
    std::env::var_os("BATON_CGROUP_ROOT")
        .map(PathBuf::from)
        .or_else(sys::find_cgroup2_mount)
        .expect("no cgroup v2 mount found (set BATON_CGROUP_ROOT)")
}

impl TestEnv {
    /// Creates the sandbox.
    pub fn new(name: &str) -> Self {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let cgroup = cgroup_root().join(format!("baton-test-{name}-{}-{n}", std::process::id()));
        std::fs::create_dir(&cgroup).expect("create test cgroup");
        let dir = tempfile::tempdir().expect("tempdir");
        let pin_dir = dir.path().join("bpf");
        std::fs::create_dir(&pin_dir).expect("mkdir pin dir");
        nix::mount::mount(
            Some("bpf"),
            &pin_dir,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("mount bpffs");
        Self {
            cgroup,
            pin_dir,
            dir,
        }
    }

    /// Datapath config for this sandbox.
    pub fn config(&self) -> DatapathConfig {
        DatapathConfig {
            pin_dir: self.pin_dir.clone(),
            cgroup: self.cgroup.clone(),
            mount_bpffs: false,
            max_entries: BTreeMap::new(),
        }
    }

    /// Path inside the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn kill_members(cgroup: &Path) {
    if let Ok(procs) = std::fs::read_to_string(cgroup.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let _ = remove_pins(&self.pin_dir);
        let _ = nix::mount::umount2(&self.pin_dir, nix::mount::MntFlags::MNT_DETACH);
        for _ in 0..50 {
            kill_members(&self.cgroup);
            if std::fs::remove_dir(&self.cgroup).is_ok() || !self.cgroup.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        eprintln!(
            "warning: could not remove test cgroup {}",
            self.cgroup.display()
        );
    }
}
