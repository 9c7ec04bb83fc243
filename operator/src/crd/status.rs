//! The observed state of a `KmeshUpgrade`, written by the operator.

use std::fmt;

use baton_api::pairpod::Slot;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Status of a `KmeshUpgrade`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KmeshUpgradeStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Selected nodes.
    #[serde(default)]
    pub nodes: i32,
    /// Selected nodes whose active slot runs `spec.agentImage` with its agent ready.
    #[serde(default)]
    pub updated: i32,
    /// Selected nodes whose active agent is ready: its container is ready and
    /// it reported owning the datapath (Committed, or Started).
    #[serde(default)]
    pub ready: i32,
    /// Selected nodes whose last handover to `spec.agentImage` failed.
    #[serde(default)]
    pub failed: i32,
    /// Where the rollout stands as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RolloutPhase>,
    /// Last image that every selected node ran with its agent ready (so it
    /// has served); the target of a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_image: Option<String>,
    /// Image whose handover failed; cleared by changing `spec.agentImage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_image: Option<String>,
    /// One entry per selected node (see `nodeStatusesOmitted` for large fleets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["node".into()]))]
    pub node_statuses: Vec<NodeStatus>,
    /// Nodes left out of `nodeStatuses` to keep the object small (fleets over
    /// 1 000 nodes list only nodes that are not Running, at most 1 000, and
    /// every failed one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_statuses_omitted: Option<i32>,
    /// Preflight of `spec.agentImage` over the nodes it upgrades.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preflight: Option<PreflightProgress>,
    /// The canary of `spec.agentImage`, when `spec.strategy.canary` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,
    /// Standard conditions (Progressing, Available, Degraded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// Where a rollout stands.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutPhase {
    /// Nodes are being created or upgraded.
    Progressing,
    /// Every selected node runs `spec.agentImage` (minus the partition).
    Complete,
    /// `spec.strategy.paused` holds the rollout.
    Paused,
    /// A handover failed and `onFailure: Pause` stopped the rollout.
    Failed,
    /// A handover failed and upgraded nodes are handed back to the stable image.
    RollingBack,
    /// The rollback finished; every node runs the stable image again.
    RolledBack,
}

impl fmt::Display for RolloutPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

// The schema of `baton_api::pairpod::Slot` (which has no schemars): its serde
// form, and its doc comment, which the CRD carries as the description.
/// One of the two agent containers of a node's pod.
#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // only its schema is used
enum SlotSchema {
    /// Container `slot-a`.
    A,
    /// Container `slot-b`.
    B,
}

/// What one node is doing.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodePhase {
    /// The agent pod does not exist yet or is not running.
    Pending,
    /// The active slot runs the target image and no handover is under way.
    Running,
    /// The active slot runs an older image and waits for its turn.
    Outdated,
    /// A handover to the other slot is under way.
    Upgrading,
    /// The last handover failed; the old agent kept serving.
    Failed,
}

/// Per-node status entry.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// Node name.
    pub node: String,
    /// Slot whose agent owns the datapath.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<SlotSchema>")]
    pub active_slot: Option<Slot>,
    /// Image (version) of the active agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// What the node is doing.
    pub phase: NodePhase,
    /// Image whose handover last failed on this node; it is not retried there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_image: Option<String>,
    /// The node's last handover: the agent's figures when it committed, or
    /// the failure (reason, time) when it failed or timed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handover: Option<HandoverFigures>,
    /// What holds the node up now, e.g. "kubelet back-off 40s before
    /// starting slot-b (...)" while a handover waits on the kubelet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The node's last preflight check of an image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preflight: Option<NodePreflight>,
}

/// Preflight progress of one image over the nodes to upgrade.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PreflightProgress {
    /// The image checked.
    pub image: String,
    /// Nodes whose check passed.
    pub passed: i32,
    /// Nodes whose check failed.
    pub failed: i32,
    /// Nodes whose check runs.
    pub running: i32,
    /// Nodes still to check.
    pub pending: i32,
    /// One line for `kubectl get kmu`, e.g. `2/3 passed, 1 running`.
    pub summary: String,
}

