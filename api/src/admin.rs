//! The agent's admin socket, `<run dir>/admin.sock`: one JSON [`Request`] per
//! line, one JSON answer per line. The answers are [`Status`], [`Dump`] and
//! [`Verify`], or an [`ErrorAnswer`]; read one with [`Answer`]. When no agent
//! answers, `baton-agent status|verify` answer from the pinned maps instead,
//! marked [`FromPins`] ([`PinStatus`], [`Verify`]).
//!
//! Readers that must survive an agent of another version (the CLI prints
//! what it got) keep the raw JSON; the types are for everyone else.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// File name of the admin socket in the agent's run directory.
pub const SOCKET_FILE: &str = "admin.sock";
/// Longest request line the agent accepts; anything longer is refused.
pub const MAX_REQUEST: usize = 4096;
/// Value of [`FromPins::answered_by`].
pub const ANSWERED_BY_PINS: &str = "pins";

/// A request on the admin socket.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Agent status and the last sync ([`Status`]).
    Status,
    /// The programmed services ([`Dump`]).
    Dump,
    /// Invariants of the maps and agreement with the agent's view ([`Verify`]).
    Verify,
}

/// The answer to a request that failed: `{"error": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorAnswer {
    /// What went wrong.
    pub error: String,
}

/// An answer as a client reads it: the error, or the requested `T`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Answer<T> {
    /// `{"error": ...}`: tried first, since no answer type has an `error` key.
    Error(ErrorAnswer),
    /// The requested answer.
    Ok(T),
}

impl<T> Answer<T> {
    /// The answer, or the agent's error text.
    pub fn into_result(self) -> Result<T, String> {
        match self {
            Answer::Ok(t) => Ok(t),
            Answer::Error(e) => Err(e.error),
        }
    }
}

/// What the agent's server writes for one request.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Response {
    /// The answer to [`Request::Status`].
    Status(Box<Status>),
    /// The answer to [`Request::Dump`].
    Dump(Dump),
    /// The answer to [`Request::Verify`].
    Verify(Verify),
    /// A failed request.
    Error(ErrorAnswer),
}

impl Response {
    /// The error answer with `error`.
    pub fn error(error: impl Into<String>) -> Self {
        Response::Error(ErrorAnswer {
            error: error.into(),
        })
    }
}

/// The answer to [`Request::Status`] from a running agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The agent's crate version.
    pub version: String,
    /// Map layout of this agent's build.
    pub layout_version: u32,
    /// Generation recorded in the meta map.
    pub generation: u64,
    /// The agent's process id.
    pub pid: u32,
    /// Seconds since the agent started.
    pub uptime_seconds: f64,
    /// The bpffs pin directory.
    pub pin_dir: String,
    /// The maps existed already (restart from pins or handover) and were adopted.
    pub adopted_maps: bool,
    /// What happened to each map at start.
    pub maps: MapsSummary,
    /// How the agent got its datapath, if by a takeover (handover or pins).
    pub handover: Option<Takeover>,
    /// Where the services come from.
    pub source: String,
    /// A handover froze the control plane: syncs wait.
    pub frozen: bool,
    /// Services programmed.
    pub services: u64,
    /// Endpoint slots programmed.
    pub endpoints: u64,
    /// Backends programmed.
    pub backends: u64,
    /// Why the source's last contents were rejected, if they were.
    pub source_error: Option<String>,
    /// What the last sync did; `None` before the first.
    pub last_sync: Option<SyncSummary>,
    /// Syncs so far.
    pub syncs: u64,
    /// The handover protocol versions this agent speaks, as incumbent and
    /// as successor (docs/handover.md, "Compatibility"). Absent in the
    /// answers of agents built before it was added, all of which speak
    /// protocol 1 only ([`ProtocolRange::BEFORE_REPORTED`]).
    #[serde(default)]
    pub handover_protocol: Option<ProtocolRange>,
    /// The datapath's outcome counters over the agent's last seconds (a
    /// successor reports them as the rate before its handover). Absent from
    /// agents built before it was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath: Option<crate::datapath::DatapathRate>,
}

