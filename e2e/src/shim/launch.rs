//! Runs the `baton-node-shim` binary from tests: a command builder, and a
//! handle that stops the shim (and so its containers) on drop and gathers
//! every log for failure messages.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Environment variable that overrides where `baton-node-shim` is found.
pub const SHIM_BIN_ENV: &str = "BATON_NODE_SHIM_BIN";

/// Locating or starting the shim failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The binary is not where it should be.
    #[error("baton-node-shim not found (looked at {tried:?}); build it with `cargo build -p baton-e2e --bin baton-node-shim` or set {SHIM_BIN_ENV}")]
    NotFound {
        /// Paths tried.
        tried: Vec<PathBuf>,
    },
    /// Spawning failed.
    #[error("starting {}: {source}", bin.display())]
    Spawn {
        /// The binary.
        bin: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Finds `baton-node-shim`: `$BATON_NODE_SHIM_BIN`, else next to (or one level above) the current executable.
pub fn shim_bin() -> Result<PathBuf, LaunchError> {
    if let Some(p) = std::env::var_os(SHIM_BIN_ENV) {
        return Ok(PathBuf::from(p));
    }
    let mut tried = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // Test binaries live in target/<profile>/deps, binaries in target/<profile>.
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join("baton-node-shim");
            if candidate.is_file() {
                return Ok(candidate);
            }
            tried.push(candidate);
        }
    }
    Err(LaunchError::NotFound { tried })
}

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

    /// Starts the shim, its output going to `<root>/shim.log`.
    pub fn spawn(self) -> Result<ShimProcess, LaunchError> {
        let err = |source| LaunchError::Spawn {
            bin: self.bin.clone(),
            source,
        };
        std::fs::create_dir_all(&self.root).map_err(err)?;
        let log = self.root.join("shim.log");
        let out = std::fs::File::create(&log).map_err(err)?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(err)?)
            .stderr(out);
        // SAFETY: prctl is async-signal-safe; a test process that dies
        // without unwinding takes the shim (and, through it, its containers) along.
        unsafe {
            cmd.pre_exec(crate::harness::set_parent_death_signal);
        }
        let child = cmd.spawn().map_err(err)?;
        Ok(ShimProcess {
            child,
            root: self.root,
            log,
        })
    }
}

/// A running shim; stopped (SIGTERM, then SIGKILL after 30 s) on drop.
#[derive(Debug)]
pub struct ShimProcess {
    child: Child,
    root: PathBuf,
    log: PathBuf,
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl ShimProcess {
    /// The shim's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the shim process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The tail of the shim's log and of every container log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = format!("--- {} ---\n{}\n", self.log.display(), tail(&self.log, 60));
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
            let _ = writeln!(out, "--- {} ---\n{}", path.display(), tail(&path, 30));
        }
        out
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; returns how the shim ended.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own, not yet reaped, child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for ShimProcess {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(30));
    }
}
