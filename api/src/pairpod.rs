//! The pair-pod contract (docs/operator.md). The operator runs the agent of a
//! node in one pod with two containers, the slots `a` and `b`, and steers
//! them through annotations that each container reads through the downward
//! API; the agents answer with pod conditions whose messages are JSON:
//!
//! | who | writes | what |
//! |---|---|---|
//! | operator | [`ANN_ACTIVE_SLOT`], [`Slot::version_annotation`], [`ANN_HANDOVER_STARTED`] | which slot owns the datapath, what each slot runs, when a handover started |
//! | operator | the `ENV_*` variables of each container | the same, as the container saw it at its start |
//! | new agent | [`CONDITION_HANDOVER`] with a [`HandoverReport`] | how its handover ended ([`HandoverOutcome`]) |
//! | serving agent | [`CONDITION_STARTED`] with a [`StartedReport`] | that it owns the datapath |
//!
//! Both sides read these with the same rules: [`active_slot`] (missing or
//! garbled means slot a), [`HandoverOutcome::from_condition`] and
//! [`report_is_fresh`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Label naming the `KmeshUpgrade` that owns an agent pod.
pub const LABEL_UPGRADE: &str = "baton.dev/upgrade";
/// Label key whose value [`APP_NAME`] marks agent pods.
pub const LABEL_APP_NAME: &str = "app.kubernetes.io/name";
/// Value of [`LABEL_APP_NAME`] on agent pods.
pub const APP_NAME: &str = "baton-agent";

/// Annotation: the slot (`a`/`b`) whose agent owns the datapath.
pub const ANN_ACTIVE_SLOT: &str = "baton.dev/active-slot";
/// Annotation: when the running handover started (RFC 3339); absent when idle.
pub const ANN_HANDOVER_STARTED: &str = "baton.dev/handover-started";

/// Env: this container's slot, `a` or `b`.
pub const ENV_SLOT: &str = "BATON_SLOT";
/// Env: this slot's version annotation (the image it runs), from the downward API.
pub const ENV_SLOT_VERSION: &str = "BATON_SLOT_VERSION";
/// Env: the other slot's version annotation.
pub const ENV_SLOT_VERSION_ALT: &str = "BATON_SLOT_VERSION_ALT";
/// Env: the [`ANN_ACTIVE_SLOT`] annotation.
pub const ENV_ACTIVE_SLOT: &str = "BATON_ACTIVE_SLOT";
/// Annotation: how long (seconds) a successor keeps its handover report
/// up to date after it commits, while the operator soaks a canary; absent
/// or 0 outside a canary.
pub const ANN_SOAK_SECONDS: &str = "baton.dev/soak-seconds";
/// Env: the [`ANN_SOAK_SECONDS`] annotation, from the downward API.
pub const ENV_SOAK_SECONDS: &str = "BATON_SOAK_SECONDS";
/// How often a soaking successor rewrites its report, seconds.
pub const SOAK_REPORT_INTERVAL_SECONDS: u64 = 5;
/// Env: the directory both slots share (default [`DEFAULT_RUN_DIR`]).
pub const ENV_RUN_DIR: &str = "BATON_RUN_DIR";
/// Env: the cgroup the agent attaches its programs to (optional).
pub const ENV_CGROUP: &str = "BATON_CGROUP";
/// Env: the pod's node (`spec.nodeName`).
pub const ENV_NODE_NAME: &str = "NODE_NAME";
/// Env: the pod's name (`metadata.name`).
pub const ENV_POD_NAME: &str = "POD_NAME";
/// Env: the pod's namespace (`metadata.namespace`).
pub const ENV_POD_NAMESPACE: &str = "POD_NAMESPACE";

/// Directory both slots share (memory-backed), holding the agents' sockets.
pub const DEFAULT_RUN_DIR: &str = "/run/baton";

/// API group of the `KmeshUpgrade` CRD that owns agent pods.
pub const UPGRADE_GROUP: &str = "baton.dev";
/// Version of the `KmeshUpgrade` CRD.
pub const UPGRADE_VERSION: &str = "v1alpha1";
/// Kind of the CRD.
pub const UPGRADE_KIND: &str = "KmeshUpgrade";
/// Plural (resource name) of the CRD.
pub const UPGRADE_PLURAL: &str = "kmeshupgrades";

