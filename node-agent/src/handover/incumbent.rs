//! The running agent's side: accept a successor, offer everything, journal,
//! freeze, and on `Commit` swap the links and move the pins itself. Being the
//! only one who ever swaps the links while it lives is what makes a timeout
//! safe: once it has given up, a late `Commit` finds nobody to act on it.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::msg::{hex, CommitFigures, CommitMap, ErrorCode, JournalKey, Msg, CAPABILITIES, PROTO};
use super::wire::{Conn, Listener, WireError, MAX_FDS};
use super::{crash_point, manifest};
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
    /// Manifest entries per `Offer` message (≤ 253 descriptors).
    pub part_size: usize,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            step: Duration::from_secs(10),
            freeze: Duration::from_secs(2),
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
/// at a time: the listener's backlog holds others until it ends.
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
    let agent = g.agent;
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
    } = expect_plain(conn, t.step, "hello")?
    else {
        return Err((Some(ErrorCode::Internal), "unreachable".into()));
    };
    if proto != PROTO {
        return Err((
            Some(ErrorCode::VersionMismatch),
            format!("protocol {proto} is not {PROTO}"),
        ));
    }
    tracing::info!(peer_pid = peer.pid, %agent_version, layout_version, "handover: successor says hello");

    let offer = agent.offer().map_err(|e| (Some(ErrorCode::Internal), e))?;
    let part_size = t.part_size.clamp(1, MAX_FDS);
    let parts = offer.len().div_ceil(part_size).max(1) as u32;
    send(
        conn,
        &Msg::Welcome {
            proto: PROTO,
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
        expect_plain(conn, t.step, "ack")?;
    }
    drop(offer);
    crash_point("old:after_offer");

    expect_plain(conn, t.step, "prepare")?;
    agent.start_journal();
    g.journaling = true;
    send(conn, &Msg::Prepared, &[])?;
    crash_point("old:after_prepared");

    expect_plain(conn, t.step, "freeze")?;
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
        expect_plain(conn, left(freeze_deadline), "ack")?;
    }
    crash_point("old:after_frozen");

    let (m, fds) = next(conn, left(freeze_deadline)).map_err(|(c, why)| {
        if c == Some(ErrorCode::Timeout) {
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
}
