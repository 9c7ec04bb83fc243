//! What the planner is told about the fleet.

use crate::crd::Slot;

/// Facts remembered across reconciles (kept in the `KmeshUpgrade` status).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// Last image every selected node ran at once; what a rollback returns to.
    pub stable_image: Option<String>,
    /// Image whose handover failed; holds the rollout while it equals the spec's image.
    pub failed_image: Option<String>,
}

/// One node as the controller observed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// Node name; also the planner's ordering key.
    pub name: String,
    /// Whether the node matches the spec's node selector.
    pub selected: bool,
    /// The node's agent pair pod, if one exists.
    pub pod: Option<PairView>,
    /// Last image whose handover failed on this node (remembered in status).
    pub failed_image: Option<String>,
}

/// The agent pair pod of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairView {
    /// Slot whose agent owns the datapath.
    pub active: Slot,
    /// Image of the active slot.
    pub active_image: String,
    /// Whether the active agent reports ready.
    pub ready: bool,
    /// What the other slot is doing.
    pub standby: Standby,
}

/// State of the non-active slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standby {
    /// Parked on the empty image.
    Empty,
    /// Running a new agent that is taking over from the active one.
    Upgrading {
        /// Image the new agent runs.
        image: String,
        /// Seconds since the operator started this handover.
        elapsed_seconds: u64,
        /// What the new agent reported through its pod condition, if anything yet.
        report: Option<HandoverReport>,
    },
}

/// Outcome of a handover as the agent reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandoverReport {
    /// The new agent committed: it owns the datapath now.
    Committed,
    /// The handover was aborted; the old agent kept serving.
    Failed {
        /// The agent's reason.
        message: String,
    },
}
