//! The `KmeshUpgrade` custom resource (group `baton.dev`, version `v1alpha1`).
//!
//! The Rust types are the source of truth: `baton-operator crd` renders them
//! into `crds/kmeshupgrade.yaml`, and a test keeps the committed file in sync.

mod generate;
mod spec;
mod status;

pub use generate::{crd_yaml, CrdError};
pub use spec::{
    ApiServerAddress, KmeshUpgrade, KmeshUpgradeSpec, NodeSelector, OnFailure, PodSettings,
    Strategy, DEFAULT_HANDOVER_TIMEOUT_SECONDS, DEFAULT_MAX_UNAVAILABLE, IMAGE_REFERENCE_REGEX,
};
pub use status::{HandoverFigures, KmeshUpgradeStatus, NodePhase, NodeStatus, RolloutPhase};
