//! Serves the admin socket from a thread; each connection is handled in turn
//! with a read timeout, so a stuck client cannot block the agent.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{Request, MAX_REQUEST};

/// Answers requests; implemented by the agent.
pub trait Handler: Send + Sync + 'static {
    /// Produces the JSON response to one request.
    fn handle(&self, req: Request) -> serde_json::Value;
}

/// Binds the socket at `path` (mode 0600, replacing a stale one).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serves until `stop` is set.
pub fn serve(
    listener: UnixListener,
    handler: Arc<dyn Handler>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        if let Err(e) = listener.set_nonblocking(true) {
            tracing::error!(error = %e, "admin socket");
            return;
        }
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((s, _)) => {
                    if let Err(e) = one(s, handler.as_ref()) {
                        tracing::debug!(error = %e, "admin client");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    })
}

fn one(s: UnixStream, handler: &dyn Handler) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new((&s).take(MAX_REQUEST as u64 + 1)).read_line(&mut line)?;
    let resp = if line.len() > MAX_REQUEST {
        json!({"error": format!("request longer than {MAX_REQUEST} bytes")})
    } else {
        match serde_json::from_str::<Request>(line.trim()) {
            Ok(req) => handler.handle(req),
            Err(e) => json!({"error": format!("bad request: {e}")}),
        }
    };
    let mut w = &s;
    serde_json::to_writer(&mut w, &resp)?;
    w.write_all(b"\n")
}
