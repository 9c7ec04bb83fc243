//! The running agent's side: accept a successor, offer everything, journal,
//! freeze, and on `Commit` swap the links and move the pins itself. Being the
//! only one who ever swaps the links while it lives is what makes a timeout
//! safe: once it has given up, a late `Commit` finds nobody to act on it.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::msg::{
    hex, versions, CommitFigures, CommitMap, ErrorCode, JournalKey, Msg, CAPABILITIES, MIN_PROTO,
    PROTO,
};
use super::wire::{Conn, Listener, WireError, MAX_FDS};
use super::{commit, crash_point, manifest};
use crate::sys;

/// What the agent lends the handover.
pub trait Incumbent: Send + Sync {
    /// Manifest entries with a duplicate of each descriptor.
    fn offer(&self) -> Result<Vec<(super::msg::Entry, OwnedFd)>, String>;
    /// Generation recorded in the meta map.
    fn generation(&self) -> u64;
    /// Starts journaling map writes.
    fn start_journal(&self);
    /// Stops writing (waits for a sync in flight) and returns the journal.
    fn freeze(&self) -> Vec<(&'static str, Vec<u8>)>;
    /// Resumes writing (the handover failed).
    fn unfreeze(&self);
    /// Swaps every link to the given programs (checked ids) and promotes the
    /// staged pins; all or nothing.
    fn commit(
        &self,
        programs: &[(String, OwnedFd, u32)],
        maps: &[CommitMap],
        staging: &str,
    ) -> Result<(), String>;
    /// Never write again; stop serving (the successor has the listeners).
    fn retire(&self);
    /// The pin directory (a successor's staging directory is under it).
    fn pin_dir(&self) -> &std::path::Path;
    /// After a failed session with the process `peer_pid`: removes staging
    /// directories whose owner is gone (a successor that died mid-session
    /// leaves the maps it loaded pinned there).
    fn clean_staging(&self, _peer_pid: i32) {}
}

/// Knobs of the incumbent's side.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Longest wait for any message.
    pub step: Duration,
    /// Longest the control plane stays frozen waiting for `Commit`.
    pub freeze: Duration,
    /// Longest a whole session may last, accept to `Committed`; `None`:
    /// [`SESSION_STEPS`] × `step`.
    pub session: Option<Duration>,
    /// Manifest entries per `Offer` message (≤ 253 descriptors).
    pub part_size: usize,
}

/// The session deadline in steps: a successor does two long pieces of work
/// while the incumbent waits (load before `Prepare`, pre-copy before
/// `Freeze`), each bounded by one step; everything else is message latency.
pub const SESSION_STEPS: u32 = 2;

/// How long a successor waits for its `Welcome` in steps: the session ahead
/// of it ends within [`SESSION_STEPS`] steps, then its own `Hello` is
/// answered within one more.
pub const QUEUE_STEPS: u32 = SESSION_STEPS + 1;

impl Timeouts {
    /// The overall deadline of one session.
    pub fn session(&self) -> Duration {
        self.session.unwrap_or(self.step * SESSION_STEPS)
    }

    /// How long a successor waits for its `Welcome` while another session
    /// holds the socket.
    pub fn queue_wait(&self) -> Duration {
        self.session() + self.step
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            step: Duration::from_secs(10),
            freeze: Duration::from_secs(2),
            session: None,
            part_size: 64,
        }
    }
}

/// Journal keys per `Frozen` message (hex keys of ≤ 64 bytes stay far below
/// the message size limit).
const KEYS_PER_PART: usize = 256;

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The successor took over; this agent is retired.
    Committed,
    /// The session failed; this agent keeps serving.
    Failed(String),
}

/// Accepts successors until `stop` is set or a handover commits. One session
/// at a time, each cut at its deadline ([`Timeouts::session`]): the
/// listener's backlog holds the others, in connect order, until it ends.
pub fn serve(
    listener: Arc<Listener>,
    agent: Arc<dyn Incumbent>,
    timeouts: Timeouts,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let conn = match listener.accept(Duration::from_millis(100)) {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "handover accept");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            match session(&conn, agent.as_ref(), &timeouts) {
                Outcome::Committed => {
                    tracing::info!("handover committed: retiring");
                    agent.retire();
                    return;
                }
                Outcome::Failed(why) => {
                    tracing::warn!(reason = %why, "handover failed; this agent keeps serving");
                    agent.clean_staging(conn.peer().map_or(0, |p| p.pid));
                }
            }
        }
    })
}

