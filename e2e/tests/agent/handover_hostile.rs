//! Whatever connects to the handover socket, the running agent refuses it
//! cleanly and keeps serving: another user cannot connect at all (socket
//! mode 0600) and is refused in the protocol when the file mode is opened
//! up; garbage, truncated, empty, oversized and unknown messages, a foreign
//! protocol version, descriptors on a Hello, a silent peer, messages out of
//! order, a successor that gives up or vanishes while the agent journals or
//! is frozen, and forged Commits are each answered with an `Error` (or the
//! connection is closed where the protocol has nothing to say). A new build
//! whose programs the verifier rejects exits non-zero.
//!
//! After every case: traffic kept flowing (0 failed, 0 misrouted connects
//! over the whole test), the agent answers `status` with its own pid and
//! `frozen: false`, a services-file edit reaches the maps (`dump`, `verify`
//! clean), and no staging directory is left. At the end a real successor
//! still takes over.

use std::fs::Permissions;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use baton_agent::handover::incumbent::{QUEUE_STEPS, SESSION_STEPS};
use baton_agent::handover::msg::{CommitProgram, Msg, Role};
use baton_agent::handover::{Conn, ErrorCode, WireError, PROTO};
use baton_api::admin::{Status, Via};
use baton_e2e::kit::{agent_bin, wait_until, Agent, Fixture, Host, Opts, ProbeProcess};

/// The agent's wait for any message (`--handover-timeout-ms`).
const STEP_MS: u64 = 2_000;
/// The agent's longest freeze (`--freeze-timeout-ms`).
const FREEZE_MS: u64 = 1_000;
/// The session deadline that follows from STEP_MS
/// (`baton_agent::handover::incumbent::SESSION_STEPS` steps).
const SESSION_MS: u64 = STEP_MS * SESSION_STEPS as u64;
/// How long a successor with STEP_MS waits for its Welcome (`QUEUE_STEPS`).
const QUEUE_MS: u64 = STEP_MS * QUEUE_STEPS as u64;
/// The short timeouts of the agents under test.
const SHORT: [&str; 4] = [
    "--handover-timeout-ms",
    "2000",
    "--freeze-timeout-ms",
    "1000",
];
/// How long the test waits for an answer.
const WAIT: Duration = Duration::from_secs(10);

fn sock(ctx: &Host) -> PathBuf {
    ctx.run_dir.join("handover.sock")
}

fn connect(ctx: &Host) -> Conn {
    Conn::connect(&sock(ctx)).expect("connect to the handover socket")
}

fn hello(proto: u32) -> Msg {
    Msg::Hello {
        proto,
        agent_version: "hostile".into(),
        layout_version: 1,
        capabilities: vec!["maps".into()],
    }
}

/// The agent answers `Error { code }` and closes the connection.
fn expect_error(c: &Conn, code: ErrorCode, case: &str) -> String {
    let msg = match c.recv(WAIT) {
        Ok((Msg::Error { code: got, message }, fds)) => {
            assert!(fds.is_empty(), "{case}: descriptors on an error");
            assert_eq!(got, code, "{case}: {message}");
            message
        }
        other => panic!("{case}: expected an {code} error, got {other:?}"),
    };
    expect_closed(c, case);
    msg
}

/// The agent closed the connection (nothing more arrives).
fn expect_closed(c: &Conn, case: &str) {
    match c.recv(WAIT) {
        Err(WireError::Closed) => {}
        other => panic!("{case}: expected the connection closed, got {other:?}"),
    }
}

fn recv_kind(c: &Conn, want: &str, case: &str) -> (Msg, Vec<OwnedFd>) {
    let (m, fds) = c
        .recv(WAIT)
        .unwrap_or_else(|e| panic!("{case}: waiting for {want}: {e}"));
    assert_eq!(m.kind(), want, "{case}: {m:?}");
    (m, fds)
}

