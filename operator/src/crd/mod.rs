//! The `KmeshUpgrade` custom resource (group `baton.dev`, version `v1alpha1`).
//!
//! The Rust types are the source of truth: `baton-operator crd` renders them
//! into `crds/kmeshupgrade.yaml`, and a test keeps the committed file in sync.

mod generate;
mod spec;
mod status;

pub use generate::{crd_yaml, CrdError};
pub use spec::{
    ApiServerAddress, Canary, KmeshUpgrade, KmeshUpgradeSpec, NodeSelector, OnFailure, PodSettings,
    Preflight, PreflightMode, Strategy, DEFAULT_HANDOVER_TIMEOUT_SECONDS,
    DEFAULT_MAX_REFUSED_PER_MILLION, DEFAULT_MAX_UNAVAILABLE, DEFAULT_MIN_CONNECTS,
    DEFAULT_PREFLIGHT_TIMEOUT_SECONDS, DEFAULT_SOAK_SECONDS, IMAGE_REFERENCE_REGEX,
};
pub use status::{
    CanaryPhase, CanaryStatus, Disruption, HandoverFigures, KmeshUpgradeStatus, NodePhase,
    NodePreflight, NodeStatus, PreflightProgress, PreflightResult, RolloutPhase,
};