/// The handover protocol versions an agent speaks: `min..=max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolRange {
    /// Oldest version spoken.
    pub min: u32,
    /// Newest version spoken (proposed first in a `Hello`).
    pub max: u32,
}

impl ProtocolRange {
    /// What an agent whose `status` does not say speaks: protocol 1 only
    /// (every agent released before [`Status::handover_protocol`] existed).
    pub const BEFORE_REPORTED: ProtocolRange = ProtocolRange { min: 1, max: 1 };

    /// The version a handover between a successor speaking `self` and an
    /// incumbent speaking `other` runs at: the newest both speak (the
    /// successor proposes its newest and steps down on a refusal), `None`
    /// when they share none.
    pub fn common(self, other: ProtocolRange) -> Option<u32> {
        let top = self.max.min(other.max);
        (top >= self.min.max(other.min)).then_some(top)
    }
}

impl std::fmt::Display for ProtocolRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..={}", self.min, self.max)
    }
}

/// What happened to the maps when the datapath started or was handed over.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapsSummary {
    /// Maps whose descriptor was reused as is.
    pub reused: u64,
    /// Maps converted into a new map.
    pub migrated: u64,
    /// Maps started empty by policy.
    pub recreated: u64,
    /// Maps created because none existed.
    pub created: u64,
    /// Entries copied into migrated maps (pre-copy plus journal replay).
    pub entries_copied: u64,
    /// Time spent copying, microseconds.
    pub copy_us: u64,
}

/// How a takeover came about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// A committed handover from a running agent.
    Handover,
    /// No agent answered: recovered from the pins (or created fresh).
    Pins,
}

/// Timings and counts of the takeover that gave the agent its datapath.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Takeover {
    /// `Prepare` sent → `Committed`, microseconds (with [`Via::Pins`], the whole start).
    pub handover_us: u64,
    /// The old agent's freeze, as it measured it, microseconds.
    pub freeze_us: u64,
    /// Pre-copy of migrated maps, microseconds.
    pub precopy_us: u64,
    /// Journal keys replayed under the freeze.
    pub journal_keys: u64,
    /// Maps per outcome and entries copied.
    pub maps: MapsSummary,
    /// The old agent died after `Commit` and this side finished the swap.
    pub self_committed: bool,
    /// The old agent's version (empty with [`Via::Pins`]).
    pub from_version: String,
    /// The old agent's layout version (0 with [`Via::Pins`]).
    pub from_layout: u32,
    /// Handover or recovery from the pins.
    pub via: Via,
    /// What the datapath saw across the handover (and its soak), as the
    /// pod report has it ([`crate::pairpod::HandoverReport::datapath`]);
    /// absent after a start from the pins and from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath: Option<crate::datapath::DatapathWindow>,
}

/// What one sync of the maps to the source did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncSummary {
    /// Services created.
    pub created: u64,
    /// Services changed.
    pub updated: u64,
    /// Services removed.
    pub removed: u64,
    /// Services already as desired.
    pub unchanged: u64,
    /// Services whose transaction failed and was rolled back.
    pub failed: Vec<SyncFailure>,
    /// Map writes kept.
    pub writes: u64,
    /// Map writes undone by rollbacks.
    pub rolled_back: u64,
    /// The view was rebuilt from the maps before this sync.
    pub resynced: bool,
    /// Wall time, microseconds (the wire name has no unit).
    #[serde(rename = "duration")]
    pub duration_us: u64,
}

/// One service that could not be programmed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncFailure {
    /// Service name.
    pub service: String,
    /// Why.
    pub error: String,
}

/// The answer to [`Request::Dump`]: the services as the agent programmed them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dump {
    /// Every programmed service.
    pub services: Vec<DumpService>,
}

/// One programmed service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpService {
    /// Service name.
    pub name: String,
    /// Service id in the maps.
    pub id: u32,
    /// Its VIPs.
    pub vips: Vec<String>,
    /// Service port → target port.
    pub ports: Vec<DumpPort>,
    /// Load-balancing policy (`random`, `strict`, `failover`; `unknown` for a bad value).
    pub policy: String,
    /// Per priority bucket, the backends in slot order: `ip`, `ip:port`, or
    /// `<missing>` for a backend the agent's view lacks.
    pub buckets: Vec<Vec<String>>,
}