/// What a well-behaved successor gets up to `Welcome` + offer: the
/// manifest entries and their descriptors (the offer is not acked).
fn hello_and_offer(c: &Conn, case: &str) -> Vec<(baton_agent::handover::msg::Entry, OwnedFd)> {
    c.send(&hello(PROTO), &[]).expect("hello");
    let (m, _) = recv_kind(c, "welcome", case);
    let Msg::Welcome { parts, .. } = m else {
        unreachable!()
    };
    let mut all = Vec::new();
    for part in 0..parts {
        let (m, fds) = recv_kind(c, "offer", case);
        let Msg::Offer { entries, .. } = m else {
            unreachable!()
        };
        assert_eq!(entries.len(), fds.len(), "{case}: offer part {part}");
        all.extend(entries.into_iter().zip(fds));
        if part + 1 < parts {
            c.send(&Msg::Ack, &[]).expect("ack");
        }
    }
    all
}

/// Runs the protocol up to (and including) the journal: Prepare → Prepared.
fn up_to_prepared(c: &Conn, case: &str) -> Vec<(baton_agent::handover::msg::Entry, OwnedFd)> {
    let offer = hello_and_offer(c, case);
    c.send(&Msg::Ack, &[]).expect("ack");
    c.send(&Msg::Prepare, &[]).expect("prepare");
    recv_kind(c, "prepared", case);
    offer
}

/// … and on to the freeze: Freeze → Frozen → Ack. The agent is frozen now.
fn up_to_frozen(c: &Conn, case: &str) -> Vec<(baton_agent::handover::msg::Entry, OwnedFd)> {
    let offer = up_to_prepared(c, case);
    c.send(&Msg::Freeze, &[]).expect("freeze");
    loop {
        let (m, _) = recv_kind(c, "frozen", case);
        c.send(&Msg::Ack, &[]).expect("ack");
        if let Msg::Frozen { part, parts, .. } = m {
            if part + 1 >= parts {
                break;
            }
        }
    }
    offer
}

/// The incumbent is unharmed: its own pid answers status unfrozen, an edit
/// of the services file reaches the maps, verify is clean, no staging left.
fn assert_unharmed(ctx: &Host, agent: &Agent, round: u64, case: &str) {
    assert!(
        agent.alive(),
        "{case}: the agent died: {}",
        agent.log_text()
    );
    ctx.wait_status(&format!("{case}: agent unfrozen"), |s| {
        s.pid == agent.pid() && !s.frozen
    })
    .unwrap();
    let fixture = Fixture::at(round);
    ctx.write_fixture(&fixture).unwrap();
    ctx.wait_dump(&fixture)
        .unwrap_or_else(|e| panic!("{case}: edit after the case: {e}"));
    ctx.verify_clean().expect(case);
    assert!(
        ctx.staging_dirs().is_empty(),
        "{case}: staging left: {:?}",
        ctx.staging_dirs()
    );
}

/// A layout-1 agent serving the fixture under traffic. `short` timeouts
/// make the silent-peer cases quick; `run_dir` replaces the scratch run
/// directory.
fn hostile_world(name: &str, short: bool, run_dir: Option<PathBuf>) -> (Host, Agent, ProbeProcess) {
    hostile_world_with(name, short, run_dir, None)
}

/// [`hostile_world`] with a metrics listener at `metrics`.
fn hostile_world_with(
    name: &str,
    short: bool,
    run_dir: Option<PathBuf>,
    metrics: Option<&str>,
) -> (Host, Agent, ProbeProcess) {
    agent_bin(1).unwrap();
    agent_bin(2).unwrap();
    assert_eq!(SHORT[1], STEP_MS.to_string());
    assert_eq!(SHORT[3], FREEZE_MS.to_string());
    let fixture = Fixture::at(0);
    let mut ctx = Host::with_fixture(name, &fixture).unwrap();
    if let Some(d) = run_dir {
        ctx.run_dir = d;
    }
    ctx.metrics = metrics.map(str::to_string);
    let opts = if short {
        Opts::default().with_args(&SHORT)
    } else {
        Opts::default()
    };
    let agent = ctx.start(1, &opts).unwrap();
    ctx.wait_dump(&fixture).expect("start");
    let traffic = ctx
        .traffic(&fixture, 1_000.0, 14, Duration::from_secs(120))
        .unwrap();
    (ctx, agent, traffic)
}

