//! Former home of the test sandbox, now [`crate::kit::Sandbox`]; this thin
//! shape of it is kept for tests not migrated yet (it panics on failure).

use std::path::{Path, PathBuf};

use baton_agent::datapath::DatapathConfig;

use crate::kit::Sandbox;

/// A cgroup + bpffs sandbox for one test ([`Sandbox`] with public paths).
pub struct TestEnv {
    /// The test's own cgroup v2 directory.
    pub cgroup: PathBuf,
    /// bpffs mount for pins.
    pub pin_dir: PathBuf,
    /// Scratch directory.
    pub dir: Scratch,
    sandbox: Sandbox,
}

/// The scratch directory of a [`TestEnv`].
pub struct Scratch(PathBuf);

impl Scratch {
    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl TestEnv {
    /// Creates the sandbox; panics when it cannot.
    pub fn new(name: &str) -> Self {
        let sandbox = Sandbox::new(name).unwrap_or_else(|e| panic!("{e}"));
        Self {
            cgroup: sandbox.cgroup().to_owned(),
            pin_dir: sandbox.pin_dir().to_owned(),
            dir: Scratch(sandbox.dir().to_owned()),
            sandbox,
        }
    }

    /// Datapath config for this sandbox.
    pub fn config(&self) -> DatapathConfig {
        self.sandbox.config()
    }

    /// Path inside the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.sandbox.path(name)
    }
}