/// Pod condition the new agent sets when its handover commits or fails.
pub const CONDITION_HANDOVER: &str = "baton.dev/Handover";
/// Pod condition of the agent that owns the datapath: written by an agent
/// that starts as the active slot, and by a successor with its Committed
/// report (a later failed report replaces the Handover condition, not this).
pub const CONDITION_STARTED: &str = "baton.dev/Started";
/// Condition status `True`.
pub const STATUS_TRUE: &str = "True";
/// Condition status `False`.
pub const STATUS_FALSE: &str = "False";
/// Reason of a committed handover ([`HandoverOutcome::Committed`]).
pub const REASON_COMMITTED: &str = "Committed";
/// Reason of a failed handover ([`HandoverOutcome::Failed`]).
pub const REASON_FAILED: &str = "Failed";
/// Reason of the [`CONDITION_STARTED`] condition.
pub const REASON_STARTED: &str = "Started";

/// Why a contract value could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// A slot name other than `a` or `b`.
    #[error("{0:?} is neither a nor b")]
    Slot(String),
    /// A condition message that is not the expected JSON.
    #[error("condition message: {0}")]
    Message(#[source] serde_json::Error),
}

/// One of the two agent containers of the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// Container `slot-a`.
    A,
    /// Container `slot-b`.
    B,
}

impl Slot {
    /// Both slots, a first.
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// The other slot of the pair.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// `a` → A, `b` → B, anything else (case and blanks included) `None`.
    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }

    /// `a` or `b`, as annotations, env and messages spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// Name of this slot's container in the pod.
    pub fn container(self) -> &'static str {
        match self {
            Slot::A => "slot-a",
            Slot::B => "slot-b",
        }
    }

    /// Annotation holding this slot's version (its image), e.g. `baton.dev/slot-a-version`.
    pub fn version_annotation(self) -> String {
        format!("baton.dev/slot-{self}-version")
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Slot {
    type Err = ContractError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Slot::parse(s).ok_or_else(|| ContractError::Slot(s.to_owned()))
    }
}

/// The active slot named by [`ANN_ACTIVE_SLOT`] (or [`ENV_ACTIVE_SLOT`]):
/// slot a when missing or garbled. Both sides must agree on this, or a
/// garbled annotation would leave two agents, or none, owning the datapath.
pub fn active_slot(value: Option<&str>) -> Slot {
    value.and_then(Slot::parse).unwrap_or(Slot::A)
}

/// How a handover ended, as the [`CONDITION_HANDOVER`] condition says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandoverOutcome {
    /// The new agent owns the datapath (`status: "True"`, `reason: Committed`).
    Committed,
    /// The old agent keeps it (`status: "False"`, `reason: Failed`).
    Failed,
}

impl HandoverOutcome {
    /// The condition's `status`.
    pub fn status(self) -> &'static str {
        match self {
            Self::Committed => STATUS_TRUE,
            Self::Failed => STATUS_FALSE,
        }
    }

    /// The condition's `reason`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Committed => REASON_COMMITTED,
            Self::Failed => REASON_FAILED,
        }
    }

    /// Reads a condition's status and reason: Committed only with status
    /// `True`; Failed whatever the status; anything else (a handover still
    /// running, an unknown reason) is no outcome yet.
    pub fn from_condition(status: &str, reason: Option<&str>) -> Option<Self> {
        match reason {
            Some(REASON_COMMITTED) if status == STATUS_TRUE => Some(Self::Committed),
            Some(REASON_FAILED) => Some(Self::Failed),
            _ => None,
        }
    }
}

/// The [`CONDITION_HANDOVER`] message: which agent reports, and what the
/// handover cost. Only `slot` and `version` are required when reading, so a
/// report from an agent of another version still names its author.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandoverReport {
    /// Slot of the reporting (new) agent.
    pub slot: Slot,
    /// Its version: the value of [`ENV_SLOT_VERSION`] (its image).
    pub version: String,
    /// Wall time from Hello to Committed, milliseconds.
    #[serde(default)]
    pub duration_ms: u64,
    /// Time control-plane writes were frozen, milliseconds.
    #[serde(default)]
    pub freeze_ms: u64,
    /// Maps taken over as they were.
    #[serde(default)]
    pub maps_reused: u32,
    /// Maps whose layout changed and whose entries were copied.
    #[serde(default)]
    pub maps_migrated: u32,
    /// Entries copied across all migrated maps.
    #[serde(default)]
    pub entries_copied: u64,
    /// Free text (the error on failure).
    #[serde(default)]
    pub message: String,
    /// What the datapath saw from `Hello` on, next to the incumbent's rate
    /// before; rewritten every [`SOAK_REPORT_INTERVAL_SECONDS`] during a
    /// canary's soak ([`ANN_SOAK_SECONDS`]). Absent from failed reports and
    /// from agents built before it was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath: Option<crate::datapath::DatapathWindow>,
}