/// Stops the traffic: 0 failed, 0 misrouted connects, held connections alive.
fn finish(traffic: ProbeProcess) {
    let report = traffic.report(Duration::from_secs(60)).unwrap();
    let problems = Fixture::at(0).traffic_problems(&report);
    assert!(problems.is_empty(), "traffic: {problems:#?}");
}

#[test]
fn malformed_and_out_of_order_messages_are_refused_while_the_agent_serves() {
    let (ctx, agent, traffic) = hostile_world("hostile-msgs", true, None);
    let mut round = 0;
    let mut t = Instant::now();
    let mut next = |case: &str| {
        round += 1;
        let t1 = Instant::now();
        assert_unharmed(&ctx, &agent, round, case);
        eprintln!(
            "{case}: refused in {:?}, agent unharmed after {:?}",
            t1 - t,
            t1.elapsed()
        );
        t = Instant::now();
    };

    let case = "garbage bytes";
    let c = connect(&ctx);
    c.send_raw(b"\x00\xff\xfegarbage\n", &[]).expect("send");
    expect_error(&c, ErrorCode::Malformed, case);
    next(case);

    let case = "truncated JSON";
    let c = connect(&ctx);
    c.send_raw(br#"{"type":"hello","proto":1,"agent_version":"x""#, &[])
        .expect("send");
    expect_error(&c, ErrorCode::Malformed, case);
    next(case);

    let case = "message larger than 64 KiB";
    let c = connect(&ctx);
    let mut big = br#"{"type":"hello","proto":1,"agent_version":""#.to_vec();
    big.resize(70 * 1024, b'x');
    big.extend_from_slice(br#"","layout_version":1,"capabilities":[]}"#);
    c.send_unchecked(&big, &[]).expect("send 70 KiB");
    let m = expect_error(&c, ErrorCode::Malformed, case);
    assert!(m.contains("truncated"), "{case}: {m}");
    next(case);

    let case = "unknown message type";
    let c = connect(&ctx);
    c.send_raw(br#"{"type":"launch","target":"everything"}"#, &[])
        .expect("send");
    expect_error(&c, ErrorCode::UnknownMessage, case);
    next(case);

    let case = "hello with an unknown field";
    let c = connect(&ctx);
    c.send_raw(
        br#"{"type":"hello","proto":1,"agent_version":"x","layout_version":1,"capabilities":[],"root":true}"#,
        &[],
    )
    .expect("send");
    expect_error(&c, ErrorCode::Malformed, case);
    next(case);

    let case = "protocol version 999";
    let c = connect(&ctx);
    c.send(&hello(999), &[]).expect("send");
    let m = expect_error(&c, ErrorCode::VersionMismatch, case);
    assert!(m.contains("999"), "{case}: {m}");
    next(case);

    let case = "descriptors attached to a hello";
    let c = connect(&ctx);
    let devnull = std::fs::File::open("/dev/null").expect("/dev/null");
    c.send(&hello(PROTO), &[devnull.as_fd(), devnull.as_fd()])
        .expect("send");
    expect_error(&c, ErrorCode::UnexpectedFds, case);
    next(case);

    let case = "an empty record";
    let c = connect(&ctx);
    c.send_raw(b"", &[]).expect("send");
    // A zero-length record reads as end of stream: nothing to answer.
    expect_closed(&c, case);
    next(case);

    let case = "connect and say nothing";
    let c = connect(&ctx);
    let t0 = Instant::now();
    expect_error(&c, ErrorCode::Timeout, case);
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(STEP_MS - 100)
            && waited < Duration::from_millis(STEP_MS * 4),
        "{case}: the step timed out after {waited:?}, --handover-timeout-ms is {STEP_MS}"
    );
    next(case);

    let case = "freeze instead of acknowledging the offer";
    let c = connect(&ctx);
    let offer = hello_and_offer(&c, case);
    assert!(
        offer.len() >= 10,
        "{case}: offer of {} entries",
        offer.len()
    );
    c.send(&Msg::Freeze, &[]).expect("send");
    let m = expect_error(&c, ErrorCode::UnexpectedMessage, case);
    assert!(m.contains("expected ack"), "{case}: {m}");
    drop(offer);
    next(case);

    let case = "abort while the agent journals";
    let c = connect(&ctx);
    let offer = up_to_prepared(&c, case);
    c.send(
        &Msg::Abort {
            reason: "changed my mind".into(),
        },
        &[],
    )
    .expect("abort");
    recv_kind(&c, "ack", case);
    expect_closed(&c, case);
    drop(offer);
    next(case);

    let case = "vanish while the agent journals";
    let c = connect(&ctx);
    let offer = up_to_prepared(&c, case);
    drop(c);
    drop(offer);
    next(case);

    let case = "frozen, then say nothing";
    let c = connect(&ctx);
    let offer = up_to_frozen(&c, case);
    let st = ctx.status().expect("status while frozen");
    assert!(st.frozen, "{case}: {st:?}");
    let t0 = Instant::now();
    let m = expect_error(&c, ErrorCode::Timeout, case);
    assert!(m.contains("without a commit"), "{case}: {m}");
    assert!(
        t0.elapsed() < Duration::from_millis(FREEZE_MS * 4),
        "{case}: frozen for {:?}",
        t0.elapsed()
    );
    drop(offer);
    next(case);

    let case = "vanish while the agent is frozen";
    let c = connect(&ctx);
    let offer = up_to_frozen(&c, case);
    drop(c);
    drop(offer);
    next(case);

    let case = "commit to a staging path outside the pins";
    let c = connect(&ctx);
    let offer = up_to_frozen(&c, case);
    c.send(
        &Msg::Commit {
            programs: Vec::new(),
            maps: Vec::new(),
            staging: "../../../etc".into(),
        },
        &[],
    )
    .expect("commit");
    let m = expect_error(&c, ErrorCode::Refused, case);
    assert!(m.contains("bad staging directory"), "{case}: {m}");
    drop(offer);
    next(case);

    let case = "commit with a map where a program should be";
    let c = connect(&ctx);
    let offer = up_to_frozen(&c, case);
    let (entry, map_fd) = offer
        .iter()
        .find(|(e, _)| e.role == Role::Map)
        .expect("a map in the offer");
    c.send(
        &Msg::Commit {
            programs: vec![CommitProgram {
                attach: "connect4".into(),
                id: entry.id,
            }],
            maps: Vec::new(),
            staging: "staging-1".into(),
        },
        &[map_fd.as_fd()],
    )
    .expect("commit");
    // The id matches (map and program ids are separate spaces): only the
    // object's type tells it is no program.
    let m = expect_error(&c, ErrorCode::BadFd, case);
    assert!(m.contains("is not cgroup_sock_addr"), "{case}: {m}");
    drop(offer);
    next(case);

    let case = "commit with a program whose id is not the claimed one";
    let c = connect(&ctx);
    let offer = up_to_frozen(&c, case);
    let (_, prog_fd) = offer
        .iter()
        .find(|(e, _)| e.role == Role::Program)
        .expect("a program in the offer");
    c.send(
        &Msg::Commit {
            programs: vec![CommitProgram {
                attach: "connect4".into(),
                id: u32::MAX,
            }],
            maps: Vec::new(),
            staging: "staging-1".into(),
        },
        &[prog_fd.as_fd()],
    )
    .expect("commit");
    let m = expect_error(&c, ErrorCode::BadFd, case);
    assert!(m.contains("program id"), "{case}: {m}");
    drop(offer);
    next(case);

    let case = "commit without descriptors for its programs";
    let c = connect(&ctx);
    let offer = up_to_frozen(&c, case);
    c.send(
        &Msg::Commit {
            programs: vec![CommitProgram {
                attach: "connect4".into(),
                id: 1,
            }],
            maps: Vec::new(),
            staging: "staging-1".into(),
        },
        &[],
    )
    .expect("commit");
    expect_error(&c, ErrorCode::BadFd, case);
    drop(offer);
    next(case);

    let log = agent.log_text();
    assert!(
        !log.contains("handover committed"),
        "a hostile peer got a commit through:\n{log}"
    );
    finish(traffic);
    agent.stop().unwrap();
}

/// Restores a path's mode on drop.
struct ModeGuard(PathBuf, u32);

impl Drop for ModeGuard {
    fn drop(&mut self) {
        let _ = std::fs::set_permissions(&self.0, Permissions::from_mode(self.1));
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
}

/// What a process of uid/gid 65534 got from the handover socket.
#[derive(Debug, PartialEq, Eq)]
enum Nobody {
    /// connect(2) failed with this errno.
    ConnectFailed(i32),
    /// Connected; the agent answered an error with code `refused`.
    Refused,
    /// Connected; some other answer (or none).
    Other(i32),
}

/// Forks a child that drops to uid/gid 65534 and connects to `path`; the
/// child only makes async-signal-safe system calls (this process has
/// threads) and reports through its exit code.
fn connect_as_nobody(path: &Path) -> Nobody {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: plain old data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    assert!(bytes.len() < addr.sun_path.len(), "socket path too long");
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let needle = br#""refused""#;
    // SAFETY: the child calls only async-signal-safe functions and _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: raw system calls on local data; the child never returns.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(65534) != 0
                || libc::setuid(65534) != 0
            {
                libc::_exit(90);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0);
            if fd < 0 {
                libc::_exit(91);
            }
            if libc::connect(
                fd,
                &addr as *const libc::sockaddr_un as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            ) != 0
            {
                libc::_exit(100 + (*libc::__errno_location()).min(150));
            }
            let tv = libc::timeval {
                tv_sec: 10,
                tv_usec: 0,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            let mut buf = [0u8; 4096];
            let n = libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0);
            if n <= 0 {
                libc::_exit(2);
            }
            let got = &buf[..n as usize];
            let refused = got.windows(needle.len()).any(|w| w == needle);
            libc::_exit(if refused { 0 } else { 1 });
        }
    }
    let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).expect("waitpid");
    match status {
        nix::sys::wait::WaitStatus::Exited(_, 0) => Nobody::Refused,
        nix::sys::wait::WaitStatus::Exited(_, c) if c >= 100 => Nobody::ConnectFailed(c - 100),
        nix::sys::wait::WaitStatus::Exited(_, c) => Nobody::Other(c),
        other => panic!("uid 65534 child: {other:?}"),
    }
}

