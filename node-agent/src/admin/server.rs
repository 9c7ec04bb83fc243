//! Serves the admin socket from a thread; each connection is handled in turn
//! with a read timeout, so a stuck client cannot block the agent.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baton_api::admin::Response;

use super::{Request, MAX_REQUEST};

/// Answers requests; implemented by the agent.
pub trait Handler: Send + Sync + 'static {
    /// Produces the answer to one request.
    fn handle(&self, req: Request) -> Response;
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
        Response::error(format!("request longer than {MAX_REQUEST} bytes"))
    } else {
        match serde_json::from_str::<Request>(line.trim()) {
            Ok(req) => handler.handle(req),
            Err(e) => Response::error(format!("bad request: {e}")),
        }
    };
    let mut w = &s;
    serde_json::to_writer(&mut w, &resp)?;
    w.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use baton_api::admin::{Dump, ErrorAnswer, Verify, Violation};

    use super::*;
    use crate::admin::client::{self, ClientError};

    /// Answers verify with one violation, and everything else with an error.
    struct Stub;

    impl Handler for Stub {
        fn handle(&self, req: Request) -> Response {
            match req {
                Request::Verify => Response::Verify(Verify {
                    services: 1,
                    violations: vec![Violation::UnusedBackend { backend: 7 }],
                    ..Verify::default()
                }),
                Request::Dump => Response::Dump(Dump::default()),
                Request::Status => Response::error("no status here"),
            }
        }
    }

    #[test]
    fn typed_answers_reach_raw_and_typed_clients_alike() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join(baton_api::admin::SOCKET_FILE);
        let stop = Arc::new(AtomicBool::new(false));
        let server = serve(bind(&sock).expect("bind"), Arc::new(Stub), stop.clone());

        let raw = client::request(&sock, Request::Verify).expect("raw verify");
        assert_eq!(
            raw,
            serde_json::json!({"services": 1, "endpoints": 0, "backends": 0, "frontends": 0,
                "violations": [{"kind": "unused_backend", "backend": 7}]})
        );
        let v = client::verify(&sock).expect("typed verify");
        assert_eq!(v.violations, [Violation::UnusedBackend { backend: 7 }]);
        assert_eq!(client::dump(&sock).expect("typed dump"), Dump::default());
        match client::status(&sock) {
            Err(ClientError::Agent { error, .. }) => assert_eq!(error, "no status here"),
            other => panic!("expected the agent's error: {other:?}"),
        }

        // A request the server cannot read gets an error answer, not silence.
        let mut s = UnixStream::connect(&sock).expect("connect");
        s.write_all(b"{\"cmd\":\"reboot\"}\n").expect("write");
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).expect("read");
        let e: ErrorAnswer = serde_json::from_str(&line).expect("error answer");
        assert!(e.error.starts_with("bad request"), "{}", e.error);

        stop.store(true, Ordering::Relaxed);
        server.join().expect("server thread");
    }
}
