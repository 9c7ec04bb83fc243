//! Hot-upgrade measurements: a paced connect stream that timestamps every
//! failed or misrouted connect ([`Traffic`]), and `baton-agent run` child
//! processes ([`AgentProc`], a thin wrapper of [`crate::kit::Agent`]).
//!
//! Used by `baton-bench --only handover`. [`Traffic`] opens sockets from the
//! calling process, so that process must already be inside the test cgroup
//! and a private network namespace ([`crate::kit::sandbox::enter`]); the
//! agents are plain children and inherit both.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::{connect, Timeouts};
use crate::report::{ErrorCounts, FailureKind};

/// Errors driving an agent process (the kit's error).
pub type UpgradeError = crate::kit::Error;

pub use crate::kit::agent::status;

/// A `baton-agent run` command line: [`crate::kit::AgentCmd`] for the bench
/// (SIGTERM with a 15 s grace on drop, status polled every 2 ms).
#[derive(Clone, Debug)]
pub struct AgentCmd(crate::kit::AgentCmd);

impl AgentCmd {
    /// `bin run --services S --cgroup C --bpffs B --run-dir R --no-metrics`.
    pub fn new(bin: &Path, services: &Path, cgroup: &Path, bpffs: &Path, run_dir: &Path) -> Self {
        Self(crate::kit::AgentCmd::new(
            bin, services, cgroup, bpffs, run_dir,
        ))
    }

    /// Appends an argument.
    pub fn arg(self, a: impl Into<OsString>) -> Self {
        Self(self.0.arg(a))
    }

    /// Sets an environment variable of the agent.
    pub fn env(self, k: impl Into<OsString>, v: impl Into<OsString>) -> Self {
        Self(self.0.env(k, v))
    }

    /// Starts the agent, its output going to `log`.
    pub fn spawn(&self, log: &Path) -> Result<AgentProc, UpgradeError> {
        self.0.spawn(log).map(AgentProc)
    }
}

/// A running `baton-agent run` ([`crate::kit::Agent`]); SIGTERM (then
/// SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct AgentProc(crate::kit::Agent);

impl AgentProc {
    /// Process id.
    pub fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// When it was spawned.
    pub fn spawned(&self) -> Instant {
        self.0.started()
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        self.0.log_path()
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        self.0.log_tail()
    }

    /// Its exit status, once it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.0.exited()
    }

    /// Polls the admin socket until this process answers with a status that
    /// satisfies `ok`; fails when it exits or `timeout` passes.
    pub fn wait_status(
        &mut self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&Value) -> bool,
    ) -> Result<Value, UpgradeError> {
        self.0.wait_status(what, timeout, ok)
    }

    /// Waits until it has synced once with at least `services` services.
    pub fn wait_synced(&mut self, services: u64, timeout: Duration) -> Result<Value, UpgradeError> {
        self.0.wait_synced(services, timeout)
    }

    /// Waits for it to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, UpgradeError> {
        self.0.wait_exit(timeout)
    }

    /// Sends SIGTERM and waits up to `grace` for the exit, then SIGKILLs.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.0.terminate(grace)
    }
}

/// A target and the backend identities that may answer it.
#[derive(Clone, Debug)]
pub struct Expected {
    /// VIP:port connected to.
    pub target: SocketAddr,
    /// Identity lines (`addr:port`) of its backends.
    pub identities: BTreeSet<String>,
}

/// What a [`Traffic`] run does.
#[derive(Clone, Debug)]
pub struct TrafficConfig {
    /// Targets, used round-robin.
    pub targets: Vec<Expected>,
    /// One connect every `interval` (a late connect is not made up for).
    pub interval: Duration,
    /// Per-connect limits.
    pub timeouts: Timeouts,
}

/// A connect that did not reach one of its target's backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bad {
    /// It failed.
    Failed(FailureKind),
    /// It reached a backend of another service (the identity it got).
    Misrouted(String),
}

/// One bad connect, timed from the start of the run.
#[derive(Clone, Debug)]
pub struct BadConnect {
    /// When the connect began, since [`TrafficLog::epoch`].
    pub at: Duration,
    /// The target.
    pub target: SocketAddr,
    /// What went wrong.
    pub what: Bad,
}