#[test]
fn another_user_cannot_connect_and_is_refused_if_the_mode_is_opened() {
    // The run directory in /tmp (world-searchable whatever TMPDIR says),
    // opened to others so that only the socket's own mode keeps them out.
    let top = tempfile::tempdir_in("/tmp").expect("run dir in /tmp");
    std::fs::set_permissions(top.path(), Permissions::from_mode(0o711)).expect("chmod run dir");
    let (ctx, agent, traffic) = hostile_world("hostile-uid", false, Some(top.path().join("run")));
    let path = sock(&ctx);
    assert_eq!(mode(&path), 0o600, "handover socket mode");
    assert_eq!(
        connect_as_nobody(&path),
        Nobody::ConnectFailed(libc::EACCES),
        "uid 65534 connecting to the 0600 socket"
    );
    assert_unharmed(&ctx, &agent, 1, "uid 65534, socket 0600");

    // Opened up by mistake: the agent checks SO_PEERCRED and refuses.
    let _sock = ModeGuard(path.clone(), 0o600);
    std::fs::set_permissions(&path, Permissions::from_mode(0o666)).expect("chmod socket");
    assert_eq!(
        connect_as_nobody(&path),
        Nobody::Refused,
        "uid 65534 connecting to a 0666 socket"
    );
    assert!(
        agent.log_text().contains("refusing a peer of another user"),
        "{}",
        agent.log_text()
    );
    assert_unharmed(&ctx, &agent, 2, "uid 65534, socket 0666");
    finish(traffic);
    agent.stop().unwrap();
}

