//! The new agent's side: take the offer, check every descriptor, load this
//! build against the old maps (migrating what changed, in a staging
//! directory), pre-copy, freeze, replay the journal tail, and ask the old
//! agent to commit.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::crash_point;
use super::manifest::{self, Received};
use super::msg::{
    unhex, versions, CommitFigures, CommitMap, CommitProgram, ErrorCode, Msg, CAPABILITIES,
};
use super::wire::{Conn, WireError};
use crate::datapath::load::{self, Loaded};
use crate::datapath::stage::{self, Stage};
use crate::datapath::{link_pin_path, AttachedLink, DatapathError, MigrationSummary};
use crate::maps::set::map_pin_path;
use crate::maps::{MapSet, Snapshot};
use crate::migrate::{self, Decision, MapLayout};
use crate::model::LatestState;
use crate::programmer::{Changed, Programmer, State};
use crate::rate::{self, HandoverMarks};
use crate::sys::{self, AttachType};
use baton_api::datapath::{DatapathRate, DatapathWindow, OutcomeCounts};

/// Why a takeover did not happen.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// Nobody listens on the socket: start from pins instead.
    #[error("no agent answers on {0}")]
    NoPredecessor(String),
    /// The old agent died before committing: start from pins instead.
    #[error("the old agent went away before committing: {0}")]
    PredecessorGone(String),
    /// The old agent refused or failed; it keeps serving.
    #[error("the old agent refused the handover ({code}): {message}")]
    Refused {
        /// Its error class.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// Another session held the handover socket for longer than this side
    /// waits its turn; nothing was touched, so starting again is safe.
    #[error(
        "the handover socket {socket} is busy: no Welcome within {waited:?} (another \
         handover session holds it); nothing was changed, retry"
    )]
    Busy {
        /// The socket.
        socket: String,
        /// How long this side waited for its turn.
        waited: Duration,
    },
    /// The old agent speaks none of this build's protocol versions; it
    /// keeps serving.
    #[error(
        "no handover protocol version in common with the old agent: this agent speaks \
         {ours}, the old agent refused each (last: {message}); the old agent keeps serving"
    )]
    VersionMismatch {
        /// This build's versions, `min..=max`.
        ours: String,
        /// The old agent's refusal.
        message: String,
    },
    /// Something on this side failed; the old agent keeps serving.
    #[error("{code}: {detail}")]
    Local {
        /// Class (also sent to the old agent).
        code: ErrorCode,
        /// What failed.
        detail: String,
    },
}

impl HandoverError {
    /// Whether starting from the pins is the right fallback.
    pub fn start_from_pins(&self) -> bool {
        matches!(self, Self::NoPredecessor(_) | Self::PredecessorGone(_))
    }
}

/// Where and how the new agent takes over.
#[derive(Clone, Debug)]
pub struct SuccessorConfig {
    /// The handover socket.
    pub socket: PathBuf,
    /// The bpffs pin directory.
    pub pin_dir: PathBuf,
    /// max_entries overrides of this build.
    pub max_entries: BTreeMap<String, u32>,
    /// Longest wait for any message.
    pub step_timeout: Duration,
    /// Longest wait for the `Welcome`: this side's `Hello` waits in the
    /// listen backlog while another session holds the socket
    /// (`Timeouts::queue_wait`).
    pub queue_wait: Duration,
    /// The source's latest state, if it has one yet: the view is matched
    /// against it before the commit.
    pub latest: Option<LatestState>,
}

/// How the agent got its datapath.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// A committed handover from a running agent.
    #[default]
    Handover,
    /// No agent answered: recovered from the pins (or created fresh).
    Pins,
}

/// Timings and counts of a takeover, as reported to the operator.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Figures {
    /// `Prepare` sent (programs loaded, maps planned) → `Committed`, microseconds.
    pub handover_us: u64,
    /// The old agent's freeze, as it measured it, microseconds.
    pub freeze_us: u64,
    /// Pre-copy of migrated maps, microseconds.
    pub precopy_us: u64,
    /// Journal keys replayed under the freeze.
    pub journal_keys: u64,
    /// Maps per outcome and entries copied.
    pub maps: MigrationSummary,
    /// The old agent died after `Commit` and this side finished the swap.
    pub self_committed: bool,
    /// The old agent's version.
    pub from_version: String,
    /// The old agent's layout version.
    pub from_layout: u32,
    /// Handover or recovery from the pins (then `from_*` are empty, and
    /// `handover_us` is the whole start: plan, load, copy, link swap).
    pub via: Via,
    /// The datapath counters read across the handover (`None` from the pins,
    /// or when they could not be read).
    #[serde(skip)]
    pub marks: Option<HandoverMarks>,
    /// What the datapath saw from `Hello` to the latest report (the pod
    /// report's and `status.handover`'s `datapath`).
    #[serde(skip)]
    pub window: Option<DatapathWindow>,
}

