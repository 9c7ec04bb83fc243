//! Prometheus text exposition over a minimal HTTP/1.1 server on a thread.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Renders the current metrics text.
pub trait Render: Send + Sync + 'static {
    /// Prometheus text format, version 0.0.4.
    fn render(&self) -> String;
}

/// Sync statistics the agent accumulates.
#[derive(Clone, Debug, Default)]
pub struct SyncStats {
    /// Syncs run.
    pub syncs: u64,
    /// Sum of sync durations, seconds.
    pub duration_sum: f64,
    /// Last sync duration, seconds.
    pub last_duration: f64,
    /// Services whose transaction failed, summed over syncs.
    pub service_failures: u64,
    /// Map writes undone by rollbacks.
    pub rolled_back: u64,
    /// Map writes kept.
    pub writes: u64,
    /// Source errors (rejected files).
    pub source_errors: u64,
    /// Syncs attempted (also the ones that failed).
    pub attempts: u64,
    /// Syncs that failed, or rolled a service back.
    pub failed: u64,
}

/// Appends one metric family.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

/// Serves `GET /metrics` until `stop` is set.
pub fn serve(
    listener: TcpListener,
    render: Arc<dyn Render>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        if let Err(e) = listener.set_nonblocking(true) {
            tracing::error!(error = %e, "metrics listener");
            return;
        }
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((s, _)) => {
                    if let Err(e) = one(s, render.as_ref()) {
                        tracing::debug!(error = %e, "metrics client");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    })
}

fn one(mut s: TcpStream, render: &dyn Render) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while n < buf.len() {
        let r = s.read(&mut buf[n..])?;
        if r == 0 {
            break;
        }
        n += r;
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let req = String::from_utf8_lossy(&buf[..n]);
    let (status, body) = match req.split_whitespace().nth(1) {
        Some("/metrics") => ("200 OK", render.render()),
        _ => ("404 Not Found", "only /metrics is served\n".to_string()),
    };
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
