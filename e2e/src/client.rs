//! TCP client: single probes ([`connect_once`]) and paced multi-threaded load ([`run_load`]).
//!
//! A probe is: `connect()` (with a timeout), read the backend's identity line
//! (with a timeout), close. Its latency is connect()+first line.

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::report::{FailureKind, TargetStats};

/// Longest identity line accepted.
const MAX_IDENTITY: usize = 256;
/// Longest single sleep while pacing, so stop requests are seen promptly.
const MAX_SLEEP: Duration = Duration::from_millis(50);

/// Which step of a probe failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// `connect()`.
    Connect,
    /// Reading the identity line.
    Identity,
    /// Writing or reading an echo on a held connection.
    Echo,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connect",
            Stage::Identity => "read identity",
            Stage::Echo => "echo",
        })
    }
}

/// A failed probe, classified.
#[derive(Debug, thiserror::Error)]
#[error("{target}: {stage}: {source}")]
pub struct ConnectError {
    /// The address connected to.
    pub target: SocketAddr,
    /// Which step failed.
    pub stage: Stage,
    /// Classification for reports.
    pub kind: FailureKind,
    /// The underlying error.
    #[source]
    pub source: std::io::Error,
}

impl ConnectError {
    /// Builds an error, classifying `source`.
    pub fn new(target: SocketAddr, stage: Stage, source: std::io::Error) -> Self {
        let kind = classify(&source);
        Self {
            target,
            stage,
            kind,
            source,
        }
    }
}

/// Maps an I/O error to a [`FailureKind`].
pub fn classify(e: &std::io::Error) -> FailureKind {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => return FailureKind::Refused,
        Some(libc::ETIMEDOUT) => return FailureKind::Timeout,
        Some(libc::EPERM) => return FailureKind::Eperm,
        Some(libc::ENETUNREACH | libc::EHOSTUNREACH) => return FailureKind::Unreachable,
        Some(libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED) => return FailureKind::Reset,
        _ => {}
    }
    match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => FailureKind::Timeout,
        ErrorKind::UnexpectedEof => FailureKind::Reset,
        _ => FailureKind::Other,
    }
}

/// Connect and identity-read timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Limit for `connect()`.
    pub connect: Duration,
    /// Limit for reading the identity line (or an echo).
    pub read: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(2),
            read: Duration::from_secs(2),
        }
    }
}

impl Timeouts {
    /// The same limit for both steps.
    pub fn both(t: Duration) -> Self {
        Self {
            connect: t,
            read: t,
        }
    }
}

/// An open connection that has answered with its identity.
#[derive(Debug)]
pub struct Connected {
    /// The open stream (identity line already consumed).
    pub stream: TcpStream,
    /// The backend identity, without the newline.
    pub identity: String,
    /// connect()+identity-line latency.
    pub latency: Duration,
}

/// Connects to `target`, reads the identity line and closes; returns (identity, latency).
pub fn connect_once(
    target: SocketAddr,
    timeout: Duration,
) -> Result<(String, Duration), ConnectError> {
    let c = connect(target, Timeouts::both(timeout))?;
    Ok((c.identity, c.latency))
}

/// Connects to `target` and reads the identity line, keeping the stream open.
pub fn connect(target: SocketAddr, timeouts: Timeouts) -> Result<Connected, ConnectError> {
    let start = Instant::now();
    let mut stream = TcpStream::connect_timeout(&target, timeouts.connect)
        .map_err(|e| ConnectError::new(target, Stage::Connect, e))?;
    let identity = read_line(&mut stream, start + timeouts.connect + timeouts.read)
        .map_err(|e| ConnectError::new(target, Stage::Identity, e))?;
    let latency = start.elapsed();
    let _ = stream.set_nodelay(true);
    Ok(Connected {
        stream,
        identity,
        latency,
    })
}

/// Reads one `\n`-terminated line (byte by byte is not needed: the server sends
/// nothing after the line until we write), returning it without the newline.
pub(crate) fn read_line(stream: &mut TcpStream, deadline: Instant) -> std::io::Result<String> {
    let mut buf = [0u8; MAX_IDENTITY];
    let mut len = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf[len..]) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "connection closed before a full line",
                ))
            }
            Ok(n) => {
                if let Some(pos) = buf[len..len + n].iter().position(|&b| b == b'\n') {
                    let line = &buf[..len + pos];
                    return Ok(String::from_utf8_lossy(line).into_owned());
                }
                len += n;
                if len == buf.len() {
                    return Err(std::io::Error::new(
                        ErrorKind::InvalidData,
                        "line longer than 256 bytes",
                    ));
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// How much load to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Exactly this many connect attempts (unless stopped).
    Connects(u64),
    /// Attempts until this much time has passed (or stopped).
    Duration(Duration),
}

/// Load configuration.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Targets, used round-robin (attempt k goes to `targets[k % len]`).
    pub targets: Vec<SocketAddr>,
    /// How many attempts / how long.
    pub plan: Plan,
    /// Paced rate in connects/s over all workers; `None` = as fast as possible.
    pub rate: Option<f64>,
    /// Worker threads.
    pub concurrency: usize,
    /// Per-probe timeouts.
    pub timeouts: Timeouts,
}

/// Invalid load configuration.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The configuration cannot be run.
    #[error("invalid load configuration: {0}")]
    Config(&'static str),
    /// A worker thread could not be spawned.
    #[error("spawning worker: {0}")]
    Spawn(std::io::Error),
}