/// The successor's view of the maps, read and adopted while the old agent
/// still served, and the keys it wrote since (its journal).
#[derive(Debug, Default)]
pub struct View {
    /// The four lookup maps as read during the pre-copy.
    pub snapshot: Snapshot,
    /// The programmer, its view adopted from `snapshot` and matched against
    /// the source's latest state (before the commit: adopting 220 000
    /// entries and comparing 10 000 services cost tens of milliseconds each).
    pub programmer: Programmer,
    /// (map, key in this build's layout) written by the old agent since `Prepare`.
    pub stale_keys: Vec<(String, Vec<u8>)>,
}

/// How [`View::settle`] made the view exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// No key was written after the read.
    Unchanged,
    /// The services the written keys touch were rebuilt.
    Patched,
    /// A case the patch does not cover: adopted in full.
    Adopted,
}

impl View {
    /// Re-reads the stale keys from `maps` (the maps this agent owns after
    /// the commit, before it writes) and brings the view to them: the
    /// result equals the maps.
    pub fn settle(mut self, maps: &MapSet) -> Result<(Programmer, Settled), crate::maps::MapError> {
        if self.stale_keys.is_empty() {
            return Ok((self.programmer, Settled::Unchanged));
        }
        let mut changed = Changed::default();
        for (map, key) in &self.stale_keys {
            self.snapshot.refresh(maps, map, key)?;
            changed.record(map, key);
        }
        if self.programmer.patch(&self.snapshot, &changed) {
            Ok((self.programmer, Settled::Patched))
        } else {
            let state = State::adopt(&self.snapshot);
            Ok((Programmer::from_state(state), Settled::Adopted))
        }
    }
}

/// What the new agent holds after a committed handover.
pub struct Takeover {
    /// Loaded programs (keep alive).
    pub loaded: Loaded,
    /// The maps the links now use.
    pub maps: MapSet,
    /// Their contents, read during the pre-copy; exact once
    /// [`View::settle`]d.
    pub view: View,
    /// The links (inherited, pinned).
    pub links: Vec<AttachedLink>,
    /// Inherited listening sockets by name.
    pub listeners: BTreeMap<String, OwnedFd>,
    /// The old agent's generation.
    pub generation: u64,
    /// Figures.
    pub figures: Figures,
}

type R<T> = Result<T, HandoverError>;

fn local(code: ErrorCode) -> impl Fn(String) -> HandoverError {
    move |detail| HandoverError::Local { code, detail }
}

/// Maps wire failures while the old agent must still be alive.
fn wire(e: WireError, peer_pid: i32) -> HandoverError {
    match e {
        WireError::Closed if !alive(peer_pid) => HandoverError::PredecessorGone(e.to_string()),
        WireError::Closed => HandoverError::Refused {
            code: ErrorCode::Internal,
            message: "closed the connection".into(),
        },
        WireError::Bad { code, detail } => HandoverError::Local { code, detail },
        other => HandoverError::Local {
            code: ErrorCode::Timeout,
            detail: other.to_string(),
        },
    }
}

