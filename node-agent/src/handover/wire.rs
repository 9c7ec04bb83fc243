//! The handover socket: SOCK_SEQPACKET (message boundaries kept, so a short
//! read is a truncated message, never half of the next), one JSON message
//! per record, file descriptors in SCM_RIGHTS, a deadline on every wait.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    self, accept4, bind, connect, getsockopt, listen, recvmsg, sendmsg, socket, sockopt,
    AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr,
};

use super::msg::{ErrorCode, Msg};

/// Largest message accepted or sent (bytes of JSON).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Most descriptors in one message (the kernel's SCM_MAX_FD is 253).
pub const MAX_FDS: usize = 253;

/// Why a message could not be exchanged.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A socket call failed.
    #[error("{op}: {errno}")]
    Sys {
        /// The call.
        op: &'static str,
        /// Cause.
        errno: Errno,
    },
    /// Nothing arrived before the deadline.
    #[error("timed out after {0:?} waiting for the peer")]
    Timeout(Duration),
    /// The peer closed the connection.
    #[error("peer closed the connection")]
    Closed,
    /// The record was longer than [`MAX_MESSAGE`].
    #[error("message truncated: longer than {MAX_MESSAGE} bytes")]
    Truncated,
    /// Descriptors were dropped by the kernel (control data truncated).
    #[error("file descriptors truncated (MSG_CTRUNC)")]
    FdsTruncated,
    /// Not a message of this protocol.
    #[error("{code}: {detail}")]
    Bad {
        /// Classification sent back to the peer.
        code: ErrorCode,
        /// What was wrong.
        detail: String,
    },
    /// Trying to send more than one message can hold.
    #[error("message too large to send ({bytes} bytes, {fds} fds)")]
    TooLarge {
        /// Encoded size.
        bytes: usize,
        /// Descriptors.
        fds: usize,
    },
    /// Filesystem work around the socket path.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
}

fn sys(op: &'static str) -> impl FnOnce(Errno) -> WireError {
    move |errno| WireError::Sys { op, errno }
}

fn seqpacket() -> Result<OwnedFd, WireError> {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(sys("socket"))
}

/// Waits until `fd` is readable or `deadline` passes.
fn wait_readable(fd: BorrowedFd<'_>, deadline: Instant, total: Duration) -> Result<(), WireError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(WireError::Timeout(total));
        }
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => {
                return Err(WireError::Sys {
                    op: "poll",
                    errno: e,
                })
            }
        }
    }
}

/// Checks what `recvmsg` reported about one record before its bytes are
/// decoded: dropped descriptors, a record longer than [`MAX_MESSAGE`], and
/// the empty record that marks the end of the stream.
pub fn check_record(bytes: usize, fds: usize, trunc: bool, ctrunc: bool) -> Result<(), WireError> {
    if ctrunc {
        return Err(WireError::FdsTruncated);
    }
    if trunc || bytes > MAX_MESSAGE {
        return Err(WireError::Truncated);
    }
    if bytes == 0 && fds == 0 {
        return Err(WireError::Closed);
    }
    Ok(())
}

/// Decodes one received record exactly as [`Conn::recv`] does once
/// `recvmsg` returned (`fds` descriptors came with it, `trunc`/`ctrunc` are
/// its `MSG_TRUNC`/`MSG_CTRUNC` flags); the fuzz target `handover_msg`
/// drives the whole receive path through this without a socket.
pub fn decode_record(
    bytes: &[u8],
    fds: usize,
    trunc: bool,
    ctrunc: bool,
) -> Result<Msg, WireError> {
    check_record(bytes.len(), fds, trunc, ctrunc)?;
    Msg::decode(bytes)
}

/// The listening handover socket (mode 0600).
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
}