/// How a node's preflight check ended (or that it runs).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreflightResult {
    /// The check pod runs (or waits for the kubelet).
    Running,
    /// Every check passed: the node may hand over to the image.
    Passed,
    /// A check failed, or the check could not run or timed out.
    Failed,
}

/// One node's preflight of one image (`baton-agent preflight` in a check pod).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodePreflight {
    /// The image checked.
    pub image: String,
    /// Running, Passed or Failed.
    pub result: PreflightResult,
    /// Why it failed (the check's own lines), or what the kubelet does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The node's kernel release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Maps the handover would reuse as they are.
    #[serde(default)]
    pub maps_reused: i32,
    /// Maps it would migrate (layout changed).
    #[serde(default)]
    pub maps_migrated: i32,
    /// Entries it would copy.
    #[serde(default)]
    pub entries_to_copy: i64,
    /// Estimated copy time at the rate measured on the node, milliseconds.
    #[serde(default)]
    pub estimated_copy_ms: i64,
    /// Handover protocol version it would run at with the serving agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_protocol: Option<i32>,
    /// When the check finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Time>,
}

impl NodePreflight {
    /// A check of `image` with `result` and nothing else known yet.
    pub fn new(image: String, result: PreflightResult) -> Self {
        Self {
            image,
            result,
            message: None,
            kernel: None,
            maps_reused: 0,
            maps_migrated: 0,
            entries_to_copy: 0,
            estimated_copy_ms: 0,
            session_protocol: None,
            at: None,
        }
    }
}

/// Where a canary stands.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CanaryPhase {
    /// The canary nodes hand over to the new image.
    Upgrading,
    /// The canaries run the image; the rollout waits for the soak to end.
    Soaking,
    /// The soak ended with no threshold crossed; the rollout goes on.
    Passed,
    /// A threshold was crossed (`message` says which, with the numbers).
    Failed,
}

/// The canary of one image.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    /// The image on trial.
    pub image: String,
    /// Where the canary stands.
    pub phase: CanaryPhase,
    /// The canary nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// Seconds of the soak so far (since the last canary committed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soaked_seconds: Option<i64>,
    /// The threshold that tripped, with the numbers; or why the soak waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What the datapath saw on a node from the start of its handover to the
/// agent's last report (docs/operator.md, "Canary").
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Disruption {
    /// Connects to a VIP since the handover started.
    pub connects: i64,
    /// Of those, refused by the datapath (no endpoint, missing backend, family).
    pub refused: i64,
    /// `refused` per million `connects`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_per_million: Option<i64>,
    /// The old agent's refused share before the handover, per million.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_per_million_before: Option<i64>,
    /// Length of the window, milliseconds.
    pub window_ms: i64,
    /// Failed syncs of the new agent since it committed.
    pub sync_errors: i64,
}

/// What the last handover on a node cost and did.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HandoverFigures {
    /// Wall time from Hello to Committed.
    #[serde(default)]
    pub duration_ms: i64,
    /// Time control-plane writes were frozen (the datapath never stops).
    #[serde(default)]
    pub freeze_ms: i64,
    /// Maps taken over as they were.
    #[serde(default)]
    pub maps_reused: i32,
    /// Maps whose layout changed and whose entries were copied.
    #[serde(default)]
    pub maps_migrated: i32,
    /// Entries copied across all migrated maps.
    #[serde(default)]
    pub entries_copied: i64,
    /// Free text from the agent (error on failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `Committed` or `Failed` (a failure the operator saw, e.g. a timeout,
    /// has only this, `message` and `at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// When the agent reported, or the operator declared the failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Time>,
    /// What the datapath saw across the handover (and a canary's soak).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption: Option<Disruption>,
}