/// One port of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpPort {
    /// Port clients connect to.
    pub port: u32,
    /// Port of the backends (0: the same).
    pub target_port: u32,
}

/// The answer to [`Request::Verify`]: the result of a verification.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verify {
    /// Services checked.
    pub services: u64,
    /// Endpoint entries checked.
    pub endpoints: u64,
    /// Backend entries checked.
    pub backends: u64,
    /// Frontend entries checked.
    pub frontends: u64,
    /// Everything wrong (empty = clean).
    pub violations: Vec<Violation>,
}

impl Verify {
    /// No violation found.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }
}

/// One broken invariant of the maps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Violation {
    /// Key (service, prio, index) missing while index <= count.
    Hole {
        /// Service id.
        service: u32,
        /// Bucket.
        prio: u32,
        /// Missing 1-based index.
        index: u32,
    },
    /// An endpoint key with index 0 or past its bucket's count.
    PastCount {
        /// Service id.
        service: u32,
        /// Bucket.
        prio: u32,
        /// Index found.
        index: u32,
        /// Bucket count.
        count: u32,
    },
    /// Endpoint of a service that does not exist.
    OrphanEndpoint {
        /// Service id.
        service: u32,
        /// Bucket.
        prio: u32,
        /// Index.
        index: u32,
    },
    /// Endpoint points at a backend uid with no backend entry.
    DanglingBackend {
        /// Service id.
        service: u32,
        /// Bucket.
        prio: u32,
        /// Index.
        index: u32,
        /// Missing backend uid.
        backend: u32,
    },
    /// Backend entry no endpoint refers to.
    UnusedBackend {
        /// Backend uid.
        backend: u32,
    },
    /// VIP points at a missing service.
    DanglingFrontend {
        /// The VIP.
        vip: String,
        /// Missing service id.
        service: u32,
    },
    /// Unknown load-balancing policy value.
    BadPolicy {
        /// Service id.
        service: u32,
        /// Raw value.
        policy: u32,
    },
    /// The maps and the agent's view differ.
    ViewMismatch {
        /// Which map.
        map: String,
        /// Entries only in the maps.
        only_in_maps: u64,
        /// Entries only in the view.
        only_in_view: u64,
        /// Entries present in both with different values.
        differing: u64,
    },
    /// A kind this build does not know (from an agent of another version);
    /// still a violation. Never written.
    #[serde(other)]
    Unknown,
}

/// The answer to [`Request::Status`] when no agent answers: what the pins tell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinStatus {
    /// Always `None`: no agent process answered.
    pub pid: Option<u32>,
    /// The bpffs pin directory read.
    pub pin_dir: String,
    /// Layout of the agent that created the maps (meta map).
    pub layout_version: u32,
    /// Generation recorded in the meta map.
    pub generation: u64,
    /// Entries in each map, by map name.
    pub entries: BTreeMap<String, u64>,
    /// Number of broken invariants (see `verify`).
    pub violations: u64,
}

/// An answer made from the pinned maps because no agent answered: `T`'s
/// fields plus `answered_by` and `no_agent`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FromPins<T> {
    /// The answer itself.
    #[serde(flatten)]
    pub answer: T,
    /// Always [`ANSWERED_BY_PINS`].
    pub answered_by: String,
    /// Why no agent answered.
    pub no_agent: String,
}

impl<T> FromPins<T> {
    /// `answer`, made from the pins because of `no_agent`.
    pub fn new(answer: T, no_agent: impl Into<String>) -> Self {
        Self {
            answer,
            answered_by: ANSWERED_BY_PINS.into(),
            no_agent: no_agent.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code

    use super::*;
    use serde_json::{json, Value};

    fn round_trip<T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
        t: &T,
        wire: Value,
    ) {
        assert_eq!(serde_json::to_value(t).unwrap(), wire);
        assert_eq!(&serde_json::from_value::<T>(wire).unwrap(), t);
    }

    #[test]
    fn requests_are_tagged_by_cmd() {
        round_trip(&Request::Status, json!({"cmd": "status"}));
        round_trip(&Request::Dump, json!({"cmd": "dump"}));
        round_trip(&Request::Verify, json!({"cmd": "verify"}));
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());
    }