impl ConditionReport for HandoverReport {
    fn author(&self) -> (Slot, &str) {
        (self.slot, &self.version)
    }
}

/// The [`CONDITION_STARTED`] message: which agent owns the datapath.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedReport {
    /// Slot of the serving agent.
    pub slot: Slot,
    /// Its version (image).
    pub version: String,
    /// The handover protocol versions it speaks, which the operator's
    /// preflight checks a new build against; absent from agents built before
    /// it was added (they speak protocol 1 only).
    #[serde(
        default,
        rename = "handoverProtocol",
        skip_serializing_if = "Option::is_none"
    )]
    pub handover_protocol: Option<crate::admin::ProtocolRange>,
}

impl ConditionReport for StartedReport {
    fn author(&self) -> (Slot, &str) {
        (self.slot, &self.version)
    }
}

/// A condition message written by an agent: JSON naming its author. Both
/// reports are read and written the same way, by both sides.
pub trait ConditionReport: Serialize + serde::de::DeserializeOwned {
    /// The slot and version (image) of the agent that wrote it.
    fn author(&self) -> (Slot, &str);

    /// Parses a condition message.
    fn from_message(message: &str) -> Result<Self, ContractError> {
        serde_json::from_str(message).map_err(ContractError::Message)
    }

    /// The condition message.
    fn to_message(&self) -> Result<String, ContractError> {
        serde_json::to_string(self).map_err(ContractError::Message)
    }

    /// Whether the agent of `slot` at `version` wrote this report.
    fn is_from(&self, slot: Slot, version: &str) -> bool {
        self.author() == (slot, version)
    }
}