/// Session state that must be undone on failure.
struct Guard<'a> {
    agent: &'a dyn Incumbent,
    /// The journal records writes (from `Prepare` on).
    journaling: bool,
    frozen: bool,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        // Also when the session ends between Prepare and Freeze: the journal
        // must not go on recording every write for the agent's lifetime.
        if self.frozen || self.journaling {
            self.agent.unfreeze();
        }
    }
}

/// Runs one handover session on an accepted connection.
pub fn session(conn: &Conn, agent: &dyn Incumbent, t: &Timeouts) -> Outcome {
    let mut guard = Guard {
        agent,
        journaling: false,
        frozen: false,
    };
    match run(conn, &mut guard, t) {
        Ok(()) => {
            guard.frozen = false;
            guard.journaling = false;
            Outcome::Committed
        }
        Err((code, why)) => {
            if let Some(code) = code {
                conn.send_error(code, why.clone());
            }
            Outcome::Failed(why)
        }
    }
}

type Fail = (Option<ErrorCode>, String);

/// The waits of one session: each is one step at most, and none goes past
/// the session's deadline.
struct Clock {
    step: Duration,
    session: Duration,
    end: Instant,
}

impl Clock {
    fn new(t: &Timeouts) -> Self {
        Self {
            step: t.step,
            session: t.session(),
            end: Instant::now() + t.session(),
        }
    }

    /// The next wait for a message.
    fn step(&self) -> Duration {
        self.step.min(left(self.end))
    }

    /// A wait that must also end by `until`.
    fn until(&self, until: Instant) -> Duration {
        left(until).min(left(self.end))
    }

    /// Rewrites a timeout caused by the session deadline so the peer and the
    /// log say which limit it hit.
    fn explain(&self, f: Fail) -> Fail {
        match f {
            (Some(ErrorCode::Timeout), _) if Instant::now() >= self.end => (
                Some(ErrorCode::Timeout),
                format!(
                    "session deadline of {:?} passed; ending the session",
                    self.session
                ),
            ),
            other => other,
        }
    }
}

fn wire(e: WireError) -> Fail {
    match e {
        WireError::Bad { code, detail } => (Some(code), detail),
        WireError::Timeout(d) => (Some(ErrorCode::Timeout), format!("no message within {d:?}")),
        WireError::Truncated | WireError::FdsTruncated => {
            (Some(ErrorCode::Malformed), e.to_string())
        }
        other => (None, other.to_string()),
    }
}

/// Receives the next message; `Abort` and `Error` end the session.
fn next(conn: &Conn, wait: Duration) -> Result<(Msg, Vec<OwnedFd>), Fail> {
    let (m, fds) = conn.recv(wait).map_err(wire)?;
    match m {
        Msg::Abort { reason } => {
            let _ = conn.send(&Msg::Ack, &[]);
            Err((None, format!("successor aborted: {reason}")))
        }
        Msg::Error { code, message } => Err((None, format!("successor error {code}: {message}"))),
        m => Ok((m, fds)),
    }
}

fn expect_plain(conn: &Conn, wait: Duration, want: &'static str) -> Result<Msg, Fail> {
    let (m, fds) = next(conn, wait)?;
    if !fds.is_empty() {
        return Err((
            Some(ErrorCode::UnexpectedFds),
            format!("{} descriptors on {}", fds.len(), m.kind()),
        ));
    }
    if m.kind() != want {
        return Err((
            Some(ErrorCode::UnexpectedMessage),
            format!("expected {want}, got {}", m.kind()),
        ));
    }
    Ok(m)
}