    fn status() -> Status {
        Status {
            version: "0.1.0".into(),
            layout_version: 2,
            generation: 7,
            pid: 4242,
            uptime_seconds: 1.5,
            pin_dir: "/sys/fs/bpf/baton".into(),
            adopted_maps: true,
            maps: MapsSummary {
                reused: 5,
                migrated: 1,
                entries_copied: 10,
                copy_us: 30,
                ..MapsSummary::default()
            },
            handover: Some(Takeover {
                handover_us: 900,
                freeze_us: 80,
                precopy_us: 20,
                journal_keys: 3,
                maps: MapsSummary::default(),
                self_committed: false,
                from_version: "0.0.9".into(),
                from_layout: 1,
                via: Via::Handover,
                datapath: None,
            }),
            source: "file:/etc/baton/services.yaml".into(),
            frozen: false,
            services: 2,
            endpoints: 4,
            backends: 3,
            source_error: None,
            last_sync: Some(SyncSummary {
                created: 2,
                failed: vec![SyncFailure {
                    service: "web".into(),
                    error: "E2BIG".into(),
                }],
                writes: 9,
                duration_us: 120,
                ..SyncSummary::default()
            }),
            syncs: 1,
            handover_protocol: Some(ProtocolRange { min: 1, max: 2 }),
            datapath: None,
        }
    }