/// Whether a handover report speaks about the handover that started at
/// `handover_started` (seconds since the epoch, from [`ANN_HANDOVER_STARTED`])
/// given its condition's `lastTransitionTime` `reported_at` (seconds). A
/// retry of the same version into the same slot must not pick up the
/// previous attempt's report, so an older report is stale. Condition times
/// have whole seconds only: a report in the start's own second counts. With
/// either time unknown (no handover running, an unreadable annotation, a
/// condition without a time) the report counts.
pub fn report_is_fresh(handover_started: Option<i64>, reported_at: Option<i64>) -> bool {
    match (handover_started, reported_at) {
        (Some(start), Some(at)) => at >= start,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code

    use super::*;
    use serde_json::json;

    #[test]
    fn slots_round_trip_through_every_spelling() {
        for s in Slot::ALL {
            assert_eq!(Slot::parse(s.as_str()), Some(s));
            assert_eq!(s.to_string().parse::<Slot>().unwrap(), s);
            let j = serde_json::to_value(s).unwrap();
            assert_eq!(j, json!(s.as_str()));
            assert_eq!(serde_json::from_value::<Slot>(j).unwrap(), s);
            assert_eq!(s.other().other(), s);
            assert_ne!(s.other(), s);
        }
        assert_eq!(Slot::A.container(), "slot-a");
        assert_eq!(Slot::B.container(), "slot-b");
        assert_eq!(Slot::A.version_annotation(), "baton.dev/slot-a-version");
        assert_eq!(Slot::B.version_annotation(), "baton.dev/slot-b-version");
    }

    #[test]
    fn a_garbled_slot_is_no_slot_and_a_garbled_active_slot_is_a() {
        for bad in ["", "c", "A", "B", " b", "b ", "slot-b", "ab"] {
            assert_eq!(Slot::parse(bad), None, "{bad:?}");
            let e = bad.parse::<Slot>().unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
            assert_eq!(active_slot(Some(bad)), Slot::A, "{bad:?}");
        }
        assert_eq!(active_slot(None), Slot::A);
        assert_eq!(active_slot(Some("a")), Slot::A);
        assert_eq!(active_slot(Some("b")), Slot::B);
        assert!(serde_json::from_value::<Slot>(json!("c")).is_err());
    }

    #[test]
    fn outcomes_round_trip_through_the_condition() {
        for o in [HandoverOutcome::Committed, HandoverOutcome::Failed] {
            assert_eq!(
                HandoverOutcome::from_condition(o.status(), Some(o.reason())),
                Some(o)
            );
        }
        assert_eq!(
            (
                HandoverOutcome::Committed.status(),
                HandoverOutcome::Committed.reason()
            ),
            ("True", "Committed")
        );
        assert_eq!(
            (
                HandoverOutcome::Failed.status(),
                HandoverOutcome::Failed.reason()
            ),
            ("False", "Failed")
        );
    }

    #[test]
    fn only_a_true_commit_commits_and_any_failure_fails() {
        let read = HandoverOutcome::from_condition;
        assert_eq!(read("False", Some("Committed")), None);
        assert_eq!(read("Unknown", Some("Committed")), None);
        assert_eq!(read("True", Some("Failed")), Some(HandoverOutcome::Failed));
        assert_eq!(
            read("Unknown", Some("Failed")),
            Some(HandoverOutcome::Failed)
        );
        assert_eq!(read("True", Some("Migrating")), None);
        assert_eq!(read("True", None), None);
        assert_eq!(read("True", Some("committed")), None);
    }

    fn report() -> HandoverReport {
        HandoverReport {
            slot: Slot::B,
            version: "agent:v2".into(),
            duration_ms: 41,
            freeze_ms: 3,
            maps_reused: 5,
            maps_migrated: 1,
            entries_copied: 100_000,
            message: "ok".into(),
            datapath: None,
        }
    }

    #[test]
    fn the_report_message_has_exactly_the_documented_keys() {
        let m = report().to_message().unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&m).unwrap(),
            json!({"slot": "b", "version": "agent:v2", "durationMs": 41, "freezeMs": 3,
                   "mapsReused": 5, "mapsMigrated": 1, "entriesCopied": 100000,
                   "message": "ok"})
        );
        assert_eq!(HandoverReport::from_message(&m).unwrap(), report());
    }

    #[test]
    fn a_report_needs_its_author_and_nothing_else() {
        let r = HandoverReport::from_message(r#"{"slot":"a","version":"v1","extra":1}"#).unwrap();
        assert!(r.is_from(Slot::A, "v1"));
        assert!(!r.is_from(Slot::B, "v1"));
        assert!(!r.is_from(Slot::A, "v2"));
        assert_eq!(
            (r.duration_ms, r.maps_reused, r.message.as_str()),
            (0, 0, "")
        );
        for bad in [
            r#"{"version":"v1"}"#,
            r#"{"slot":"a"}"#,
            r#"{"slot":"c","version":"v1"}"#,
            r#"{"slot":"a","version":"v1","mapsReused":-1}"#,
            "not json",
            "",
        ] {
            assert!(HandoverReport::from_message(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_started_message_names_slot_and_version_and_a_report_reads_as_one() {
        let s = StartedReport {
            slot: Slot::A,
            version: "agent:v1".into(),
            handover_protocol: None,
        };
        let m = s.to_message().unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&m).unwrap(),
            json!({"slot": "a", "version": "agent:v1"})
        );
        assert_eq!(StartedReport::from_message(&m).unwrap(), s);
        let with = StartedReport {
            handover_protocol: Some(crate::admin::ProtocolRange { min: 1, max: 2 }),
            ..s.clone()
        };
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&with.to_message().unwrap()).unwrap(),
            json!({"slot": "a", "version": "agent:v1", "handoverProtocol": {"min": 1, "max": 2}})
        );
        // A Handover message names its author the same way.
        let head = StartedReport::from_message(&report().to_message().unwrap()).unwrap();
        assert!(head.is_from(Slot::B, "agent:v2"));
    }

    #[test]
    fn freshness_compares_whole_seconds_and_unknown_times_count() {
        assert!(report_is_fresh(Some(100), Some(100)), "same second");
        assert!(report_is_fresh(Some(100), Some(101)));
        assert!(!report_is_fresh(Some(100), Some(99)), "before the start");
        assert!(report_is_fresh(None, Some(99)), "no handover running");
        assert!(report_is_fresh(Some(100), None), "no time on the condition");
        assert!(report_is_fresh(None, None));
        assert!(!report_is_fresh(Some(i64::MAX), Some(i64::MIN)));
        assert!(report_is_fresh(Some(-5), Some(-5)), "before 1970 too");
    }
}