fn send(conn: &Conn, m: &Msg, fds: &[std::os::fd::BorrowedFd<'_>]) -> Result<(), Fail> {
    conn.send(m, fds).map_err(wire)
}

fn run(conn: &Conn, g: &mut Guard<'_>, t: &Timeouts) -> Result<(), Fail> {
    let clock = Clock::new(t);
    run_within(conn, g, t, &clock).map_err(|f| clock.explain(f))
}

fn run_within(conn: &Conn, g: &mut Guard<'_>, t: &Timeouts, clock: &Clock) -> Result<(), Fail> {
    let agent = g.agent;
    // A peer that stops reading must not block a send past the deadline.
    conn.set_send_timeout(clock.step()).map_err(wire)?;
    let peer = conn.peer().map_err(wire)?;
    let me = nix::unistd::getuid().as_raw();
    if peer.uid != me {
        tracing::warn!(
            peer_pid = peer.pid,
            peer_uid = peer.uid,
            "handover: refusing a peer of another user"
        );
        return Err((
            Some(ErrorCode::Refused),
            format!("peer uid {} is not {me}", peer.uid),
        ));
    }
    let Msg::Hello {
        proto,
        agent_version,
        layout_version,
        ..
    } = expect_plain(conn, clock.step(), "hello")?
    else {
        return Err((Some(ErrorCode::Internal), "unreachable".into()));
    };
    // The successor proposes; an older or newer one that also speaks one of
    // our versions asks again with it (docs/handover.md, "Compatibility").
    if !versions().contains(&proto) {
        tracing::warn!(peer_pid = peer.pid, proto, %agent_version,
            "handover: refusing a successor of another protocol version; this agent keeps serving");
        return Err((
            Some(ErrorCode::VersionMismatch),
            format!("protocol {proto} is not one this agent speaks ({MIN_PROTO}..={PROTO})"),
        ));
    }
    tracing::info!(peer_pid = peer.pid, %agent_version, layout_version, proto, "handover: successor says hello");

    let offer = agent.offer().map_err(|e| (Some(ErrorCode::Internal), e))?;
    let own = commit::Own::of(offer.iter().map(|(e, _)| e));
    let part_size = t.part_size.clamp(1, MAX_FDS);
    let parts = offer.len().div_ceil(part_size).max(1) as u32;
    send(
        conn,
        &Msg::Welcome {
            // The session runs at the successor's version.
            proto,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            layout_version: baton_ebpf::LAYOUT_VERSION,
            capabilities: CAPABILITIES.iter().map(|s| s.to_string()).collect(),
            generation: agent.generation(),
            parts,
        },
        &[],
    )?;
    crash_point("old:after_welcome");
    let chunks: Vec<_> = if offer.is_empty() {
        vec![&offer[..]]
    } else {
        offer.chunks(part_size).collect()
    };
    for (part, chunk) in chunks.into_iter().enumerate() {
        let entries = chunk.iter().map(|(e, _)| e.clone()).collect();
        let fds: Vec<_> = chunk.iter().map(|(_, f)| f.as_fd()).collect();
        send(
            conn,
            &Msg::Offer {
                part: part as u32,
                parts,
                entries,
            },
            &fds,
        )?;
        expect_plain(conn, clock.step(), "ack")?;
    }
    drop(offer);
    crash_point("old:after_offer");

    expect_plain(conn, clock.step(), "prepare")?;
    agent.start_journal();
    g.journaling = true;
    send(conn, &Msg::Prepared, &[])?;
    crash_point("old:after_prepared");

    expect_plain(conn, clock.step(), "freeze")?;
    let frozen_at = Instant::now();
    g.frozen = true;
    let journal = agent.freeze();
    let n_keys = journal.len() as u64;
    let keys: Vec<JournalKey> = journal
        .into_iter()
        .map(|(map, key)| JournalKey {
            map: map.into(),
            key: hex(&key),
        })
        .collect();
    let kparts = keys.len().div_ceil(KEYS_PER_PART).max(1) as u32;
    let kchunks: Vec<&[JournalKey]> = if keys.is_empty() {
        vec![&keys[..]]
    } else {
        keys.chunks(KEYS_PER_PART).collect()
    };
    let freeze_deadline = frozen_at + t.freeze;
    for (part, chunk) in kchunks.into_iter().enumerate() {
        send(
            conn,
            &Msg::Frozen {
                part: part as u32,
                parts: kparts,
                keys: chunk.to_vec(),
            },
            &[],
        )?;
        expect_plain(conn, clock.until(freeze_deadline), "ack")?;
    }
    crash_point("old:after_frozen");

    let (m, fds) = next(conn, clock.until(freeze_deadline)).map_err(|(c, why)| {
        if c == Some(ErrorCode::Timeout) && Instant::now() < clock.end {
            (
                c,
                format!("frozen for {:?} without a commit; resuming", t.freeze),
            )
        } else {
            (c, why)
        }
    })?;
    let Msg::Commit {
        programs,
        maps,
        staging,
    } = m
    else {
        return Err((
            Some(ErrorCode::UnexpectedMessage),
            format!("expected commit, got {}", m.kind()),
        ));
    };
    if fds.len() != programs.len() {
        return Err((
            Some(ErrorCode::BadFd),
            format!("{} programs for {} descriptors", programs.len(), fds.len()),
        ));
    }
    let mut progs = Vec::new();
    for (p, fd) in programs.into_iter().zip(fds) {
        let info = sys::prog_info(fd.as_fd()).map_err(|e| {
            (
                Some(ErrorCode::BadFd),
                format!("{}: not a program: {e}", p.attach),
            )
        })?;
        if info.id != p.id {
            return Err((
                Some(ErrorCode::BadFd),
                format!("{}: program id {} is not {}", p.attach, info.id, p.id),
            ));
        }
        // BPF_OBJ_GET_INFO_BY_FD answers for any BPF object: a map's info
        // starts with its type and id too, so a map whose id matches passes
        // the check above.
        if info.prog_type != manifest::PROG_TYPE_CGROUP_SOCK_ADDR {
            return Err((
                Some(ErrorCode::BadFd),
                format!(
                    "{}: program type {} is not cgroup_sock_addr",
                    p.attach, info.prog_type
                ),
            ));
        }
        progs.push((p.attach, fd, p.id));
    }
    // Only a real successor's staged datapath may retire this agent.
    commit::check(agent.pin_dir(), peer.pid, &own, &progs, &maps, &staging).map_err(|e| {
        tracing::warn!(peer_pid = peer.pid, error = %e, "handover: refusing a commit");
        (Some(ErrorCode::Refused), format!("commit: {e}"))
    })?;
    agent
        .commit(&progs, &maps, &staging)
        .map_err(|e| (Some(ErrorCode::Internal), format!("commit: {e}")))?;
    let figures = CommitFigures {
        freeze_us: frozen_at.elapsed().as_micros() as u64,
        journal_keys: n_keys,
    };
    crash_point("old:after_commit");
    // From here on the successor owns the datapath: whatever happens to this
    // connection, this agent never writes again.
    g.frozen = false;
    g.journaling = false;
    let _ = conn.send(&Msg::Committed { figures }, &[]);
    let _ = conn.recv(Duration::from_secs(1));
    Ok(())
}

fn left(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

/// Offers the listeners and checks a manifest entry per descriptor (used by
/// the agent's `offer`).
pub fn listener_entries(
    listeners: &[(&str, std::os::fd::BorrowedFd<'_>)],
) -> Result<Vec<(super::msg::Entry, OwnedFd)>, String> {
    let mut out = Vec::new();
    for (name, fd) in listeners {
        let e = manifest::listener_entry(name, *fd).map_err(|e| format!("listener {name}: {e}"))?;
        let dup = fd
            .try_clone_to_owned()
            .map_err(|e| format!("dup listener {name}: {e}"))?;
        out.push((e, dup));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records what the session asked of the agent.
    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<&'static str>>,
    }

    impl Fake {
        fn note(&self, c: &'static str) {
            self.calls.lock().unwrap_or_else(|p| p.into_inner()).push(c);
        }
    }

    impl Incumbent for Fake {
        fn offer(&self) -> Result<Vec<(super::super::msg::Entry, OwnedFd)>, String> {
            Ok(Vec::new())
        }
        fn generation(&self) -> u64 {
            1
        }
        fn start_journal(&self) {
            self.note("start_journal");
        }
        fn freeze(&self) -> Vec<(&'static str, Vec<u8>)> {
            self.note("freeze");
            Vec::new()
        }
        fn unfreeze(&self) {
            self.note("unfreeze");
        }
        fn commit(
            &self,
            _: &[(String, OwnedFd, u32)],
            _: &[CommitMap],
            _: &str,
        ) -> Result<(), String> {
            Err("not in this test".into())
        }
        fn retire(&self) {}
        fn pin_dir(&self) -> &std::path::Path {
            std::path::Path::new("/nonexistent")
        }
    }

    #[test]
    fn a_successor_gone_between_prepare_and_freeze_stops_the_journal() {
        let (old, new) = Conn::pair().expect("socket pair");
        let fake = Fake::default();
        let t = Timeouts {
            step: Duration::from_secs(5),
            ..Timeouts::default()
        };
        let wait = Duration::from_secs(5);
        let outcome = std::thread::scope(|s| {
            let h = s.spawn(|| session(&old, &fake, &t));
            let hello = Msg::Hello {
                proto: PROTO,
                agent_version: "test".into(),
                layout_version: 1,
                capabilities: Vec::new(),
            };
            new.send(&hello, &[]).expect("hello");
            let (m, _) = new.recv(wait).expect("welcome");
            assert_eq!(m.kind(), "welcome");
            let (m, _) = new.recv(wait).expect("offer");
            assert_eq!(m.kind(), "offer");
            new.send(&Msg::Ack, &[]).expect("ack");
            new.send(&Msg::Prepare, &[]).expect("prepare");
            let (m, _) = new.recv(wait).expect("prepared");
            assert_eq!(m.kind(), "prepared");
            drop(new);
            h.join().expect("session thread")
        });
        assert!(matches!(outcome, Outcome::Failed(_)), "{outcome:?}");
        let calls = fake.calls.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(calls, ["start_journal", "unfreeze"]);
    }

    /// Runs a session against `hello` (raw bytes) and returns the outcome,
    /// the incumbent's answer and what the agent was asked to do.
    fn answer_to(hello: &[u8]) -> (Outcome, Option<Msg>, Vec<&'static str>) {
        let (old, new) = Conn::pair().expect("socket pair");
        let fake = Fake::default();
        let t = Timeouts {
            step: Duration::from_secs(5),
            ..Timeouts::default()
        };
        let (outcome, answer) = std::thread::scope(|s| {
            let h = s.spawn(|| session(&old, &fake, &t));
            new.send_raw(hello, &[]).expect("hello");
            let answer = new.recv(Duration::from_secs(5)).ok().map(|(m, _)| m);
            drop(new);
            (h.join().expect("session thread"), answer)
        });
        let calls = fake.calls.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (outcome, answer, calls)
    }

    fn hello(proto: u32) -> Vec<u8> {
        serde_json::to_vec(&Msg::Hello {
            proto,
            agent_version: "other".into(),
            layout_version: 2,
            capabilities: Vec::new(),
        })
        .expect("encodes")
    }

    #[test]
    fn a_successor_of_another_protocol_version_is_refused_and_nothing_changes() {
        for proto in [0, MIN_PROTO - 1, PROTO + 1] {
            if versions().contains(&proto) {
                continue;
            }
            let (outcome, answer, calls) = answer_to(&hello(proto));
            assert!(matches!(outcome, Outcome::Failed(_)), "{outcome:?}");
            match answer {
                Some(Msg::Error {
                    code: ErrorCode::VersionMismatch,
                    message,
                }) => assert!(
                    message.contains(&format!("protocol {proto} "))
                        && message.contains(&format!("{MIN_PROTO}..={PROTO}")),
                    "{message}"
                ),
                other => panic!("protocol {proto}: {other:?}"),
            }
            // Nothing journaled or frozen: the agent keeps serving as it was.
            assert!(calls.is_empty(), "{calls:?}");
        }
        for proto in versions() {
            let (_, answer, _) = answer_to(&hello(proto));
            match answer {
                Some(Msg::Welcome { proto: p, .. }) => assert_eq!(p, proto),
                other => panic!("protocol {proto}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_hello_with_a_field_this_build_does_not_know_is_refused() {
        let mut v: serde_json::Value =
            serde_json::from_slice(&hello(PROTO)).expect("hello is JSON");
        v["weights"] = serde_json::json!(true);
        let (outcome, answer, calls) = answer_to(&serde_json::to_vec(&v).expect("encodes"));
        assert!(matches!(outcome, Outcome::Failed(_)), "{outcome:?}");
        match answer {
            Some(Msg::Error {
                code: ErrorCode::Malformed,
                message,
            }) => assert!(message.contains("weights"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(calls.is_empty(), "{calls:?}");
    }

    #[test]
    fn a_peer_answering_each_step_in_time_is_cut_at_the_session_deadline() {
        let (old, new) = Conn::pair().expect("socket pair");
        let fake = Fake::default();
        let t = Timeouts {
            step: Duration::from_millis(300),
            ..Timeouts::default()
        };
        assert_eq!(t.session(), Duration::from_millis(600));
        assert_eq!(t.queue_wait(), Duration::from_millis(900));
        let gap = Duration::from_millis(250);
        let t0 = Instant::now();
        let (outcome, err) = std::thread::scope(|s| {
            let h = s.spawn(|| session(&old, &fake, &t));
            std::thread::sleep(gap);
            let hello = Msg::Hello {
                proto: PROTO,
                agent_version: "slow".into(),
                layout_version: 1,
                capabilities: Vec::new(),
            };
            new.send(&hello, &[]).expect("hello");
            let wait = Duration::from_secs(5);
            assert_eq!(new.recv(wait).expect("welcome").0.kind(), "welcome");
            assert_eq!(new.recv(wait).expect("offer").0.kind(), "offer");
            // Each answer comes within the step; the third is past the
            // session deadline.
            for m in [Msg::Ack, Msg::Prepare] {
                std::thread::sleep(gap);
                let _ = new.send(&m, &[]);
            }
            let mut err = None;
            while let Ok((m, _)) = new.recv(wait) {
                if let Msg::Error { code, message } = m {
                    err = Some((code, message, t0.elapsed()));
                    break;
                }
            }
            (h.join().expect("session thread"), err)
        });
        assert!(matches!(outcome, Outcome::Failed(_)), "{outcome:?}");
        let (code, message, at) = err.expect("an error from the incumbent");
        assert_eq!(code, ErrorCode::Timeout, "{message}");
        assert!(message.contains("session deadline"), "{message}");
        assert!(at < Duration::from_millis(1_000), "cut after {at:?}");
    }
}