/// Everything a [`Traffic`] run saw.
#[derive(Clone, Debug)]
pub struct TrafficLog {
    /// When the first connect began.
    pub epoch: Instant,
    /// How long it ran.
    pub elapsed: Duration,
    /// Connect attempts.
    pub attempted: u64,
    /// Connects answered by one of their target's backends.
    pub ok: u64,
    /// Failures by kind.
    pub errors: ErrorCounts,
    /// Connects answered by a backend of another target.
    pub misrouted: u64,
    /// Every failed or misrouted connect, in order.
    pub bad: Vec<BadConnect>,
    /// Identities seen per target.
    pub identities: BTreeMap<SocketAddr, BTreeMap<String, u64>>,
    /// First error message, for diagnosis.
    pub first_error: Option<String>,
}

impl TrafficLog {
    /// Failed connects.
    pub fn failed(&self) -> u64 {
        self.errors.total()
    }

    /// First and last bad connect, relative to `since` (`None`: none was bad).
    /// Offsets before `since` are negative.
    pub fn bad_span(&self, since: Instant) -> Option<(f64, f64)> {
        let rel = |b: &BadConnect| {
            let at = self.epoch + b.at;
            if at >= since {
                (at - since).as_secs_f64()
            } else {
                -(since - at).as_secs_f64()
            }
        };
        Some((rel(self.bad.first()?), rel(self.bad.last()?)))
    }

    /// Failure counts as `kind ×n` pairs, most frequent first.
    pub fn error_kinds(&self) -> String {
        let mut kinds: Vec<(u64, &str)> = [
            (FailureKind::Refused, "refused"),
            (FailureKind::Timeout, "timeout"),
            (FailureKind::Eperm, "eperm"),
            (FailureKind::Unreachable, "unreachable"),
            (FailureKind::Reset, "reset"),
            (FailureKind::Other, "other"),
        ]
        .iter()
        .map(|(k, n)| (self.errors.get(*k), *n))
        .filter(|(c, _)| *c > 0)
        .collect();
        kinds.sort_by_key(|k| std::cmp::Reverse(k.0));
        kinds
            .iter()
            .map(|(c, n)| format!("{n} ×{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A paced connect stream on its own thread, until [`Traffic::stop`].
#[derive(Debug)]
pub struct Traffic {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<TrafficLog>>,
}

impl Traffic {
    /// Starts connecting (in this process's cgroup and network namespace).
    pub fn start(cfg: TrafficConfig) -> Result<Self, UpgradeError> {
        if cfg.targets.is_empty() {
            return Err(crate::kit::Error::check("traffic", "no targets"));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("upgrade-traffic".into())
            .spawn(move || run(&cfg, &flag))
            .map_err(|e| crate::kit::Error::io("spawning the traffic thread", e))?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops and returns what was seen (`None` if the thread panicked).
    pub fn stop(mut self) -> Option<TrafficLog> {
        self.halt()
    }

    fn halt(&mut self) -> Option<TrafficLog> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take()?.join().ok()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.halt();
    }
}

fn run(cfg: &TrafficConfig, stop: &AtomicBool) -> TrafficLog {
    let epoch = Instant::now();
    let mut log = TrafficLog {
        epoch,
        elapsed: Duration::ZERO,
        attempted: 0,
        ok: 0,
        errors: ErrorCounts::default(),
        misrouted: 0,
        bad: Vec::new(),
        identities: BTreeMap::new(),
        first_error: None,
    };
    let mut due = epoch;
    let mut k = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let started = Instant::now();
        due = (due + cfg.interval).max(started);
        let exp = &cfg.targets[k % cfg.targets.len()];
        k += 1;
        log.attempted += 1;
        let at = started - epoch;
        match connect(exp.target, cfg.timeouts) {
            Ok(c) => {
                // Reset-close: no TIME_WAIT pile-up at thousands of connects/s.
                let _ = socket2::SockRef::from(&c.stream).set_linger(Some(Duration::ZERO));
                *log.identities
                    .entry(exp.target)
                    .or_default()
                    .entry(c.identity.clone())
                    .or_insert(0) += 1;
                if exp.identities.contains(&c.identity) {
                    log.ok += 1;
                } else {
                    log.misrouted += 1;
                    log.bad.push(BadConnect {
                        at,
                        target: exp.target,
                        what: Bad::Misrouted(c.identity),
                    });
                }
            }
            Err(e) => {
                log.errors.add(e.kind);
                if log.first_error.is_none() {
                    log.first_error = Some(e.to_string());
                }
                log.bad.push(BadConnect {
                    at,
                    target: exp.target,
                    what: Bad::Failed(e.kind),
                });
            }
        }
    }
    log.elapsed = epoch.elapsed();
    log
}
