//! The `baton-probe run` / `serve` flows as library functions.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::backend::{BackendError, Backends};
use crate::client::{run_load, LoadConfig, LoadError, Plan};
use crate::hold::Hold;
use crate::kit::sandbox::{self, SandboxError};
use crate::report::{self, PlanReport, Report, SCHEMA};

/// How often the stop file is looked for.
const STOP_POLL: Duration = Duration::from_millis(20);

/// Setup errors of a probe run (traffic failures are reported, not errors).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Entering the sandbox failed.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// Starting a backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The load could not be run.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Writing the ready file failed.
    #[error("writing ready file {path}: {source}")]
    ReadyFile {
        /// The ready file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Waiting for a signal failed.
    #[error("waiting for a signal: {0}")]
    Signal(nix::Error),
}

/// Where the probe runs.
#[derive(Clone, Debug, Default)]
pub struct Placement {
    /// cgroup v2 directory to join (created by the caller).
    pub cgroup: Option<PathBuf>,
    /// Enter a private network namespace (strongly recommended for `run`).
    pub netns: bool,
    /// In the private netns, make the backends' non-loopback IPv4 addresses
    /// local first ([`sandbox::add_backend_addresses`]), so backends can stand
    /// for pod IPs.
    pub local_backends: bool,
}

impl Placement {
    /// Joins the cgroup and/or netns; must be called before any thread is spawned.
    pub fn enter(&self) -> Result<(), SandboxError> {
        match (self.netns, &self.cgroup) {
            (true, cg) => sandbox::enter(cg.as_deref()),
            (false, Some(cg)) => sandbox::join_cgroup(cg),
            (false, None) => Ok(()),
        }
    }

    /// [`Placement::enter`], then, with `local_backends` in the private
    /// netns, makes the backends' addresses local.
    pub fn enter_for(&self, backends: &[SocketAddr]) -> Result<(), SandboxError> {
        self.enter()?;
        if self.netns && self.local_backends {
            sandbox::add_backend_addresses(backends)?;
        }
        Ok(())
    }
}

/// Everything `baton-probe run` does.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// cgroup / netns.
    pub placement: Placement,
    /// Backend listen addresses.
    pub backends: Vec<SocketAddr>,
    /// Load to generate.
    pub load: LoadConfig,
    /// Long-lived connections to open before the load and check after it.
    pub hold: u64,
    /// Written (atomically) once backends listen and held connections are open.
    pub ready_file: Option<PathBuf>,
    /// The run ends early when this file appears.
    pub stop_file: Option<PathBuf>,
}

/// Content of the ready file.
#[derive(Debug, Serialize)]
struct Ready<'a> {
    pid: u32,
    backends: Vec<String>,
    held: u64,
    cgroup: Option<&'a Path>,
    netns: bool,
}

/// Enters the sandbox, starts backends, holds connections, runs the load, returns the report.
pub fn run(opts: &RunOptions) -> Result<Report, ProbeError> {
    opts.load.validate()?;
    opts.placement.enter_for(&opts.backends)?;
    let backends = Backends::start(&opts.backends)?;
    let hold =
        (opts.hold > 0).then(|| Hold::open(&opts.load.targets, opts.hold, opts.load.timeouts));
    if let Some(path) = &opts.ready_file {
        let ready = Ready {
            pid: std::process::id(),
            backends: backends.addrs().iter().map(ToString::to_string).collect(),
            held: hold.as_ref().map_or(0, |h| h.conns.len() as u64),
            cgroup: opts.placement.cgroup.as_deref(),
            netns: opts.placement.netns,
        };
        write_atomic(path, &ready).map_err(|source| ProbeError::ReadyFile {
            path: path.clone(),
            source,
        })?;
    }

    let stop = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let load = std::thread::scope(|s| {
        if let Some(path) = &opts.stop_file {
            let (stop, done) = (&stop, &done);
            s.spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    if path.exists() {
                        stop.store(true, Ordering::Relaxed);
                        return;
                    }
                    std::thread::sleep(STOP_POLL);
                }
            });
        }
        let r = run_load(&opts.load, &stop);
        done.store(true, Ordering::Relaxed);
        r
    })?;

    let hold = hold.map(|h| h.check(opts.load.timeouts.read));
    let totals = report::totals(&load.stats).to_report("*".into());
    let secs = load.elapsed.as_secs_f64();
    let report = Report {
        schema: SCHEMA.into(),
        netns: opts.placement.netns,
        cgroup: opts
            .placement
            .cgroup
            .as_ref()
            .map(|p| p.display().to_string()),
        backends: backends.addrs().iter().map(ToString::to_string).collect(),
        plan: match opts.load.plan {
            Plan::Connects(n) => PlanReport::Connects { connects: n },
            Plan::Duration(d) => PlanReport::Duration {
                duration_ms: u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            },
        },
        rate: opts.load.rate,
        concurrency: opts.load.concurrency,
        elapsed_ms: u64::try_from(load.elapsed.as_millis()).unwrap_or(u64::MAX),
        achieved_rate: if secs > 0.0 {
            totals.attempted as f64 / secs
        } else {
            0.0
        },
        stopped_early: load.stopped_early,
        totals,
        targets: opts
            .load
            .targets
            .iter()
            .zip(&load.stats)
            .map(|(t, s)| s.to_report(t.to_string()))
            .collect(),
        hold,
    };
    backends.shutdown();
    Ok(report)
}

/// Backends only, until SIGTERM/SIGINT/SIGHUP.
pub fn serve(
    placement: &Placement,
    addrs: &[SocketAddr],
    ready_file: Option<&Path>,
) -> Result<(), ProbeError> {
    use nix::sys::signal::{SigSet, Signal};
    placement.enter_for(addrs)?;
    // Block before spawning threads so every thread inherits the mask and sigwait gets the signal.
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set.thread_block().map_err(ProbeError::Signal)?;
    let backends = Backends::start(addrs)?;
    if let Some(path) = ready_file {
        let ready = Ready {
            pid: std::process::id(),
            backends: backends.addrs().iter().map(ToString::to_string).collect(),
            held: 0,
            cgroup: placement.cgroup.as_deref(),
            netns: placement.netns,
        };
        write_atomic(path, &ready).map_err(|source| ProbeError::ReadyFile {
            path: path.to_owned(),
            source,
        })?;
    }
    let sig = set.wait().map_err(ProbeError::Signal)?;
    eprintln!(
        "baton-probe: {sig}, stopping ({} connections served)",
        backends.accepted()
    );
    backends.shutdown();
    Ok(())
}

/// Writes JSON to `path` via a temporary file and rename, so readers never see a partial file.
fn write_atomic(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let json = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}
