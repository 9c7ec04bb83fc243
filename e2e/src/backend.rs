//! TCP backend servers: write an identity line, then echo until EOF.
//!
//! Each listener gets one accept thread; every accepted connection is served
//! by a short-lived handler thread with a small stack, which easily sustains
//! thousands of connections per second and any number of long-lived ("held")
//! connections.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};

/// Listen backlog of every backend socket.
pub const BACKLOG: i32 = 4096;
/// Stack size of connection handler threads.
const HANDLER_STACK: usize = 64 * 1024;
/// How often accept threads look at the stop flag.
const POLL_MS: i32 = 100;

/// Errors while starting backends.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Creating, configuring, binding or listening failed.
    #[error("backend {addr}: {op}: {source}")]
    Listen {
        /// The address being bound.
        addr: SocketAddr,
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Spawning the accept thread failed.
    #[error("backend {addr}: spawning accept thread: {source}")]
    Spawn {
        /// The address being served.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The identity line a backend bound to `addr` writes (`"127.0.0.10:8080\n"`, `"[::1]:9001\n"`).
pub fn identity_line(addr: &SocketAddr) -> String {
    format!("{addr}\n")
}

/// A running set of backends; stops accepting when dropped or [`Backends::shutdown`] is called.
pub struct Backends {
    addrs: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Backends {
    /// Binds every address (SO_REUSEADDR, backlog [`BACKLOG`]) and starts serving.
    pub fn start(addrs: &[SocketAddr]) -> Result<Backends, BackendError> {
        let listeners = addrs.iter().map(listen).collect::<Result<Vec<_>, _>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let mut backends = Backends {
            addrs: Vec::with_capacity(listeners.len()),
            stop: stop.clone(),
            accepted: accepted.clone(),
            threads: Vec::with_capacity(listeners.len()),
        };
        for (listener, addr) in listeners {
            let (stop, accepted) = (stop.clone(), accepted.clone());
            let handle = std::thread::Builder::new()
                .name(format!("accept-{addr}"))
                .spawn(move || accept_loop(listener, addr, &stop, &accepted))
                .map_err(|source| BackendError::Spawn { addr, source })?;
            backends.addrs.push(addr);
            backends.threads.push(handle);
        }
        Ok(backends)
    }

    /// The bound addresses (with the real port when 0 was requested).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Connections accepted so far over all listeners.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Stops accepting and closes the listeners; open connections keep echoing until EOF.
    pub fn shutdown(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

fn listen(addr: &SocketAddr) -> Result<(TcpListener, SocketAddr), BackendError> {
    let addr = *addr;
    let err = |op: &'static str| move |source| BackendError::Listen { addr, op, source };
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(err("socket"))?;
    sock.set_reuse_address(true).map_err(err("SO_REUSEADDR"))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true).map_err(err("IPV6_V6ONLY"))?;
    }
    sock.set_cloexec(true).map_err(err("FD_CLOEXEC"))?;
    sock.bind(&addr.into()).map_err(err("bind"))?;
    sock.listen(BACKLOG).map_err(err("listen"))?;
    let listener: TcpListener = sock.into();
    let local = listener.local_addr().map_err(err("getsockname"))?;
    Ok((listener, local))
}

fn accept_loop(listener: TcpListener, addr: SocketAddr, stop: &AtomicBool, accepted: &AtomicU64) {
    let identity = Arc::<str>::from(identity_line(&addr));
    while !stop.load(Ordering::Relaxed) {
        if !readable(&listener, POLL_MS) {
            continue;
        }
        match listener.accept() {
            Ok((stream, _peer)) => {
                accepted.fetch_add(1, Ordering::Relaxed);
                let identity = identity.clone();
                let spawned = std::thread::Builder::new()
                    .stack_size(HANDLER_STACK)
                    .spawn(move || serve(stream, &identity));
                if let Err(e) = spawned {
                    // The stream was dropped with the closure: the client sees a reset.
                    eprintln!("baton-probe: backend {addr}: spawning handler: {e}");
                }
            }
            Err(e) if is_transient(&e) => {}
            Err(e) => {
                eprintln!("baton-probe: backend {addr}: accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

/// Errors after which accept should simply be retried.
fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::Interrupted | ErrorKind::ConnectionAborted
    ) || e.raw_os_error() == Some(libc::EPROTO)
}

/// Waits up to `ms` for the listener to become readable.
fn readable(listener: &TcpListener, ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    n > 0 && pfd.revents & libc::POLLIN != 0
}

/// Writes the identity line, then echoes until EOF or error.
fn serve(mut stream: TcpStream, identity: &str) {
    let _ = stream.set_nodelay(true);
    if stream.write_all(identity.as_bytes()).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
