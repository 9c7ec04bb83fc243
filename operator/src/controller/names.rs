//! Labels, annotations and condition types shared with the node agent.
//!
//! These strings are the contract between operator and agent (see
//! docs/operator.md): change them only together with the agent.

use std::hash::{DefaultHasher, Hash, Hasher};

/// Label naming the `KmeshUpgrade` that owns an agent pod.
pub const LABEL_UPGRADE: &str = "baton.dev/upgrade";
/// `app.kubernetes.io/name` of agent pods.
pub const APP_NAME: &str = "baton-agent";
/// Annotation: the slot (`a`/`b`) whose agent owns the datapath.
pub const ANN_ACTIVE_SLOT: &str = "baton.dev/active-slot";
/// Annotation: when the running handover started (RFC 3339); absent when idle.
pub const ANN_HANDOVER_STARTED: &str = "baton.dev/handover-started";
/// Pod condition the new agent sets when its handover commits or fails.
pub const CONDITION_HANDOVER: &str = "baton.dev/Handover";
/// Shared directory of both slots; holds `handover.sock`.
pub const RUN_DIR: &str = "/run/baton";

/// Annotation holding the version (image) of a slot; read by the agent
/// through the downward API, as SidecarSet's SIDECARSET_VERSION does.
pub fn slot_version_annotation(slot: crate::crd::Slot) -> String {
    format!("baton.dev/slot-{slot}-version")
}

/// Name of the agent pod of `upgrade` on `node`, a valid DNS subdomain.
pub fn pod_name(upgrade: &str, node: &str) -> String {
    const MAX: usize = 253;
    let name = format!("{upgrade}-{node}");
    if name.len() <= MAX {
        return name;
    }
    // Too long: keep a prefix and make it unique with a hash of the full name.
    let mut hasher = DefaultHasher::new();
    name.hash(&mut hasher);
    let suffix = format!("-{:016x}", hasher.finish());
    let mut prefix: String = name.chars().take(MAX - suffix.len()).collect();
    while prefix.ends_with(['-', '.']) {
        prefix.pop();
    }
    prefix + &suffix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_are_readable_and_bounded() {
        assert_eq!(pod_name("baton", "node-1"), "baton-node-1");
        let long = "n".repeat(300);
        let a = pod_name("baton", &long);
        assert_eq!(a.len(), 253);
        assert_ne!(a, pod_name("baton", &format!("{long}x")));
        assert_eq!(a, pod_name("baton", &long), "stable across calls");
    }

    #[test]
    fn slot_annotations_name_the_slot() {
        assert_eq!(
            slot_version_annotation(crate::crd::Slot::B),
            "baton.dev/slot-b-version"
        );
    }
}
