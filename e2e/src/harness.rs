//! Helpers for Rust tests and tools that run `baton-probe` as a child process.
//!
//! Tests must not call [`crate::sandbox::enter`] in their own (multi-threaded)
//! process; they build a command with [`ProbeRun`], run it, and parse stdout
//! with [`parse_report`].
//!
//! ```no_run
//! use baton_e2e::harness::{probe_bin, ProbeRun, parse_report};
//! let out = ProbeRun::new()
//!     .backend("127.0.0.10:8080".parse().unwrap())
//!     .target("10.96.0.10:80".parse().unwrap())
//!     .connects(1000)
//!     .cgroup("/sys/fs/cgroup/unified/baton-test")
//!     .command(probe_bin().unwrap())
//!     .output()
//!     .unwrap();
//! let report = parse_report(&out.stdout).unwrap();
//! assert_eq!(report.totals.failed, 0);
//! ```

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::report::Report;

/// Environment variable that overrides where `baton-probe` is found.
pub const PROBE_BIN_ENV: &str = "BATON_PROBE_BIN";

/// Locating the binary failed.
#[derive(Debug, thiserror::Error)]
#[error("baton-probe not found (looked at {tried:?}); build it with `cargo build -p baton-e2e --bin baton-probe` or set {PROBE_BIN_ENV}")]
pub struct NotFound {
    /// Paths that were tried.
    pub tried: Vec<PathBuf>,
}

/// Finds `baton-probe`: `$BATON_PROBE_BIN`, else next to (or one level above) the current executable.
pub fn probe_bin() -> Result<PathBuf, NotFound> {
    if let Some(p) = std::env::var_os(PROBE_BIN_ENV) {
        return Ok(PathBuf::from(p));
    }
    let mut tried = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // Test binaries live in target/<profile>/deps, binaries in target/<profile>.
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join("baton-probe");
            if candidate.is_file() {
                return Ok(candidate);
            }
            tried.push(candidate);
        }
    }
    Err(NotFound { tried })
}

/// Builder for a `baton-probe run` command line.
#[derive(Clone, Debug, Default)]
pub struct ProbeRun {
    args: Vec<OsString>,
}

impl ProbeRun {
    /// Starts a `run` command line.
    pub fn new() -> Self {
        Self {
            args: vec!["run".into()],
        }
    }

    fn arg(mut self, flag: &str, value: impl Into<OsString>) -> Self {
        self.args.push(flag.into());
        self.args.push(value.into());
        self
    }

    /// `--cgroup DIR`.
    pub fn cgroup(self, dir: impl AsRef<Path>) -> Self {
        self.arg("--cgroup", dir.as_ref().as_os_str())
    }

    /// `--no-netns` (traffic is no longer confined; avoid).
    pub fn no_netns(mut self) -> Self {
        self.args.push("--no-netns".into());
        self
    }

    /// `--backend ADDR`.
    pub fn backend(self, addr: SocketAddr) -> Self {
        self.arg("--backend", addr.to_string())
    }

    /// `--target ADDR`.
    pub fn target(self, addr: SocketAddr) -> Self {
        self.arg("--target", addr.to_string())
    }

    /// `--connects N`.
    pub fn connects(self, n: u64) -> Self {
        self.arg("--connects", n.to_string())
    }

    /// `--duration-ms MS`.
    pub fn duration(self, d: Duration) -> Self {
        self.arg("--duration-ms", d.as_millis().to_string())
    }

    /// `--rate R`.
    pub fn rate(self, r: f64) -> Self {
        self.arg("--rate", r.to_string())
    }

    /// `--concurrency C`.
    pub fn concurrency(self, c: usize) -> Self {
        self.arg("--concurrency", c.to_string())
    }

    /// `--hold N`.
    pub fn hold(self, n: u64) -> Self {
        self.arg("--hold", n.to_string())
    }

    /// `--ready-file PATH`.
    pub fn ready_file(self, p: impl AsRef<Path>) -> Self {
        self.arg("--ready-file", p.as_ref().as_os_str())
    }

    /// `--stop-file PATH`.
    pub fn stop_file(self, p: impl AsRef<Path>) -> Self {
        self.arg("--stop-file", p.as_ref().as_os_str())
    }

    /// The arguments (after the program name).
    pub fn args(&self) -> &[OsString] {
        &self.args
    }

    /// A [`Command`] running `bin` with these arguments.
    pub fn command(&self, bin: impl AsRef<Path>) -> Command {
        let mut c = Command::new(bin.as_ref());
        c.args(&self.args);
        c
    }
}

/// Parses the JSON report printed on stdout.
pub fn parse_report(stdout: &[u8]) -> Result<Report, serde_json::Error> {
    serde_json::from_slice(stdout)
}

/// Polls until `path` exists; false on timeout.
pub fn wait_for_file(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    path.exists()
}
