//! Rollout planner: a pure function from (spec, remembered status, observed
//! nodes) to the actions the controller should take next.
//!
//! Pure so that every knob (maxUnavailable, partition, paused, onFailure) can
//! be tested on fleets of thousands of nodes without an API server; the
//! controller only translates observed pods into [`NodeView`]s and
//! [`Action`]s into API calls.

mod action;
mod budget;
mod gates;
mod model;
mod planner;

#[cfg(test)]
mod tests;

pub use action::{Action, CanaryOutcome, FailureCause, NodeOutcome, Plan, PreflightTally, Summary};
pub use budget::{max_unavailable, BudgetError};
pub use gates::before_ppm;
pub use model::{
    KubeletWait, Memory, NodeView, PairView, PreflightState, PreflightView, Reported, Serving,
    Standby,
};
pub use planner::{plan, PlanError, BACKOFF_GRACE_SECONDS};