    #[test]
    fn status_keeps_its_wire_shape() {
        let maps0 = json!({"reused": 0, "migrated": 0, "recreated": 0, "created": 0,
                           "entries_copied": 0, "copy_us": 0});
        round_trip(
            &status(),
            json!({
                "version": "0.1.0", "layout_version": 2, "generation": 7, "pid": 4242,
                "uptime_seconds": 1.5, "pin_dir": "/sys/fs/bpf/baton", "adopted_maps": true,
                "maps": {"reused": 5, "migrated": 1, "recreated": 0, "created": 0,
                         "entries_copied": 10, "copy_us": 30},
                "handover": {"handover_us": 900, "freeze_us": 80, "precopy_us": 20,
                             "journal_keys": 3, "maps": maps0, "self_committed": false,
                             "from_version": "0.0.9", "from_layout": 1, "via": "handover"},
                "source": "file:/etc/baton/services.yaml", "frozen": false,
                "services": 2, "endpoints": 4, "backends": 3, "source_error": null,
                "last_sync": {"created": 2, "updated": 0, "removed": 0, "unchanged": 0,
                              "failed": [{"service": "web", "error": "E2BIG"}],
                              "writes": 9, "rolled_back": 0, "resynced": false,
                              "duration": 120},
                "syncs": 1, "handover_protocol": {"min": 1, "max": 2}
            }),
        );
        // Before the first sync, and started from the pins.
        let mut s = status();
        s.last_sync = None;
        s.handover = None;
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            (&v["last_sync"], &v["handover"]),
            (&Value::Null, &Value::Null)
        );
        assert_eq!(serde_json::from_value::<Status>(v).unwrap(), s);
        // An agent from before `handover_protocol`: read as absent.
        let mut old = serde_json::to_value(status()).unwrap();
        old.as_object_mut().unwrap().remove("handover_protocol");
        let read = serde_json::from_value::<Status>(old).unwrap();
        assert_eq!(read.handover_protocol, None);
    }

    #[test]
    fn protocol_ranges_meet_at_the_newest_common_version() {
        let r = |min, max| ProtocolRange { min, max };
        assert_eq!(r(1, 2).common(r(1, 1)), Some(1));
        assert_eq!(r(1, 1).common(r(1, 2)), Some(1));
        assert_eq!(r(2, 3).common(r(1, 2)), Some(2));
        assert_eq!(r(3, 4).common(r(1, 2)), None);
        assert_eq!(r(1, 2).common(ProtocolRange::BEFORE_REPORTED), Some(1));
        assert_eq!(r(1, 2).to_string(), "1..=2");
    }

    #[test]
    fn dump_and_verify_keep_their_wire_shape() {
        round_trip(
            &Dump {
                services: vec![DumpService {
                    name: "web".into(),
                    id: 1,
                    vips: vec!["10.0.0.1".into()],
                    ports: vec![DumpPort {
                        port: 80,
                        target_port: 8080,
                    }],
                    policy: "random".into(),
                    buckets: vec![vec!["10.1.0.1".into(), "10.1.0.2:81".into()], vec![]],
                }],
            },
            json!({"services": [{"name": "web", "id": 1, "vips": ["10.0.0.1"],
                "ports": [{"port": 80, "target_port": 8080}], "policy": "random",
                "buckets": [["10.1.0.1", "10.1.0.2:81"], []]}]}),
        );
        round_trip(
            &Verify {
                services: 1,
                endpoints: 2,
                backends: 2,
                frontends: 1,
                violations: vec![
                    Violation::Hole {
                        service: 1,
                        prio: 0,
                        index: 2,
                    },
                    Violation::ViewMismatch {
                        map: "backend".into(),
                        only_in_maps: 1,
                        only_in_view: 0,
                        differing: 0,
                    },
                ],
            },
            json!({"services": 1, "endpoints": 2, "backends": 2, "frontends": 1,
                "violations": [
                    {"kind": "hole", "service": 1, "prio": 0, "index": 2},
                    {"kind": "view_mismatch", "map": "backend", "only_in_maps": 1,
                     "only_in_view": 0, "differing": 0}]}),
        );
    }

    #[test]
    fn an_unknown_violation_kind_still_reads_as_a_violation() {
        let v: Verify = serde_json::from_value(json!({"services": 0, "endpoints": 0,
            "backends": 0, "frontends": 0,
            "violations": [{"kind": "from_the_future", "what": 1}]}))
        .unwrap();
        assert_eq!(v.violations, [Violation::Unknown]);
        assert!(!v.is_clean());
    }

    #[test]
    fn answers_are_the_error_or_the_answer() {
        let e: Answer<Verify> = serde_json::from_value(json!({"error": "no maps"})).unwrap();
        assert_eq!(e.into_result(), Err("no maps".to_string()));
        let ok: Answer<Verify> = serde_json::to_value(Verify::default())
            .and_then(serde_json::from_value)
            .unwrap();
        assert_eq!(ok.into_result(), Ok(Verify::default()));
        assert_eq!(
            serde_json::to_value(Response::error("bad request: x")).unwrap(),
            json!({"error": "bad request: x"})
        );
        assert_eq!(
            serde_json::to_value(Response::Status(Box::new(status()))).unwrap(),
            serde_json::to_value(status()).unwrap()
        );
        // Not the requested answer: no silent default.
        assert!(serde_json::from_value::<Answer<Status>>(json!({"services": []})).is_err());
    }

    #[test]
    fn pin_answers_are_the_answer_plus_why_no_agent_answered() {
        let pins = FromPins::new(
            PinStatus {
                pid: None,
                pin_dir: "/sys/fs/bpf/baton".into(),
                layout_version: 1,
                generation: 3,
                entries: BTreeMap::from([("backend".into(), 2), ("frontend".into(), 1)]),
                violations: 0,
            },
            "connection refused",
        );
        round_trip(
            &pins,
            json!({"pid": null, "pin_dir": "/sys/fs/bpf/baton", "layout_version": 1,
                   "generation": 3, "entries": {"backend": 2, "frontend": 1},
                   "violations": 0, "answered_by": "pins", "no_agent": "connection refused"}),
        );
        let verify = FromPins::new(Verify::default(), "gone");
        let wire = json!({"services": 0, "endpoints": 0, "backends": 0, "frontends": 0,
                          "violations": [], "answered_by": "pins", "no_agent": "gone"});
        round_trip(&verify, wire.clone());
        // A reader that only wants the report reads it from either.
        assert_eq!(
            serde_json::from_value::<Verify>(wire).unwrap(),
            Verify::default()
        );
    }
}