#[test]
fn a_build_whose_programs_the_verifier_rejects_is_refused() {
    let (ctx, old, traffic) = hostile_world("hostile-reject", false, None);
    let case = "new build with rejected programs";
    let bad = ctx
        .spawn(
            2,
            &Opts::default().with_env("BATON_TEST_REJECT_PROGRAMS", "1"),
        )
        .unwrap();
    let st = bad.wait_exit(Duration::from_secs(30)).expect(case);
    let log = bad.log_text();
    assert!(
        !st.success()
            && log.contains("handover failed")
            && log.contains("BATON_TEST_REJECT_PROGRAMS"),
        "{case}: exit {st}; log:\n{log}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || old
            .log_text()
            .contains("handover failed; this agent keeps serving")),
        "{}",
        old.log_text()
    );
    assert_unharmed(&ctx, &old, 1, case);

    // The same upgrade with a good build goes through.
    let new = ctx.spawn(2, &Opts::default()).unwrap();
    let st = old.wait_exit(Duration::from_secs(30)).expect("handed over");
    assert!(st.success(), "old agent exit {st}: {}", old.log_text());
    let s = new.wait_serving(Duration::from_secs(30)).unwrap();
    assert_eq!(
        (s.layout_version, s.handover.as_ref().map(|h| h.from_layout)),
        (2, Some(1)),
        "{s:?}"
    );
    // The inherited handover socket names its new owner: a successor judges
    // its predecessor's liveness by this pid.
    let c = connect(&ctx);
    let peer = c.peer().expect("SO_PEERCRED");
    assert_eq!(
        peer.pid as u32,
        new.pid(),
        "SO_PEERCRED of the inherited handover socket"
    );
    drop(c);
    assert_unharmed(&ctx, &new, 2, "after the good upgrade");
    finish(traffic);
    new.stop().unwrap();
}