/// Whether the peer still runs. EOF arrives while a killed process is still
/// exiting, so give it a moment; a zombie (not yet reaped) counts as gone.
pub(crate) fn alive(pid: i32) -> bool {
    if pid <= 0 {
        // The peer is in another pid namespace (SO_PEERCRED says 0): we cannot
        // tell, so never conclude it died (no self-commit, no recovery).
        return true;
    }
    let until = Instant::now() + Duration::from_millis(500);
    while stage::process_running(pid) {
        if Instant::now() >= until {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

struct Session {
    conn: Conn,
    peer_pid: i32,
    step: Duration,
    /// Longest wait for the first answer (`Welcome`).
    queue_wait: Duration,
    /// The incumbent answered our `Hello`: this side has its turn.
    welcomed: std::cell::Cell<bool>,
    /// The socket path, for the busy message.
    socket: String,
}

impl Session {
    fn send(&self, m: &Msg, fds: &[std::os::fd::BorrowedFd<'_>]) -> R<()> {
        self.conn.send(m, fds).map_err(|e| wire(e, self.peer_pid))
    }

    /// Next message; an `Error` from the old agent becomes `Refused`.
    fn recv(&self, want: &'static str) -> R<(Msg, Vec<OwnedFd>)> {
        // Until the Welcome, our Hello may sit in the listen backlog behind
        // another session: wait our turn, not just one step.
        let wait = if self.welcomed.get() {
            self.step
        } else {
            self.queue_wait
        };
        let (m, fds) = self.conn.recv(wait).map_err(|e| match e {
            WireError::Timeout(waited) if !self.welcomed.get() => HandoverError::Busy {
                socket: self.socket.clone(),
                waited,
            },
            e => wire(e, self.peer_pid),
        })?;
        self.welcomed.set(true);
        if let Msg::Error { code, message } = m {
            return Err(HandoverError::Refused { code, message });
        }
        if m.kind() != want {
            return Err(HandoverError::Local {
                code: ErrorCode::UnexpectedMessage,
                detail: format!("expected {want}, got {}", m.kind()),
            });
        }
        Ok((m, fds))
    }

    fn recv_plain(&self, want: &'static str) -> R<Msg> {
        let (m, fds) = self.recv(want)?;
        if !fds.is_empty() {
            return Err(HandoverError::Local {
                code: ErrorCode::UnexpectedFds,
                detail: format!("{} descriptors on {want}", fds.len()),
            });
        }
        Ok(m)
    }

    /// Tells the old agent we give up (it unfreezes) and waits for its ack.
    fn abort(&self, e: &HandoverError) {
        if let HandoverError::Local { code, detail } = e {
            let _ = self.conn.send(
                &Msg::Abort {
                    reason: format!("{code}: {detail}"),
                },
                &[],
            );
            let _ = self.conn.recv(Duration::from_secs(2));
        }
    }
}

/// Connects to the old agent; `NoPredecessor` when nobody listens.
pub fn connect(socket: &Path) -> R<Conn> {
    match Conn::connect(socket) {
        Ok(c) => Ok(c),
        Err(WireError::Sys {
            errno: nix::errno::Errno::ENOENT | nix::errno::Errno::ECONNREFUSED,
            ..
        }) => Err(HandoverError::NoPredecessor(socket.display().to_string())),
        Err(e) => Err(HandoverError::Local {
            code: ErrorCode::Internal,
            detail: e.to_string(),
        }),
    }
}

/// Longest wait for the incumbent's `status` before `Hello`: the rate
/// before the handover is worth a little, not a slower handover.
pub const BEFORE_WAIT: Duration = Duration::from_millis(200);

/// The incumbent's datapath rate from its admin socket (next to the
/// handover socket, in the run directory), `None` when it does not answer
/// within [`BEFORE_WAIT`] or does not say (an older agent).
fn rate_before(cfg: &SuccessorConfig) -> Option<DatapathRate> {
    let admin = cfg.socket.with_file_name(baton_api::admin::SOCKET_FILE);
    let t0 = Instant::now();
    let v = match crate::admin::client::request_within(
        &admin,
        crate::admin::Request::Status,
        BEFORE_WAIT,
    ) {
        Ok(v) => v,
        Err(e) => {
            tracing::info!(error = %e, "handover: no datapath rate from the old agent");
            return None;
        }
    };
    // Only this field: the old agent may be of another version.
    let rate = v
        .get("datapath")
        .and_then(|d| serde_json::from_value::<DatapathRate>(d.clone()).ok());
    tracing::debug!(
        ?rate,
        took_us = t0.elapsed().as_micros() as u64,
        "handover: rate before"
    );
    rate
}

/// The incumbent's counters now, from its pinned `counters` map.
fn pinned_counters(pin_dir: &Path) -> Option<OutcomeCounts> {
    let fd = sys::obj_get(&map_pin_path(pin_dir, "counters")).ok()?;
    rate::read_fd(fd.as_fd(), sys::possible_cpus()).ok()
}

/// Takes over from the agent listening on `cfg.socket`.
pub fn take_over(cfg: &SuccessorConfig) -> R<Takeover> {
    let before = rate_before(cfg);
    // Read right before `Hello`: the handover window starts here.
    let hello = (Instant::now(), pinned_counters(&cfg.pin_dir));
    let (s, welcome) = greet(cfg, versions())?;
    let mut stage = None;
    let res = run(&s, welcome, cfg, &mut stage, (before, hello));
    if let Err(e) = &res {
        s.abort(e);
        if let Some(st) = stage {
            Stage::remove(st);
        }
    }
    res
}

/// Opens a session with the agent on `cfg.socket`.
fn open(cfg: &SuccessorConfig) -> R<Session> {
    let conn = connect(&cfg.socket)?;
    let peer = conn.peer().map_err(|e| HandoverError::Local {
        code: ErrorCode::Internal,
        detail: e.to_string(),
    })?;
    Ok(Session {
        conn,
        peer_pid: peer.pid,
        step: cfg.step_timeout,
        queue_wait: cfg.queue_wait.max(cfg.step_timeout),
        welcomed: std::cell::Cell::new(false),
        socket: cfg.socket.display().to_string(),
    })
}

/// What the old agent's `Welcome` said.
#[derive(Debug)]
struct Welcome {
    /// The session's protocol version.
    proto: u32,
    agent_version: String,
    layout_version: u32,
    generation: u64,
    parts: u32,
}

/// Says `Hello` with the newest of `versions` and, while the old agent
/// refuses it as a version mismatch, again with the next older one on a
/// fresh connection: an older agent knows only its own versions. Nothing is
/// touched before a `Welcome`, so asking again is safe.
fn greet(cfg: &SuccessorConfig, versions: RangeInclusive<u32>) -> R<(Session, Welcome)> {
    let mut proto = *versions.end();
    loop {
        let s = open(cfg)?;
        match hello(&s, proto) {
            Ok(w) => return Ok((s, w)),
            Err(HandoverError::Refused {
                code: ErrorCode::VersionMismatch,
                message,
            }) => {
                if proto <= *versions.start() {
                    return Err(HandoverError::VersionMismatch {
                        ours: format!("{}..={}", versions.start(), versions.end()),
                        message,
                    });
                }
                tracing::info!(proto, reason = %message,
                    "handover: the old agent does not speak this protocol version; asking with the previous one");
                proto -= 1;
            }
            Err(e) => {
                s.abort(&e);
                return Err(e);
            }
        }
    }
}

/// One `Hello` → `Welcome` exchange at `proto`.
fn hello(s: &Session, proto: u32) -> R<Welcome> {
    s.send(
        &Msg::Hello {
            proto,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            layout_version: baton_ebpf::LAYOUT_VERSION,
            capabilities: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
        },
        &[],
    )?;
    let Msg::Welcome {
        proto: answered,
        agent_version,
        layout_version,
        generation,
        parts,
        ..
    } = s.recv_plain("welcome")?
    else {
        return Err(local(ErrorCode::Internal)("unreachable".into()));
    };
    if answered != proto {
        return Err(local(ErrorCode::VersionMismatch)(format!(
            "asked for protocol {proto}, the old agent welcomed protocol {answered}"
        )));
    }
    Ok(Welcome {
        proto,
        agent_version,
        layout_version,
        generation,
        parts,
    })
}

/// The rate before and (`Hello` sent, the incumbent's counters then).
type Before = (Option<DatapathRate>, (Instant, Option<OutcomeCounts>));

fn run(
    s: &Session,
    welcome: Welcome,
    cfg: &SuccessorConfig,
    stage_out: &mut Option<Stage>,
    (before, (hello_at, old_at_hello)): Before,
) -> R<Takeover> {
    let Welcome {
        proto,
        agent_version,
        layout_version,
        generation,
        parts,
    } = welcome;
    tracing::info!(proto, from = %agent_version, from_layout = layout_version, "handover: welcomed");
    crash_point("new:after_welcome");

    let mut entries = Vec::new();
    let mut fds = Vec::new();
    for want in 0..parts {
        let (m, mut f) = s.recv("offer")?;
        let Msg::Offer {
            part,
            parts: total,
            entries: mut e,
        } = m
        else {
            return Err(local(ErrorCode::Internal)("unreachable".into()));
        };
        if part != want || total != parts {
            return Err(local(ErrorCode::Malformed)(format!(
                "offer part {part}/{total}, expected {want}/{parts}"
            )));
        }
        entries.append(&mut e);
        fds.append(&mut f);
        s.send(&Msg::Ack, &[])?;
    }
    let received =
        manifest::verify(entries, fds).map_err(|e| local(ErrorCode::BadFd)(e.to_string()))?;
    crash_point("new:after_offer");
    let cpus = sys::possible_cpus();
    let old_counters = received.maps.get("counters").map(|m| &m.fd);
    // No pin to read at Hello (pinned elsewhere?): the offered map, a few
    // milliseconds later, is the next best start.
    let old_at_hello =
        old_at_hello.or_else(|| old_counters.and_then(|fd| rate::read_fd(fd.as_fd(), cpus).ok()));

    // Plan every map of this build against what the old agent holds.
    let build = MapLayout::of_build(&cfg.max_entries)
        .map_err(|e| local(ErrorCode::Migration)(e.to_string()))?;
    let mut decisions: Vec<(String, Decision)> = Vec::new();
    for want in &build {
        let old = received.maps.get(&want.name).ok_or_else(|| {
            local(ErrorCode::BadFd)(format!("the offer has no map {}", want.name))
        })?;
        let d = migrate::decide_live(old.fd.as_fd(), &old.layout, want)
            .map_err(|e| local(ErrorCode::Migration)(e.to_string()))?;
        decisions.push((want.name.clone(), d));
    }

    // Load this build against the staged maps: the verifier runs now, while
    // the old agent serves undisturbed.
    // Staging pins of an earlier successor that died are dead weight.
    stage::clean_stale(&cfg.pin_dir);
    let stage =
        Stage::create(&cfg.pin_dir).map_err(|e| local(ErrorCode::Internal)(e.to_string()))?;
    for (name, d) in &decisions {
        if matches!(d, Decision::Reuse) {
            if let Some(m) = received.maps.get(name) {
                stage
                    .pin(name, m.fd.as_fd())
                    .map_err(|e| local(ErrorCode::Internal)(e.to_string()))?;
            }
        }
    }
    let stage_dir = stage.dir.clone();
    let stage_name = stage.name.clone();
    *stage_out = Some(stage);
    let loaded = load::load(&stage_dir, &cfg.max_entries).map_err(|e| match e {
        DatapathError::Load(m) => local(ErrorCode::Load)(m),
        other => local(ErrorCode::Internal)(other.to_string()),
    })?;
    let maps =
        MapSet::open_pinned(&stage_dir).map_err(|e| local(ErrorCode::Internal)(e.to_string()))?;
    let mut summary = MigrationSummary::of(decisions.iter().map(|(n, d)| (n.as_str(), Some(d))));

    // When every lookup map is reused (no layout change), their contents
    // are already here: adopt and match them before `Prepare`, so that
    // between `Prepare` and `Freeze` (while the old agent must sync to keep
    // the control plane moving) only a second read and a patch remain.
    let lookup = ["frontend", "service", "endpoint", "backend"];
    let all_reused = decisions
        .iter()
        .filter(|(n, _)| lookup.contains(&n.as_str()))
        .all(|(_, d)| matches!(d, Decision::Reuse));
    let latest = || {
        cfg.latest
            .as_ref()
            .and_then(|l| l.lock().ok().and_then(|g| g.clone()))
    };
    let early = if all_reused {
        let t = Instant::now();
        let snap = maps
            .snapshot()
            .map_err(|e| local(ErrorCode::Internal)(format!("reading the maps: {e}")))?;
        let mut p = Programmer::from_state(State::adopt(&snap));
        let matched = latest().map(|d| p.prematch(&d));
        tracing::info!(
            entries = snap.len(),
            ?matched,
            us = t.elapsed().as_micros() as u64,
            "handover: maps adopted before Prepare"
        );
        Some((snap, p))
    } else {
        None
    };

    let ready = Instant::now();
    s.send(&Msg::Prepare, &[])?;
    s.recv_plain("prepared")?;
    crash_point("new:after_prepared");

    let t0 = Instant::now();
    for (name, d) in &decisions {
        if let Decision::Migrate(conv) = d {
            let (old, new) = pair(&received, &maps, name)?;
            let st = migrate::copy_all(old, new, conv)
                .map_err(|e| local(ErrorCode::Migration)(e.to_string()))?;
            summary.entries_copied += st.entries;
        }
    }
    let precopy_us = t0.elapsed().as_micros() as u64;
    // This agent's view of the maps, read now, while the old agent serves:
    // the migrated maps are complete but for the journal tail, and every
    // key the old agent writes from here on (to any map) is in its journal
    // and refreshed below, so after the commit the view equals the maps
    // without reading them again (docs/handover.md, "The successor's view").
    let t_view = Instant::now();
    let view = maps
        .snapshot()
        .map_err(|e| local(ErrorCode::Internal)(format!("reading the maps: {e}")))?;
    let view_read_us = t_view.elapsed().as_micros() as u64;
    let t_adopt = Instant::now();
    // The early view differs from this read only where the old agent wrote
    // in between: patch it (a full adoption if the patch declines).
    let early = early.and_then(|(snap, mut p)| {
        p.patch(&view, &crate::programmer::state::diff(&snap, &view))
            .then_some(p)
    });
    let patched_early = early.is_some();
    let (mut programmer, fresh) = match early {
        Some(p) => (p, false),
        None => (Programmer::from_state(State::adopt(&view)), true),
    };
    let view_adopt_us = t_adopt.elapsed().as_micros() as u64;
    let t_match = Instant::now();
    let matched = if fresh {
        latest().map(|d| programmer.prematch(&d))
    } else {
        None
    };
    let view_match_us = t_match.elapsed().as_micros() as u64;
    crash_point("new:after_precopy");

    s.send(&Msg::Freeze, &[])?;
    let mut journal: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    let mut want = 0;
    loop {
        let Msg::Frozen { part, parts, keys } = s.recv_plain("frozen")? else {
            return Err(local(ErrorCode::Internal)("unreachable".into()));
        };
        if part != want {
            return Err(local(ErrorCode::Malformed)(format!(
                "frozen part {part}, expected {want}"
            )));
        }
        for k in keys {
            let bytes = unhex(&k.key)
                .ok_or_else(|| local(ErrorCode::Malformed)(format!("journal key {:?}", k.key)))?;
            journal.entry(k.map).or_default().push(bytes);
        }
        s.send(&Msg::Ack, &[])?;
        want += 1;
        if want >= parts {
            break;
        }
    }
    crash_point("new:after_frozen");
    let journal_keys: u64 = journal.values().map(|v| v.len() as u64).sum();
    let mut replay_us = 0u64;
    for (name, d) in &decisions {
        if let Decision::Migrate(conv) = d {
            if let Some(keys) = journal.get(name) {
                let (old, new) = pair(&received, &maps, name)?;
                let st = migrate::replay(old, new, conv, keys)
                    .map_err(|e| local(ErrorCode::Migration)(e.to_string()))?;
                summary.entries_copied += st.entries;
                replay_us += st.duration.as_micros() as u64;
            }
        }
    }
    // Copy time as recovery from pins reports it: pre-copy plus replay.
    summary.copy_us = precopy_us + replay_us;

    let programs: Vec<(AttachType, CommitProgram, std::os::fd::BorrowedFd<'_>)> = loaded
        .progs
        .iter()
        .map(|(a, fd)| {
            let id = sys::prog_info(fd.as_fd()).map(|i| i.id).unwrap_or(0);
            (
                *a,
                CommitProgram {
                    attach: attach_name(*a).into(),
                    id,
                },
                fd.as_fd(),
            )
        })
        .collect();
    let commit_maps: Vec<CommitMap> = summary
        .replaced
        .iter()
        .filter_map(|n| {
            maps.by_name(n).map(|h| CommitMap {
                name: n.clone(),
                id: h.info().id,
            })
        })
        .collect();
    let prog_fds: Vec<_> = programs.iter().map(|(_, _, fd)| *fd).collect();
    // A new counters map (migrated): no program counts into it before the
    // links swap, so this is its start (see `rate::HandoverMarks`).
    let counters_replaced = decisions
        .iter()
        .any(|(n, d)| n == "counters" && !matches!(d, Decision::Reuse));
    let new_at_commit = if counters_replaced {
        rate::read(&maps).ok()
    } else {
        None
    };
    s.send(
        &Msg::Commit {
            programs: programs.iter().map(|(_, p, _)| p.clone()).collect(),
            maps: commit_maps.clone(),
            staging: stage_name.clone(),
        },
        &prog_fds,
    )?;
    crash_point("new:after_commit_sent");

    let (figures_old, self_committed) = match s.conn.recv(s.step) {
        Ok((Msg::Committed { figures }, _)) => {
            let _ = s.conn.send(&Msg::Ack, &[]);
            (figures, false)
        }
        Ok((Msg::Error { code, message }, _)) => {
            return Err(HandoverError::Refused { code, message })
        }
        Ok((m, _)) => {
            return Err(local(ErrorCode::UnexpectedMessage)(format!(
                "expected committed, got {}",
                m.kind()
            )))
        }
        Err(_) if !alive(s.peer_pid) => {
            // The old agent died after our Commit. It was frozen (we hold its
            // journal), so our maps are complete: finish the swap ourselves.
            tracing::warn!("old agent died during commit; finishing the swap");
            finish_commit(&received, &loaded, &cfg.pin_dir, &stage_name, &commit_maps)?;
            (CommitFigures::default(), true)
        }
        Err(e) => return Err(wire(e, s.peer_pid)),
    };
    crash_point("new:after_committed");
    let handover_us = ready.elapsed().as_micros() as u64;
    let committed_at = Instant::now();
    // The old programs are off the links: the old map's part is final.
    let old_at_commit = old_counters.and_then(|fd| rate::read_fd(fd.as_fd(), cpus).ok());
    let marks = match (old_at_hello, old_at_commit) {
        (Some(old_at_hello), Some(old_at_commit))
            if new_at_commit.is_some() || !counters_replaced =>
        {
            Some(HandoverMarks {
                before,
                hello_at,
                old_at_hello,
                old_at_commit,
                new_at_commit,
                committed_at,
            })
        }
        _ => {
            tracing::warn!("handover: the datapath counters could not be read; no window");
            None
        }
    };

    // The keys the old agent wrote since `Prepare`, in this build's layout:
    // their final values are in the maps this build now owns (reused: the
    // same objects; migrated: just replayed), and nobody has written since
    // the freeze, so re-reading them makes the view exact. Done after the
    // commit, not under the freeze.
    let mut stale_keys = Vec::new();
    for (name, keys) in &journal {
        let conv = match decisions.iter().find(|(n, _)| n == name).map(|(_, d)| d) {
            Some(Decision::Reuse) => None,
            Some(Decision::Migrate(conv)) => Some(conv),
            // Recreated maps were not copied (and are not lookup maps).
            _ => continue,
        };
        for key in keys {
            match conv {
                None => stale_keys.push((name.clone(), key.clone())),
                Some(conv) => {
                    let mut nk = vec![0u8; conv.new_key_len()];
                    // A key that does not convert was never copied either.
                    if conv.convert_key(key, &mut nk).is_ok() {
                        stale_keys.push((name.clone(), nk));
                    }
                }
            }
        }
    }
    tracing::info!(
        entries = view.len(),
        read_us = view_read_us,
        adopt_us = view_adopt_us,
        patched_early,
        matched,
        match_us = view_match_us,
        stale_keys = stale_keys.len(),
        "handover: view of the maps read and adopted during the pre-copy"
    );

    // The staged pins of reused maps are duplicates of the live ones now.
    if let Some(st) = stage_out.take() {
        st.remove();
    }
    let Received {
        links, listeners, ..
    } = received;
    let links = links
        .into_iter()
        .filter_map(|(name, l)| {
            let attach = attach_of(&name)?;
            Some(AttachedLink {
                attach,
                fd: l.fd,
                pin: link_pin_path(&cfg.pin_dir, attach),
            })
        })
        .collect();
    Ok(Takeover {
        loaded,
        maps,
        view: View {
            snapshot: view,
            programmer,
            stale_keys,
        },
        links,
        listeners,
        generation,
        figures: Figures {
            handover_us,
            freeze_us: figures_old.freeze_us,
            precopy_us,
            journal_keys,
            maps: summary,
            self_committed,
            from_version: agent_version,
            from_layout: layout_version,
            via: Via::Handover,
            marks,
            window: None,
        },
    })
}

fn pair<'a>(
    received: &'a Received,
    maps: &'a MapSet,
    name: &str,
) -> R<(std::os::fd::BorrowedFd<'a>, std::os::fd::BorrowedFd<'a>)> {
    let old = received
        .maps
        .get(name)
        .ok_or_else(|| local(ErrorCode::Internal)(format!("old map {name} missing")))?;
    let new = maps
        .by_name(name)
        .ok_or_else(|| local(ErrorCode::Internal)(format!("new map {name} missing")))?;
    Ok((old.fd.as_fd(), new.fd()))
}

/// Completes a commit the old agent could not finish (it died): links to
/// our programs (skipping those already swapped), staged pins promoted.
fn finish_commit(
    received: &Received,
    loaded: &Loaded,
    pin_dir: &Path,
    stage_name: &str,
    maps: &[CommitMap],
) -> R<()> {
    for (attach, prog) in &loaded.progs {
        let Some(link) = received.links.get(attach_name(*attach)) else {
            continue;
        };
        let ours = sys::prog_info(prog.as_fd()).map(|i| i.id).unwrap_or(0);
        let now = sys::link_info(link.fd.as_fd())
            .map(|i| i.prog_id)
            .unwrap_or(0);
        if now != ours {
            sys::link_update(link.fd.as_fd(), prog.as_fd(), None)
                .map_err(|e| local(ErrorCode::Internal)(format!("link update: {e}")))?;
        }
    }
    for m in maps {
        let live = crate::maps::set::map_pin_path(pin_dir, &m.name);
        let live_id = sys::obj_get(&live)
            .ok()
            .and_then(|fd| sys::map_info(fd.as_fd()).ok())
            .map(|i| i.id);
        if live_id != Some(m.id) {
            stage::promote(pin_dir, stage_name, &m.name, m.id)
                .map_err(|e| local(ErrorCode::Internal)(e.to_string()))?;
        }
    }
    Ok(())
}

/// Wire name of an attach point.
pub fn attach_name(a: AttachType) -> &'static str {
    match a {
        AttachType::Connect4 => "connect4",
        AttachType::Connect6 => "connect6",
    }
}

/// Attach point of a wire name.
pub fn attach_of(name: &str) -> Option<AttachType> {
    match name {
        "connect4" => Some(AttachType::Connect4),
        "connect6" => Some(AttachType::Connect6),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handover::wire::Listener;

    const WAIT: Duration = Duration::from_secs(5);

    fn config(socket: &Path) -> SuccessorConfig {
        SuccessorConfig {
            socket: socket.to_owned(),
            pin_dir: PathBuf::from("/nonexistent"),
            max_entries: BTreeMap::new(),
            step_timeout: WAIT,
            queue_wait: WAIT,
            latest: None,
        }
    }

    /// An incumbent that speaks only `speaks`, as one released before
    /// negotiation would: each connection's `Hello` is refused as a version
    /// mismatch or welcomed, and what the successor said is returned.
    fn incumbent(
        listener: Listener,
        speaks: u32,
        welcome_as: Option<u32>,
    ) -> std::thread::JoinHandle<Vec<Msg>> {
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            // A successor that gives up does not connect again: wait for
            // it only briefly after the first connection.
            let mut wait = WAIT;
            while let Ok(Some(c)) = listener.accept(wait) {
                wait = Duration::from_millis(300);
                let Ok((hello, _)) = c.recv(WAIT) else { break };
                let Msg::Hello { proto, .. } = hello else {
                    break;
                };
                seen.push(hello);
                if proto != speaks {
                    c.send_error(
                        ErrorCode::VersionMismatch,
                        format!("protocol {proto} is not {speaks}"),
                    );
                    continue;
                }
                let _ = c.send(
                    &Msg::Welcome {
                        proto: welcome_as.unwrap_or(proto),
                        agent_version: "old".into(),
                        layout_version: 1,
                        capabilities: Vec::new(),
                        generation: 1,
                        parts: 1,
                    },
                    &[],
                );
                // Whatever comes next (an abort) ends the exchange.
                if let Ok((m, _)) = c.recv(WAIT) {
                    seen.push(m);
                }
                break;
            }
            seen
        })
    }

    fn protos(seen: &[Msg]) -> Vec<u32> {
        seen.iter()
            .filter_map(|m| match m {
                Msg::Hello { proto, .. } => Some(*proto),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_successor_asks_an_older_incumbent_again_with_the_previous_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("handover.sock");
        let old = incumbent(Listener::bind(&socket).expect("bind"), 1, None);
        // A build speaking 1..=2 against one that knows only 1.
        let (s, welcome) = greet(&config(&socket), 1..=2).expect("welcomed");
        assert_eq!(welcome.proto, 1);
        drop(s);
        assert_eq!(protos(&old.join().expect("incumbent")), [2, 1]);
    }

    #[test]
    fn no_version_in_common_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("handover.sock");
        let old = incumbent(Listener::bind(&socket).expect("bind"), 3, None);
        let err = greet(&config(&socket), 1..=2)
            .map(|_| ())
            .expect_err("no common version");
        let text = err.to_string();
        assert!(
            matches!(err, HandoverError::VersionMismatch { .. }),
            "{err:?}"
        );
        assert!(
            text.contains("1..=2") && text.contains("protocol 1 is not 3"),
            "{text}"
        );
        assert!(!err.start_from_pins(), "the old agent keeps the datapath");
        assert_eq!(protos(&old.join().expect("incumbent")), [2, 1]);
    }

    #[test]
    fn a_welcome_at_another_version_than_asked_is_aborted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("handover.sock");
        let old = incumbent(Listener::bind(&socket).expect("bind"), 1, Some(7));
        let err = greet(&config(&socket), 1..=1)
            .map(|_| ())
            .expect_err("refused");
        assert!(
            matches!(
                err,
                HandoverError::Local {
                    code: ErrorCode::VersionMismatch,
                    ..
                }
            ),
            "{err:?}"
        );
        let seen = old.join().expect("incumbent");
        assert!(
            matches!(seen.last(), Some(Msg::Abort { .. })),
            "the old agent is told to keep serving: {seen:?}"
        );
    }
}