/// Outcome of [`run_load`].
#[derive(Clone, Debug)]
pub struct LoadResult {
    /// Stats per target, in `LoadConfig::targets` order.
    pub stats: Vec<TargetStats>,
    /// Wall time of the load phase.
    pub elapsed: Duration,
    /// True when `stop` ended the run before the plan was complete.
    pub stopped_early: bool,
}

impl LoadConfig {
    /// Checks that the configuration can be run.
    pub fn validate(&self) -> Result<(), LoadError> {
        if self.targets.is_empty() {
            return Err(LoadError::Config("no targets"));
        }
        if self.concurrency == 0 {
            return Err(LoadError::Config("concurrency must be at least 1"));
        }
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0) {
                return Err(LoadError::Config("rate must be a positive number"));
            }
        }
        if self.timeouts.connect.is_zero() || self.timeouts.read.is_zero() {
            return Err(LoadError::Config("timeouts must be positive"));
        }
        Ok(())
    }
}

/// Runs the load plan across `concurrency` threads; setting `stop` ends it early.
pub fn run_load(cfg: &LoadConfig, stop: &AtomicBool) -> Result<LoadResult, LoadError> {
    cfg.validate()?;
    let next = AtomicU64::new(0);
    let abort = AtomicBool::new(false);
    let halted = || stop.load(Ordering::Relaxed) || abort.load(Ordering::Relaxed);
    let interrupted = AtomicBool::new(false);
    let start = Instant::now();
    let end = match cfg.plan {
        Plan::Duration(d) => Some(start + d),
        Plan::Connects(_) => None,
    };
    let worker = || {
        let mut stats = vec![TargetStats::default(); cfg.targets.len()];
        loop {
            if halted() {
                interrupted.store(true, Ordering::Relaxed);
                break;
            }
            let k = next.fetch_add(1, Ordering::Relaxed);
            if let Plan::Connects(n) = cfg.plan {
                if k >= n {
                    break;
                }
            }
            if let Some(rate) = cfg.rate {
                let due = start + Duration::from_secs_f64(k as f64 / rate);
                if end.is_some_and(|e| due >= e) {
                    break;
                }
                if !sleep_until(due, &halted) {
                    interrupted.store(true, Ordering::Relaxed);
                    break;
                }
            }
            if end.is_some_and(|e| Instant::now() >= e) {
                break;
            }
            let idx = (k % cfg.targets.len() as u64) as usize;
            match connect(cfg.targets[idx], cfg.timeouts) {
                Ok(c) => {
                    let ns = u64::try_from(c.latency.as_nanos()).unwrap_or(u64::MAX);
                    stats[idx].record_ok(&c.identity, ns);
                }
                Err(e) => stats[idx].record_err(e.kind, || e.to_string()),
            }
        }
        stats
    };
    let per_worker = std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(cfg.concurrency);
        for i in 0..cfg.concurrency {
            let h = std::thread::Builder::new()
                .name(format!("probe-{i}"))
                .spawn_scoped(s, worker)
                .map_err(LoadError::Spawn);
            match h {
                Ok(h) => handles.push(h),
                Err(e) => {
                    // Stop the workers already running, then report.
                    abort.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        Ok(handles
            .into_iter()
            .filter_map(|h| h.join().ok())
            .collect::<Vec<_>>())
    })?;
    let elapsed = start.elapsed();
    let mut stats = vec![TargetStats::default(); cfg.targets.len()];
    for w in &per_worker {
        for (acc, s) in stats.iter_mut().zip(w) {
            acc.merge(s);
        }
    }
    Ok(LoadResult {
        stats,
        elapsed,
        stopped_early: interrupted.load(Ordering::Relaxed),
    })
}

/// Sleeps until `due` in short slices; returns false if `halted()` became true meanwhile.
fn sleep_until(due: Instant, halted: &impl Fn() -> bool) -> bool {
    loop {
        let now = Instant::now();
        if now >= due {
            return true;
        }
        if halted() {
            return false;
        }
        std::thread::sleep((due - now).min(MAX_SLEEP));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_errnos() {
        let e = |n| std::io::Error::from_raw_os_error(n);
        assert_eq!(classify(&e(libc::ECONNREFUSED)), FailureKind::Refused);
        assert_eq!(classify(&e(libc::EPERM)), FailureKind::Eperm);
        assert_eq!(classify(&e(libc::ENETUNREACH)), FailureKind::Unreachable);
        assert_eq!(classify(&e(libc::EHOSTUNREACH)), FailureKind::Unreachable);
        assert_eq!(classify(&e(libc::ETIMEDOUT)), FailureKind::Timeout);
        assert_eq!(classify(&e(libc::EAGAIN)), FailureKind::Timeout);
        assert_eq!(classify(&e(libc::ECONNRESET)), FailureKind::Reset);
        assert_eq!(classify(&e(libc::EINVAL)), FailureKind::Other);
        assert_eq!(
            classify(&std::io::Error::from(ErrorKind::TimedOut)),
            FailureKind::Timeout
        );
        assert_eq!(
            classify(&std::io::Error::from(ErrorKind::UnexpectedEof)),
            FailureKind::Reset
        );
    }

    #[test]
    fn validate_rejects_bad_config() {
        let ok = LoadConfig {
            targets: vec!["127.0.0.1:1".parse().expect("addr")],
            plan: Plan::Connects(1),
            rate: Some(10.0),
            concurrency: 1,
            timeouts: Timeouts::default(),
        };
        assert!(ok.validate().is_ok());
        let mut bad = ok.clone();
        bad.targets.clear();
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.concurrency = 0;
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.rate = Some(0.0);
        assert!(bad.validate().is_err());
        let mut bad = ok;
        bad.rate = Some(f64::NAN);
        assert!(bad.validate().is_err());
    }
}