impl Listener {
    /// Binds `path`, replacing a stale socket file.
    pub fn bind(path: &Path) -> Result<Self, WireError> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(WireError::Io {
                    what: format!("remove stale {}", path.display()),
                    source,
                })
            }
        }
        let fd = seqpacket()?;
        let addr = UnixAddr::new(path).map_err(sys("socket path"))?;
        // Bound with a tight umask so no other user can connect in the window
        // before the chmod.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = bind(fd.as_raw_fd(), &addr);
        nix::sys::stat::umask(old);
        bound.map_err(sys("bind"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| WireError::Io {
                what: format!("chmod {}", path.display()),
                source,
            },
        )?;
        listen(&fd, Backlog::new(8).map_err(sys("listen"))?).map_err(sys("listen"))?;
        Ok(Self { fd })
    }

    /// Wraps an inherited listening socket (checked by the manifest first).
    ///
    /// A connection's `SO_PEERCRED` names the process that called `listen()`
    /// on the socket, not the one accepting: without a new `listen()` here a
    /// successor would see the agent that first bound the socket (retired
    /// long ago, its pid maybe reused) and judge its liveness by that pid.
    pub fn from_fd(fd: OwnedFd) -> Self {
        if let Err(e) = Backlog::new(8).and_then(|b| listen(&fd, b)) {
            tracing::warn!(error = %e, "listen on the inherited handover socket");
        }
        Self { fd }
    }

    /// The socket.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Gives up the socket (to pass it on).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Accepts one connection, waiting at most `wait`; `None` on timeout.
    pub fn accept(&self, wait: Duration) -> Result<Option<Conn>, WireError> {
        match wait_readable(self.fd(), Instant::now() + wait, wait) {
            Ok(()) => {}
            Err(WireError::Timeout(_)) => return Ok(None),
            Err(e) => return Err(e),
        }
        match accept4(self.fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            // SAFETY: accept4 returned a fresh descriptor we now own.
            Ok(raw) => Ok(Some(Conn::new(unsafe { OwnedFd::from_raw_fd(raw) }))),
            Err(Errno::EAGAIN) | Err(Errno::EINTR) | Err(Errno::ECONNABORTED) => Ok(None),
            Err(e) => Err(WireError::Sys {
                op: "accept",
                errno: e,
            }),
        }
    }
}

/// One handover connection.
#[derive(Debug)]
pub struct Conn {
    fd: OwnedFd,
}

/// Credentials of the peer process (SO_PEERCRED).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Process id.
    pub pid: i32,
    /// User id.
    pub uid: u32,
}

impl Conn {
    fn new(fd: OwnedFd) -> Self {
        Self { fd }
    }

    /// Connects to the handover socket at `path`.
    pub fn connect(path: &Path) -> Result<Self, WireError> {
        let fd = seqpacket()?;
        let addr = UnixAddr::new(path).map_err(sys("socket path"))?;
        connect(fd.as_raw_fd(), &addr).map_err(sys("connect"))?;
        Ok(Self::new(fd))
    }

    /// A connected pair (tests).
    pub fn pair() -> Result<(Self, Self), WireError> {
        let (a, b) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(sys("socketpair"))?;
        Ok((Self::new(a), Self::new(b)))
    }

    /// The socket.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Who is on the other end.
    pub fn peer(&self) -> Result<Peer, WireError> {
        let c = getsockopt(&self.fd, sockopt::PeerCredentials).map_err(sys("SO_PEERCRED"))?;
        Ok(Peer {
            pid: c.pid(),
            uid: c.uid(),
        })
    }