/// Waits up to `gap` for an `Error` from the agent: its text and when it
/// arrived (from `t0`), or `None` when the gap passed without one. Other
/// messages (the agent going on with the protocol) are read and ignored.
fn error_within(c: &Conn, gap: Duration, t0: Instant) -> Option<(String, Duration)> {
    let until = Instant::now() + gap;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        match c.recv(left) {
            Ok((Msg::Error { code, message }, _)) => {
                return Some((format!("{code}: {message}"), t0.elapsed()))
            }
            Ok(_) => continue,
            Err(WireError::Timeout(_)) => return None,
            Err(e) => return Some((format!("connection: {e}"), t0.elapsed())),
        }
    }
}

/// A same-uid peer that answers each step 300 ms before the step timeout:
/// `Hello`, the offer's `Ack`, `Prepare`, `Freeze`, then `Abort`. Returns
/// the error that ended its session and when (from connect), or `None` when
/// the agent went along with the whole slow session.
fn slow_session(ctx: &Host, case: &str) -> Option<(String, Duration)> {
    let gap = Duration::from_millis(STEP_MS - 300);
    let c = connect(ctx);
    let t0 = Instant::now();
    if let Some(e) = error_within(&c, gap, t0) {
        return Some(e);
    }
    c.send(&hello(PROTO), &[]).expect("hello");
    let (m, _) = recv_kind(&c, "welcome", case);
    assert!(
        matches!(m, Msg::Welcome { parts: 1, .. }),
        "{case}: one offer part expected: {m:?}"
    );
    let offer = recv_kind(&c, "offer", case);
    for next in [Msg::Ack, Msg::Prepare, Msg::Freeze] {
        if let Some(e) = error_within(&c, gap, t0) {
            return Some(e);
        }
        // The agent may close between our check and this send.
        let _ = c.send(&next, &[]);
    }
    let _ = c.send(
        &Msg::Abort {
            reason: "slow peer done".into(),
        },
        &[],
    );
    drop(offer);
    error_within(&c, WAIT, t0)
}

