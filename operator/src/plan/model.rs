//! What the planner is told about the fleet.

use baton_api::datapath::DatapathWindow;
use baton_api::pairpod::Slot;

/// Facts remembered across reconciles (kept in the `KmeshUpgrade` status).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// Last image every selected node ran at once; what a rollback returns to.
    pub stable_image: Option<String>,
    /// Image whose handover failed; holds the rollout while it equals the spec's image.
    pub failed_image: Option<String>,
    /// Image whose canary passed: the rollout of it is no longer held to the canary nodes.
    pub canary_passed: Option<String>,
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
    /// The node's preflight check pods (one per image checked).
    pub preflights: Vec<PreflightView>,
}

/// A preflight check pod of one image on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreflightView {
    /// Name of the check pod.
    pub pod: String,
    /// The image it checks.
    pub image: String,
    /// Where the check stands.
    pub state: PreflightState,
}

/// Where one preflight check stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PreflightState {
    /// Its pod runs or waits; `wait` is what the kubelet says, if it holds it.
    Running {
        /// Seconds since the check pod was created.
        elapsed_seconds: u64,
        /// The kubelet's waiting reason, if any.
        wait: Option<String>,
    },
    /// Every check passed.
    Passed,
    /// A check failed, the check could not run, or it is incompatible with
    /// the serving agent.
    Failed {
        /// Why, in the check's own words.
        message: String,
    },
}

/// The agent pair pod of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairView {
    /// Slot whose agent owns the datapath.
    pub active: Slot,
    /// Image of the active slot.
    pub active_image: String,
    /// Whether the active agent is ready: its container is ready and the
    /// agent reported owning the datapath at its slot and image (a Committed
    /// handover report, or a Started report from an agent that started active).
    /// Only ready nodes count as updated, complete or stable.
    pub ready: bool,
    /// What the other slot is doing.
    pub standby: Standby,
    /// The active agent since its handover committed, when it got the
    /// datapath by one (what a canary is judged by).
    pub serving: Option<Serving>,
}

/// The active agent since the handover that put it in charge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Serving {
    /// Seconds since it committed (its report's time).
    pub committed_seconds_ago: u64,
    /// What the datapath saw from its `Hello` to its last report; `None`
    /// from agents that do not report it.
    pub datapath: Option<DatapathWindow>,
    /// Its container restarted (or stopped running) after the commit.
    pub restarted: bool,
}

/// State of the non-active slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standby {
    /// Parked on the empty image.
    Empty,
    /// The agent that retired at the last commit waits here as a warm
    /// standby: a handover back to `image` needs no container restart (and so
    /// meets no kubelet back-off), only the annotations.
    Warm {
        /// Image of the standby agent (its slot's version annotation agrees).
        image: String,
        /// Whether its container runs (a standby that is not running cannot
        /// be woken by annotations alone).
        running: bool,
    },
    /// Running a new agent that is taking over from the active one.
    Upgrading {
        /// Image the new agent runs.
        image: String,
        /// Seconds since the operator started this handover.
        elapsed_seconds: u64,
        /// What the new agent reported through its pod condition, if anything yet.
        report: Option<Reported>,
        /// Whether the new slot's container is ready (its readiness once committed).
        ready: bool,
        /// What the kubelet is doing with the new slot's container.
        kubelet: KubeletWait,
    },
}

/// The kubelet holding a handover's new container back, as its container
/// status shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeletWait {
    /// Why the container is not running (`CrashLoopBackOff`, `ErrImagePull`,
    /// `ImagePullBackOff`, `CreateContainerError`, ...), with the kubelet's
    /// own words, for the node status and an event.
    pub message: Option<String>,
    /// Seconds of this handover the kubelet spent in crash-loop back-off
    /// before it started the new agent (the back-off of an earlier container
    /// of that name and image, not of the new agent itself). They do not
    /// count against `handoverTimeoutSeconds`, up to
    /// [`super::BACKOFF_GRACE_SECONDS`].
    pub backoff_seconds: u64,
}

/// Outcome of a handover as the new agent reported it (its
/// `baton_api::pairpod::HandoverReport`, read by `controller::observe`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reported {
    /// The new agent committed: it owns the datapath now.
    Committed,
    /// The handover was aborted; the old agent kept serving.
    Failed {
        /// The agent's reason.
        message: String,
    },
}
