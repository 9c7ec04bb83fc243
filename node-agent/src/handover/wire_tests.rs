use std::io::{Read, Seek, Write};
use std::os::fd::AsFd;
use std::time::Duration;

use super::*;

const WAIT: Duration = Duration::from_secs(2);

#[test]
fn messages_and_descriptors_cross_intact() {
    let (a, b) = Conn::pair().expect("socketpair");
    let mut f = tempfile::tempfile().expect("tempfile");
    f.write_all(b"passed").expect("write");
    a.send(&Msg::Prepare, &[f.as_fd()]).expect("send");
    let (m, fds) = b.recv(WAIT).expect("recv");
    assert_eq!(m, Msg::Prepare);
    assert_eq!(fds.len(), 1);
    // The received descriptor is the same open file, close-on-exec.
    let mut g = std::fs::File::from(fds.into_iter().next().expect("one fd"));
    let flags =
        nix::fcntl::fcntl(g.as_fd().as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).expect("fcntl");
    assert!(flags & libc::FD_CLOEXEC != 0);
    g.rewind().expect("seek");
    let mut s = String::new();
    g.read_to_string(&mut s).expect("read");
    assert_eq!(s, "passed");
}

#[test]
fn oversized_messages_are_refused_on_both_ends() {
    let (a, b) = Conn::pair().expect("socketpair");
    let big = vec![b'x'; MAX_MESSAGE + 1];
    assert!(matches!(
        a.send_raw(&big, &[]),
        Err(WireError::TooLarge { .. })
    ));
    a.send_unchecked(&big, &[]).expect("unchecked send");
    assert!(matches!(b.recv(WAIT), Err(WireError::Truncated)));
}

#[test]
fn garbage_eof_timeout_and_stray_fds_are_errors() {
    let (a, b) = Conn::pair().expect("socketpair");
    a.send_raw(b"\x00garbage", &[]).expect("send");
    assert!(matches!(
        b.recv(WAIT),
        Err(WireError::Bad {
            code: ErrorCode::Malformed,
            ..
        })
    ));
    let f = tempfile::tempfile().expect("tempfile");
    a.send(&Msg::Ack, &[f.as_fd()]).expect("send");
    assert!(matches!(
        b.recv_plain(WAIT),
        Err(WireError::Bad {
            code: ErrorCode::UnexpectedFds,
            ..
        })
    ));
    assert!(matches!(
        b.recv(Duration::from_millis(50)),
        Err(WireError::Timeout(_))
    ));
    drop(a);
    assert!(matches!(b.recv(WAIT), Err(WireError::Closed)));
}

#[test]
fn listener_is_private_and_knows_its_peer() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("h.sock");
    let l = Listener::bind(&path).expect("bind");
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let c = Conn::connect(&path).expect("connect");
    let s = l.accept(WAIT).expect("accept").expect("a connection");
    let peer = s.peer().expect("peer");
    assert_eq!(peer.pid, std::process::id() as i32);
    assert_eq!(peer.uid, nix::unistd::getuid().as_raw());
    c.send(&Msg::Freeze, &[]).expect("send");
    assert_eq!(s.recv_plain(WAIT).expect("recv"), Msg::Freeze);
    // Nothing waiting: accept times out instead of blocking.
    assert!(l
        .accept(Duration::from_millis(20))
        .expect("accept")
        .is_none());
}
