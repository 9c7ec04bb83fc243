//! The upgrade traffic of 4c: a paced connect stream from this process (already inside the bench
//! cgroup and its private network namespace) that timestamps every failed or misrouted connect.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use baton_e2e::client::{connect, Timeouts};
use baton_e2e::report::{ErrorCounts, FailureKind};

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

/// Everything a [`Traffic`] run saw.
#[derive(Clone, Debug)]
pub struct TrafficLog {
    /// When the first connect began.
    pub epoch: Instant,
    /// Connect attempts.
    pub attempted: u64,
    /// Connects answered by one of their target's backends.
    pub ok: u64,
    /// Failures by kind.
    pub errors: ErrorCounts,
    /// Connects answered by a backend of another target.
    pub misrouted: u64,
    /// When each failed or misrouted connect began, since `epoch`, in order.
    pub bad: Vec<Duration>,
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
        let rel = |at: &Duration| {
            let at = self.epoch + *at;
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
pub struct Traffic {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<TrafficLog>>,
}

impl Traffic {
    /// Starts connecting (in this process's cgroup and network namespace).
    pub fn start(cfg: TrafficConfig) -> Result<Self> {
        if cfg.targets.is_empty() {
            bail!("upgrade traffic: no targets");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("upgrade-traffic".into())
            .spawn(move || run(&cfg, &flag))
            .context("spawning the traffic thread")?;
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
        attempted: 0,
        ok: 0,
        errors: ErrorCounts::default(),
        misrouted: 0,
        bad: Vec::new(),
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
                if exp.identities.contains(&c.identity) {
                    log.ok += 1;
                } else {
                    log.misrouted += 1;
                    log.bad.push(at);
                }
            }
            Err(e) => {
                log.errors.add(e.kind);
                if log.first_error.is_none() {
                    log.first_error = Some(e.to_string());
                }
                log.bad.push(at);
            }
        }
    }
    log
}