    /// Sends raw bytes with descriptors (tests send garbage through this).
    pub fn send_raw(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), WireError> {
        if bytes.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
            return Err(WireError::TooLarge {
                bytes: bytes.len(),
                fds: fds.len(),
            });
        }
        self.send_unchecked(bytes, fds)
    }

    /// Sends without the size checks (tests of the receiver's limits).
    pub fn send_unchecked(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), WireError> {
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
        let iov = [IoSlice::new(bytes)];
        loop {
            match sendmsg::<UnixAddr>(
                self.fd.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(Errno::EPIPE) | Err(Errno::ECONNRESET) => return Err(WireError::Closed),
                // SO_SNDTIMEO expired: the peer stopped reading.
                Err(Errno::EAGAIN) => return Err(WireError::Timeout(self.send_timeout())),
                Err(e) => {
                    return Err(WireError::Sys {
                        op: "sendmsg",
                        errno: e,
                    })
                }
            }
        }
    }

    fn send_timeout(&self) -> Duration {
        getsockopt(&self.fd, sockopt::SendTimeout)
            .map(|tv| {
                use nix::sys::time::TimeValLike;
                Duration::from_micros(tv.num_microseconds().max(0) as u64)
            })
            .unwrap_or_default()
    }

    /// Sends one message with descriptors.
    pub fn send(&self, msg: &Msg, fds: &[BorrowedFd<'_>]) -> Result<(), WireError> {
        let bytes = serde_json::to_vec(msg).map_err(|e| WireError::Bad {
            code: ErrorCode::Internal,
            detail: e.to_string(),
        })?;
        self.send_raw(&bytes, fds)
    }

    /// Receives one record and its descriptors (received close-on-exec).
    pub fn recv_raw(&self, wait: Duration) -> Result<(Vec<u8>, Vec<OwnedFd>), WireError> {
        wait_readable(self.fd(), Instant::now() + wait, wait)?;
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
        loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let r = recvmsg::<UnixAddr>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
            );
            let m = match r {
                Ok(m) => m,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => {
                    wait_readable(self.fd(), Instant::now() + wait, wait)?;
                    continue;
                }
                Err(Errno::ECONNRESET) => return Err(WireError::Closed),
                Err(e) => {
                    return Err(WireError::Sys {
                        op: "recvmsg",
                        errno: e,
                    })
                }
            };
            // Take ownership of every descriptor first, so any error below
            // closes them instead of leaking them into this process.
            let mut fds = Vec::new();
            if let Ok(cmsgs) = m.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        for r in raw {
                            // SAFETY: the kernel installed these descriptors for us.
                            fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                        }
                    }
                }
            }
            let n = m.bytes;
            check_record(
                n,
                fds.len(),
                m.flags.contains(MsgFlags::MSG_TRUNC),
                m.flags.contains(MsgFlags::MSG_CTRUNC),
            )?;
            buf.truncate(n);
            return Ok((buf, fds));
        }
    }

    /// Receives one message; descriptors are returned for the caller to check.
    pub fn recv(&self, wait: Duration) -> Result<(Msg, Vec<OwnedFd>), WireError> {
        let (bytes, fds) = self.recv_raw(wait)?;
        Ok((Msg::decode(&bytes)?, fds))
    }

    /// Bounds every later send: a peer that stops reading fills the socket
    /// buffer, and a blocking `sendmsg` would then hold the session (and the
    /// incumbent's only session slot) past any deadline.
    pub fn set_send_timeout(&self, wait: Duration) -> Result<(), WireError> {
        let tv = nix::sys::time::TimeVal::new(
            i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
            i64::from(wait.subsec_micros()),
        );
        socket::setsockopt(&self.fd, sockopt::SendTimeout, &tv).map_err(sys("SO_SNDTIMEO"))
    }

    /// Receives a message that must carry no descriptors.
    pub fn recv_plain(&self, wait: Duration) -> Result<Msg, WireError> {
        let (m, fds) = self.recv(wait)?;
        if !fds.is_empty() {
            return Err(WireError::Bad {
                code: ErrorCode::UnexpectedFds,
                detail: format!("{} descriptors on a {} message", fds.len(), m.kind()),
            });
        }
        Ok(m)
    }

    /// Tells the peer what went wrong (best effort: it may be gone).
    pub fn send_error(&self, code: ErrorCode, message: impl Into<String>) {
        let _ = self.send(
            &Msg::Error {
                code,
                message: message.into(),
            },
            &[],
        );
    }
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
