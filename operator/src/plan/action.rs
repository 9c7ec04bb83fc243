//! What the planner tells the controller to do.

use baton_api::pairpod::Slot;

use crate::crd::{CanaryPhase, NodePhase, RolloutPhase};

use super::model::Memory;

/// One step for the controller. Actions of one node are listed in the order
/// they must run; nodes come in name order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create the node's pair pod with `image` in slot a and the empty image in slot b.
    CreatePod {
        /// Node name.
        node: String,
        /// Agent image for the first slot.
        image: String,
    },
    /// Delete the pair pod of a node that is no longer selected.
    DeletePod {
        /// Node name.
        node: String,
    },
    /// Put `image` into the idle `slot` so its agent takes over (an upgrade).
    StartUpgrade {
        /// Node name.
        node: String,
        /// The idle slot that receives the new agent.
        slot: Slot,
        /// Image of the new agent.
        image: String,
        /// The slot's warm standby already runs `image`: write only the
        /// annotations and let the standby re-exec itself as the successor,
        /// no container restart (and no kubelet back-off). Otherwise the
        /// slot's image is patched and the kubelet restarts the container.
        warm: bool,
        /// Seconds the new agent keeps its report up to date after it
        /// commits: a canary's soak; 0 otherwise.
        soak_seconds: u32,
    },
    /// Like [`Action::StartUpgrade`], but handing back to the stable image after a failure.
    StartRollback {
        /// Node name.
        node: String,
        /// The idle slot that receives the stable agent.
        slot: Slot,
        /// The stable image.
        image: String,
        /// As in [`Action::StartUpgrade`].
        warm: bool,
    },
    /// The handover committed: record `active` as active. `retired` keeps
    /// its image and stays as a warm standby (its agent re-execs itself into
    /// a low-memory wait), so a later handover back to it needs no restart.
    FinishUpgrade {
        /// Node name.
        node: String,
        /// The slot that now owns the datapath.
        active: Slot,
        /// The old slot, now the warm standby.
        retired: Slot,
    },
    /// Record that `image` failed on the node (status, event, failure latch).
    MarkFailed {
        /// Node name.
        node: String,
        /// The image whose handover failed.
        image: String,
        /// Why, for the event and the node status.
        reason: String,
        /// Which gate failed it.
        cause: FailureCause,
    },
    /// Start a check pod on the node: `image` runs `baton-agent preflight`.
    RunPreflight {
        /// Node name.
        node: String,
        /// Image to check.
        image: String,
    },
    /// Delete a check pod that has served its purpose.
    DeletePreflight {
        /// Node name.
        node: String,
        /// The check pod.
        pod: String,
    },
    /// Park a slot whose handover failed on the empty image (a failed agent
    /// is no standby worth keeping).
    ResetStandby {
        /// Node name.
        node: String,
        /// The slot that ran the failed agent.
        slot: Slot,
    },
}

impl Action {
    /// The node this action touches.
    pub fn node(&self) -> &str {
        match self {
            Action::CreatePod { node, .. }
            | Action::DeletePod { node }
            | Action::StartUpgrade { node, .. }
            | Action::StartRollback { node, .. }
            | Action::FinishUpgrade { node, .. }
            | Action::MarkFailed { node, .. }
            | Action::RunPreflight { node, .. }
            | Action::DeletePreflight { node, .. }
            | Action::ResetStandby { node, .. } => node,
        }
    }
}

/// What failed an image on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureCause {
    /// Its handover failed or timed out.
    Handover,
    /// Its preflight check failed or timed out.
    Preflight,
    /// A canary threshold tripped on the node.
    Canary,
}

impl FailureCause {
    /// The reason of such a failure, in its event and the Degraded condition.
    pub fn event_reason(self) -> &'static str {
        match self {
            FailureCause::Handover => "HandoverFailed",
            FailureCause::Preflight => "PreflightFailed",
            FailureCause::Canary => "CanaryFailed",
        }
    }
}

/// Counts over the selected nodes after the planned actions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Selected nodes.
    pub nodes: u32,
    /// Nodes whose READY active agent runs the spec's image, with no handover under way.
    pub updated: u32,
    /// Nodes whose active agent is ready.
    pub ready: u32,
    /// Nodes where the spec's image failed.
    pub failed: u32,
    /// Nodes with a handover under way (including those started by this plan).
    pub upgrading: u32,
    /// maxUnavailable resolved against the selected node count.
    pub max_unavailable: u32,
}

/// Per-node result for the status entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeOutcome {
    /// Node name.
    pub name: String,
    /// What the node is doing after the plan.
    pub phase: NodePhase,
    /// Active slot after the plan (None without a pod).
    pub active_slot: Option<Slot>,
    /// Active image after the plan (None without a pod).
    pub version: Option<String>,
    /// Failed image to remember for the node.
    pub failed_image: Option<String>,
    /// What holds the node up, for `nodeStatuses[].message`: the kubelet's
    /// waiting reason for the new slot while a handover runs ("kubelet
    /// back-off 40s before starting slot-b: ..."), or this round's failure.
    pub message: Option<String>,
    /// Why a handover failed on this node in this round; the status records
    /// it as the node's last handover.
    pub failure: Option<String>,
}

/// Preflight of the spec's image over the nodes it is to upgrade.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PreflightTally {
    /// The image checked.
    pub image: String,
    /// Nodes whose check passed.
    pub passed: u32,
    /// Nodes whose check failed.
    pub failed: u32,
    /// Nodes whose check runs (including those started by this plan).
    pub running: u32,
    /// Nodes still to check.
    pub pending: u32,
}

/// Where the canary of the spec's image stands after this plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanaryOutcome {
    /// The image on trial.
    pub image: String,
    /// Its phase.
    pub phase: CanaryPhase,
    /// The canary nodes (on the image, or handing over to it).
    pub nodes: Vec<String>,
    /// Seconds since the last canary committed, once all have.
    pub soaked_seconds: Option<u64>,
    /// The tripped threshold with its numbers, or what the soak waits for.
    pub message: Option<String>,
}

/// The planner's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Steps to take, in order.
    pub actions: Vec<Action>,
    /// Fleet counts after the steps.
    pub summary: Summary,
    /// Phase of the rollout as a whole.
    pub phase: RolloutPhase,
    /// Memory to persist in the status.
    pub memory: Memory,
    /// One entry per selected node, in name order.
    pub nodes: Vec<NodeOutcome>,
    /// Preflight of the spec's image, when a check ran or is due.
    pub preflight: Option<PreflightTally>,
    /// The canary of the spec's image, when one applies.
    pub canary: Option<CanaryOutcome>,
    /// Something time-bound is under way (a handover, a check, a soak):
    /// plan again soon even if nothing changes.
    pub waiting: bool,
}