#[test]
fn a_peer_answering_each_step_just_under_the_timeout_is_cut_at_the_session_deadline() {
    let case = "slow peer";
    let (ctx, agent, traffic) = hostile_world("hostile-slow", true, None);
    let before = ctx.status().expect("status before");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (cut, answered) = std::thread::scope(|s| {
        // The admin socket answers all along, from the same agent.
        let poller = s.spawn(|| {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let st = ctx
                    .status()
                    .expect("status during the slow session: no answer");
                assert_eq!(st.pid, agent.pid(), "{st:?}");
                n += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            n
        });
        let cut = slow_session(&ctx, case);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (cut, poller.join().expect("status poller"))
    });
    let (why, at) = cut.unwrap_or_else(|| {
        panic!(
            "{case}: the agent went along with a {} ms-per-step session: {}",
            STEP_MS - 300,
            agent.log_text()
        )
    });
    eprintln!("{case}: cut after {at:?} ({why}); status answered {answered} times meanwhile");
    assert!(
        why.contains("timeout") && why.contains("session deadline"),
        "{case}: {why}"
    );
    assert!(
        at >= Duration::from_millis(SESSION_MS - 150)
            && at < Duration::from_millis(SESSION_MS + 1_500),
        "{case}: cut after {at:?}; the session deadline is {SESSION_MS} ms"
    );
    let after = ctx.status().expect("status after");
    let unchanged = |s: &Status| (s.pid, s.generation, s.layout_version, s.frozen, s.services);
    assert_eq!(
        unchanged(&before),
        unchanged(&after),
        "{case}: pid, generation, layout_version, frozen or services changed: {after:?}"
    );
    assert_unharmed(&ctx, &agent, 1, case);
    finish(traffic);
    agent.stop().unwrap();
}

#[test]
fn a_successor_started_while_a_peer_holds_the_socket_gets_the_datapath_in_turn() {
    let (ctx, old, traffic) = hostile_world("hostile-queue", true, None);
    let (new, waited, holder) = std::thread::scope(|s| {
        let holder = s.spawn(|| slow_session(&ctx, "holder"));
        std::thread::sleep(Duration::from_millis(300));

        // A successor whose turn does not come within its own bound
        // (3 × 400 ms) fails fast, saying the socket is busy.
        let case = "impatient successor";
        let impatient = ctx
            .spawn(
                2,
                &Opts::default().with_args(&["--handover-timeout-ms", "400"]),
            )
            .unwrap();
        let st = impatient.wait_exit(Duration::from_secs(20)).expect(case);
        let log = impatient.log_text();
        assert!(
            !st.success() && log.contains("is busy") && log.contains("retry"),
            "{case}: exit {st}; log:\n{log}"
        );
        let gave_up = impatient
            .exited_at()
            .map(|t| t.saturating_duration_since(impatient.started()));
        eprintln!("{case}: gave up after {gave_up:?}: busy");
        assert!(
            old.alive(),
            "{case}: the incumbent left: {}",
            old.log_text()
        );

        // Its retry, with the agents' own timeouts, waits its turn.
        let new = ctx.spawn(2, &Opts::default().with_args(&SHORT)).unwrap();
        let exit = old
            .wait_exit(Duration::from_secs(30))
            .expect("handed over after the holder");
        assert!(
            exit.success(),
            "old agent exit {exit}: {}\nnew agent:\n{}",
            old.log_text(),
            new.log_text()
        );
        let waited = old.exited_at().map_or(Duration::MAX, |t| {
            t.saturating_duration_since(new.started())
        });
        let holder = holder.join().expect("holder thread");
        (new, waited, holder)
    });
    let (why, held) = holder.expect("the holder's session was never cut");
    assert!(why.contains("session deadline"), "holder: {why}");
    eprintln!(
        "a successor started while a peer held the socket had the datapath {waited:?} after \
         its start (holder cut after {held:?}; queue bound {QUEUE_MS} ms)"
    );
    // Within its queue bound, plus the program load and commit that follow.
    assert!(
        waited < Duration::from_millis(QUEUE_MS + 4_000),
        "the successor waited {waited:?}"
    );
    let st = new.wait_serving(Duration::from_secs(30)).unwrap();
    assert_eq!(
        st.handover.as_ref().map(|h| (h.via, h.from_layout)),
        Some((Via::Handover, 1)),
        "{st:?}"
    );
    assert_unharmed(&ctx, &new, 1, "after the queued successor");
    finish(traffic);
    new.stop().unwrap();
}

/// Pins the offered maps under `<pin_dir>/<name>/maps/`, as a peer can from
/// the offer alone, and returns the directory.
fn fake_staging(
    ctx: &Host,
    name: &str,
    offer: &[(baton_agent::handover::msg::Entry, OwnedFd)],
) -> PathBuf {
    let dir = ctx.sandbox.pin_dir().join(name);
    std::fs::create_dir_all(dir.join("maps")).expect("mkdir staging");
    for (e, fd) in offer.iter().filter(|(e, _)| e.role == Role::Map) {
        baton_agent::sys::obj_pin(fd.as_fd(), &dir.join("maps").join(&e.name)).expect("pin a map");
    }
    dir
}

