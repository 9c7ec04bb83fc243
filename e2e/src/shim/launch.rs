//! Runs the `baton-node-shim` binary from tests: a command builder, and a
//! handle that stops the shim (and so its containers) on drop and gathers
//! every log for failure messages.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

pub use crate::kit::bins::{shim_bin, SHIM_BIN_ENV};
use crate::kit::process::{file_tail, Process, Spawn};
use crate::kit::{Error, Result};

/// How long a dropped shim gets to stop its containers.
const DROP_GRACE: Duration = Duration::from_secs(30);

/// A `baton-node-shim run` command line.
#[derive(Clone, Debug)]
pub struct ShimLaunch {
    bin: PathBuf,
    root: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl ShimLaunch {
    /// `bin run --kubeconfig K --root R`.
    pub fn new(bin: &Path, kubeconfig: &Path, root: &Path) -> Self {
        Self {
            bin: bin.to_owned(),
            root: root.to_owned(),
            args: vec![
                "run".into(),
                "--kubeconfig".into(),
                kubeconfig.into(),
                "--root".into(),
                root.into(),
            ],
            env: Vec::new(),
        }
    }

    /// Adds `--flag value`.
    pub fn arg(mut self, flag: &str, value: impl Into<OsString>) -> Self {
        self.args.push(flag.into());
        self.args.push(value.into());
        self
    }

    /// `--node NAME[=IP][,LABEL=VALUE...]`.
    pub fn node(self, spec: &str) -> Self {
        self.arg("--node", spec)
    }

    /// `--image IMAGE=COMMAND` (`COMMAND` = `idle` or program and args).
    pub fn image(self, image: &str, command: &str) -> Self {
        self.arg("--image", format!("{image}={command}"))
    }

    /// `--env NAME=TEMPLATE`.
    pub fn env(self, name: &str, template: &str) -> Self {
        self.arg("--env", format!("{name}={template}"))
    }

    /// Back-off delays (the kubelet's 10 s / 300 s are too slow for tests).
    pub fn backoff(self, initial: Duration, max: Duration) -> Self {
        self.arg("--backoff-initial-ms", initial.as_millis().to_string())
            .arg("--backoff-max-ms", max.as_millis().to_string())
    }

    /// Sets a variable of the shim process itself (e.g. `RUST_LOG`).
    pub fn process_env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Starts the shim, its output going to `<root>/shim.log`; on drop it
    /// gets SIGTERM and 30 s to stop its containers, then SIGKILL.
    pub fn spawn(self) -> Result<ShimProcess> {
        std::fs::create_dir_all(&self.root)
            .map_err(|e| Error::io(format!("creating {}", self.root.display()), e))?;
        let log = self.root.join("shim.log");
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        // Dying with the spawning thread takes the shim (and, through it,
        // its containers) along when a test dies without unwinding.
        let process = Spawn::new("baton-node-shim", cmd, &log)
            .drop_grace(DROP_GRACE)
            .start()?;
        Ok(ShimProcess {
            process,
            root: self.root,
        })
    }
}

/// A running shim; stopped (SIGTERM, then SIGKILL after 30 s) on drop.
#[derive(Debug)]
pub struct ShimProcess {
    process: Process,
    root: PathBuf,
}

impl ShimProcess {
    /// The shim's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the shim process still runs.
    pub fn running(&self) -> bool {
        self.process.alive()
    }

    /// The tail of the shim's log and of every container log, for failure messages.
    pub fn logs(&self) -> String {
        let log = self.process.log_path();
        let mut out = format!("--- {} ---\n{}\n", log.display(), file_tail(log, 60));
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|node| {
                std::fs::read_dir(node.path().join("logs"))
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .map(|e| e.path())
            .collect();
        logs.sort();
        for path in logs {
            let _ = writeln!(out, "--- {} ---\n{}", path.display(), file_tail(&path, 30));
        }
        out
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; returns how the shim ended.
    pub fn stop(&self, grace: Duration) -> Option<ExitStatus> {
        self.process.stop(grace)
    }
}
