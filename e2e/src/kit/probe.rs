//! Driving `baton-probe` from a test: a command line builder ([`ProbeRun`]),
//! a one-shot run ([`ProbeRun::run`]) and a long-running probe stopped on
//! demand ([`ProbeProcess`]).
//!
//! Tests never call [`crate::kit::sandbox::enter`] in their own
//! (multi-threaded) process: the probe joins the test cgroup and a private
//! network namespace itself.
//!
//! ```no_run
//! use baton_e2e::kit::probe::ProbeRun;
//! let report = ProbeRun::new()
//!     .backend("127.0.0.10:8080".parse().unwrap())
//!     .target("10.96.0.10:80".parse().unwrap())
//!     .connects(1000)
//!     .cgroup("/sys/fs/cgroup/unified/baton-test")
//!     .run()
//!     .unwrap();
//! assert_eq!(report.totals.failed, 0);
//! ```

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::bins::probe_bin;
use super::error::{Error, Result};
use super::process::{checked_output, file_tail, Process, Spawn, LOG_TAIL};
use super::wait::POLL;
use crate::report::Report;

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

    /// `--local-backends`: non-loopback IPv4 backend addresses (pod IPs) are
    /// added to `lo` inside the probe's netns.
    pub fn local_backends(mut self) -> Self {
        self.args.push("--local-backends".into());
        self
    }

    /// `--backend ADDR`.
    pub fn backend(self, addr: SocketAddr) -> Self {
        self.arg("--backend", addr.to_string())
    }

    /// `--backend ADDR` for each of `addrs`.
    pub fn backends(self, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        addrs.into_iter().fold(self, Self::backend)
    }

    /// `--target ADDR`.
    pub fn target(self, addr: SocketAddr) -> Self {
        self.arg("--target", addr.to_string())
    }

    /// `--target ADDR` for each of `addrs`.
    pub fn targets(self, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        addrs.into_iter().fold(self, Self::target)
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

    /// Runs the probe to the end of its run and returns its report; an error
    /// (with its stderr) unless it exits 0 with one.
    pub fn run(&self) -> Result<Report> {
        let out = checked_output(self.command(probe_bin()?))?;
        parse_report(&out.stdout).map_err(|source| Error::Json {
            what: format!(
                "baton-probe report: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            source,
        })
    }
}

/// Parses the JSON report printed on stdout.
pub fn parse_report(stdout: &[u8]) -> Result<Report, serde_json::Error> {
    serde_json::from_slice(stdout)
}

/// A running `baton-probe run`: its report (stdout) and stderr in files,
/// ready and stop files beside them; killed on drop.
#[derive(Debug)]
pub struct ProbeProcess {
    process: Process,
    out: PathBuf,
    stop: PathBuf,
}

impl ProbeProcess {
    /// Spawns `run` with `dir/<name>.{json,err,ready,stop}` (a stale ready or
    /// stop file is removed first) and waits up to `ready_within` for it to
    /// be ready (its backends listening, its held connections open).
    pub fn start(run: ProbeRun, dir: &Path, name: &str, ready_within: Duration) -> Result<Self> {
        let file = |ext: &str| dir.join(format!("{name}.{ext}"));
        for ext in ["ready", "stop"] {
            let _ = std::fs::remove_file(file(ext));
        }
        let cmd = run
            .ready_file(file("ready"))
            .stop_file(file("stop"))
            .command(probe_bin()?);
        let process = Spawn::new(format!("baton-probe {name}"), cmd, file("err"))
            .stdout_to(file("json"))
            .start()?;
        let ready = file("ready");
        process.wait_until(
            "baton-probe to get ready",
            ready_within,
            POLL,
            || ready.exists().then_some(()),
            String::new,
        )?;
        Ok(ProbeProcess {
            process,
            out: file("json"),
            stop: file("stop"),
        })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Asks the probe to end its run (its stop file), without waiting.
    pub fn request_stop(&self) -> Result<()> {
        std::fs::write(&self.stop, b"")
            .map_err(|e| Error::io(format!("writing {}", self.stop.display()), e))
    }

    /// Stops the probe, waits up to `timeout` for it to exit, returns its report.
    pub fn report(self, timeout: Duration) -> Result<Report> {
        self.request_stop()?;
        let status = self.process.wait_exit(timeout)?;
        let out = std::fs::read(&self.out).unwrap_or_default();
        parse_report(&out).map_err(|source| Error::Json {
            what: format!(
                "{} ({status}): bad report: {}\n{}",
                self.process.name(),
                String::from_utf8_lossy(&out),
                file_tail(self.process.log_path(), LOG_TAIL)
            ),
            source,
        })
    }
}