fn remove_staging(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir.join("maps")) {
        for e in rd.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let _ = std::fs::remove_dir(dir.join("maps"));
    let _ = std::fs::remove_dir(dir);
}

/// Sends a `Commit` of the agent's own programs (from its offer).
fn commit_own_programs(
    c: &Conn,
    offer: &[(baton_agent::handover::msg::Entry, OwnedFd)],
    staging: String,
) {
    let progs: Vec<_> = offer
        .iter()
        .filter(|(e, _)| e.role == Role::Program)
        .collect();
    assert_eq!(progs.len(), 2, "connect4 and connect6 in the offer");
    c.send(
        &Msg::Commit {
            programs: progs
                .iter()
                .map(|(e, _)| CommitProgram {
                    attach: e.name.clone(),
                    id: e.id,
                })
                .collect(),
            maps: Vec::new(),
            staging,
        },
        &progs.iter().map(|(_, fd)| fd.as_fd()).collect::<Vec<_>>(),
    )
    .expect("commit");
}

#[test]
fn a_commit_of_the_agents_own_programs_is_refused_and_a_real_successor_still_takes_over() {
    let (ctx, agent, traffic) =
        hostile_world_with("hostile-forged", true, None, Some("127.0.0.1:19196"));
    let me = std::process::id();
    let metrics_ok = |ctx: &Host, case: &str| {
        let m = ctx.scrape().unwrap();
        assert!(
            m.starts_with("HTTP/1.1 200 OK") && m.contains("baton_generation"),
            "{case}: metrics: {m}"
        );
    };

    let case = "own programs, no maps, nothing staged";
    let c = connect(&ctx);
    let offer = up_to_frozen(&c, case);
    commit_own_programs(&c, &offer, format!("staging-{me}"));
    let m = expect_error(&c, ErrorCode::Refused, case);
    assert!(m.contains("this agent's own"), "{case}: {m}");
    drop(offer);
    assert_unharmed(&ctx, &agent, 1, case);
    metrics_ok(&ctx, case);

    let case = "own programs, the agent's own maps pinned as a staging directory";
    let c = connect(&ctx);
    let offer = up_to_frozen(&c, case);
    let dir = fake_staging(&ctx, &format!("staging-{me}"), &offer);
    commit_own_programs(&c, &offer, format!("staging-{me}"));
    let m = expect_error(&c, ErrorCode::Refused, case);
    remove_staging(&dir);
    assert!(m.contains("this agent's own"), "{case}: {m}");
    drop(offer);
    assert_unharmed(&ctx, &agent, 2, case);

    let case = "another process's staging directory";
    let c = connect(&ctx);
    let offer = up_to_frozen(&c, case);
    commit_own_programs(&c, &offer, format!("staging-{}", agent.pid()));
    let m = expect_error(&c, ErrorCode::Refused, case);
    assert!(m.contains("is not the peer's"), "{case}: {m}");
    drop(offer);
    assert_unharmed(&ctx, &agent, 3, case);
    metrics_ok(&ctx, case);
    assert!(
        !agent.log_text().contains("handover committed"),
        "a forged commit got through:\n{}",
        agent.log_text()
    );

    // A real successor still takes over: the same layout, so every map is
    // reused and the commit names none (the checks pass on reused pins).
    let new = ctx.spawn(1, &Opts::default().with_args(&SHORT)).unwrap();
    let exit = agent
        .wait_exit(Duration::from_secs(30))
        .expect("handed over");
    assert!(
        exit.success(),
        "old agent exit {exit}: {}",
        agent.log_text()
    );
    let st = new.wait_serving(Duration::from_secs(30)).unwrap();
    assert_eq!(
        st.handover
            .as_ref()
            .map(|h| (h.via, h.from_layout, h.maps.reused)),
        Some((Via::Handover, 1, 6)),
        "{st:?}"
    );
    metrics_ok(&ctx, "after the real successor");
    assert_unharmed(&ctx, &new, 4, "after the real successor");
    finish(traffic);
    new.stop().unwrap();
}
