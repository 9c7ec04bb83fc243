//! Hot-upgrade measurements: `baton-agent run` child processes driven through
//! their admin socket ([`AgentProc`]), and a paced connect stream that
//! timestamps every failed or misrouted connect ([`Traffic`]).
//!
//! Used by `baton-bench --only handover`. [`Traffic`] opens sockets from the
//! calling process, so that process must already be inside the test cgroup
//! and a private network namespace ([`crate::sandbox::enter`]); the agents
//! are plain children and inherit both.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use baton_agent::admin::{client, Request};
use serde_json::Value;

use crate::client::{connect, Timeouts};
use crate::report::{ErrorCounts, FailureKind};

/// How often an agent's status is polled while waiting.
const POLL: Duration = Duration::from_millis(2);
/// Lines of an agent's log quoted in errors.
const LOG_TAIL: usize = 30;

/// Errors driving an agent process.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The agent could not be started.
    #[error("spawning {bin}: {source}")]
    Spawn {
        /// The binary.
        bin: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The agent exited while it was expected to run.
    #[error(
        "baton-agent (pid {pid}) exited with {status} while waiting for {what}; log tail:\n{log}"
    )]
    Exited {
        /// Its pid.
        pid: u32,
        /// Its exit status.
        status: ExitStatus,
        /// What we were waiting for.
        what: String,
        /// The end of its log.
        log: String,
    },
    /// A wait ran out of time.
    #[error(
        "baton-agent (pid {pid}): timed out after {after:?} waiting for {what}; log tail:\n{log}"
    )]
    Timeout {
        /// Its pid.
        pid: u32,
        /// The limit.
        after: Duration,
        /// What we were waiting for.
        what: String,
        /// The end of its log.
        log: String,
    },
    /// Other I/O.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// A `baton-agent run` command line.
#[derive(Clone, Debug)]
pub struct AgentCmd {
    bin: PathBuf,
    run_dir: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl AgentCmd {
    /// `bin run --services S --cgroup C --bpffs B --run-dir R --no-metrics`.
    pub fn new(bin: &Path, services: &Path, cgroup: &Path, bpffs: &Path, run_dir: &Path) -> Self {
        let args = vec![
            "run".into(),
            "--services".into(),
            services.into(),
            "--cgroup".into(),
            cgroup.into(),
            "--bpffs".into(),
            bpffs.into(),
            "--run-dir".into(),
            run_dir.into(),
            "--no-metrics".into(),
        ];
        Self {
            bin: bin.to_owned(),
            run_dir: run_dir.to_owned(),
            args,
            env: vec![("RUST_LOG".into(), "info".into())],
        }
    }

    /// Appends an argument.
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Sets an environment variable of the agent.
    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Starts the agent, its stderr going to `log`.
    pub fn spawn(&self, log: &Path) -> Result<AgentProc, UpgradeError> {
        let file = std::fs::File::create(log).map_err(|source| UpgradeError::Io {
            what: format!("create {}", log.display()),
            source,
        })?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().map_err(|source| UpgradeError::Spawn {
            bin: self.bin.display().to_string(),
            source,
        })?;
        Ok(AgentProc {
            pid: child.id(),
            child: Some(child),
            spawned: Instant::now(),
            run_dir: self.run_dir.clone(),
            log: log.to_owned(),
            exit: None,
        })
    }
}

/// A running `baton-agent run`; SIGTERM (then SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct AgentProc {
    child: Option<Child>,
    pid: u32,
    spawned: Instant,
    run_dir: PathBuf,
    log: PathBuf,
    exit: Option<ExitStatus>,
}

/// The agent answering on the admin socket of `run_dir`, if any.
pub fn status(run_dir: &Path) -> Option<Value> {
    client::request(&baton_agent::agent::admin_socket(run_dir), Request::Status).ok()
}

impl AgentProc {
    /// Process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// When it was spawned.
    pub fn spawned(&self) -> Instant {
        self.spawned
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
    }

    /// Its exit status, once it has exited (reaped here).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.exit = Some(st);
                    self.child = None;
                }
            }
        }
        self.exit
    }

    fn exited_err(&mut self, what: &str) -> Option<UpgradeError> {
        let status = self.exited()?;
        Some(UpgradeError::Exited {
            pid: self.pid,
            status,
            what: what.into(),
            log: self.log_tail(),
        })
    }

    fn timeout(&self, after: Duration, what: &str) -> UpgradeError {
        UpgradeError::Timeout {
            pid: self.pid,
            after,
            what: what.into(),
            log: self.log_tail(),
        }
    }

    /// Polls the admin socket until this process answers with a status that
    /// satisfies `ok`; fails when it exits or `timeout` passes.
    pub fn wait_status(
        &mut self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&Value) -> bool,
    ) -> Result<Value, UpgradeError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.exited_err(what) {
                return Err(e);
            }
            if let Some(v) = status(&self.run_dir) {
                if v["pid"].as_u64() == Some(u64::from(self.pid)) && ok(&v) {
                    return Ok(v);
                }
            }
            if Instant::now() >= deadline {
                return Err(self.timeout(timeout, what));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until it has synced once with at least `services` services.
    pub fn wait_synced(&mut self, services: u64, timeout: Duration) -> Result<Value, UpgradeError> {
        self.wait_status(&format!("{services} services programmed"), timeout, |v| {
            v["last_sync"].is_object() && v["services"].as_u64() >= Some(services)
        })
    }

    /// Waits for it to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, UpgradeError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.exited() {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                return Err(self.timeout(timeout, "its exit"));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Sends SIGTERM and waits up to `grace` for the exit, then SIGKILLs.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(st) = self.exited() {
            return Some(st);
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid).ok()?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if let Ok(st) = self.wait_exit(grace) {
            return Some(st);
        }
        let mut child = self.child.take()?;
        let _ = child.kill();
        let st = child.wait().ok();
        self.exit = st;
        st
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(15));
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
            return Err(UpgradeError::Io {
                what: "traffic".into(),
                source: std::io::Error::other("no targets"),
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("upgrade-traffic".into())
            .spawn(move || run(&cfg, &flag))
            .map_err(|source| UpgradeError::Io {
                what: "spawning the traffic thread".into(),
                source,
            })?;
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
