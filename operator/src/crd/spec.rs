//! The desired state of a `KmeshUpgrade`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::KmeshUpgradeStatus;

/// maxUnavailable when the spec leaves it out: one node at a time.
pub const DEFAULT_MAX_UNAVAILABLE: i32 = 1;
/// Handover timeout when the spec leaves it out.
pub const DEFAULT_HANDOVER_TIMEOUT_SECONDS: i32 = 120;

/// Runs the Baton agent as an (active, empty) slot pair on every selected node
/// and hot-upgrades it when `agentImage` changes.
// Every printcolumn repeats `type_ = "integer"`, which clippy mistakes for a
// duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "baton.dev",
    version = "v1alpha1",
    kind = "KmeshUpgrade",
    namespaced,
    shortname = "kmu",
    category = "baton",
    status = "KmeshUpgradeStatus",
    derive = "PartialEq",
    printcolumn(name = "Nodes", type_ = "integer", json_path = ".status.nodes"),
    printcolumn(name = "Updated", type_ = "integer", json_path = ".status.updated"),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.failed"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.agentImage != self.emptyImage").message(
    "agentImage and emptyImage must differ: the empty slot is told apart from the active one by its image"
))]
#[serde(rename_all = "camelCase")]
pub struct KmeshUpgradeSpec {
    /// Which nodes run the agent; an empty selector selects every node.
    #[serde(default)]
    pub node_selector: NodeSelector,
    /// Image of the Baton agent to run (and to upgrade to) on the selected nodes.
    #[x_kube(validation = Rule::new("self.size() > 0").message("agentImage must not be empty"))]
    pub agent_image: String,
    /// Image parked in the idle slot: it must sleep forever and use no resources.
    #[x_kube(validation = Rule::new("self.size() > 0").message("emptyImage must not be empty"))]
    pub empty_image: String,
    /// Settings copied into every agent pod.
    #[serde(default)]
    pub pod: PodSettings,
    /// How the upgrade moves through the fleet.
    #[serde(default)]
    pub strategy: Strategy,
}

/// Node label selector (all labels must match).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelector {
    /// Labels a node must carry, all of them, to be selected.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// Settings of the per-node agent pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodSettings {
    /// Resources of each agent slot. Both slots reserve them: a pod's requests
    /// cannot follow an in-place image swap from one slot to the other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Tolerations of the agent pod; the mesh usually needs to run on tainted nodes too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Priority class of the agent pod (e.g. system-node-critical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Extra command-line arguments of both slots (the empty image must ignore them:
    /// a running pod's arguments cannot change, only its images).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_args: Vec<String>,
}

/// Rollout strategy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Strategy {
    /// Most nodes upgrading (or unavailable) at once: a count or a percentage of
    /// the selected nodes, rounded down but at least 1.
    // Optional rather than plain: kube marks int-or-string fields nullable, so
    // an explicit `null` must read as "the default" instead of failing to parse.
    #[serde(default = "default_max_unavailable")]
    #[x_kube(
        validation = Rule::new("type(self) == int || self.matches('^[0-9]+%?$')")
            .message("maxUnavailable must be a whole number or a percentage such as '25%'"),
        validation = Rule::new("type(self) == int ? self > 0 : !self.matches('^0+%?$')")
            .message("maxUnavailable must not be 0 or 0%: the rollout could never progress")
    )]
    pub max_unavailable: Option<IntOrString>,
    /// Number of nodes to keep on the old version (a canary knob); 0 upgrades all.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub partition: i32,
    /// Stops starting new node upgrades; in-flight handovers still finish.
    #[serde(default)]
    pub paused: bool,
    /// How long one node's handover may take before it counts as failed.
    #[serde(default = "default_handover_timeout")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 3600")
        .message("handoverTimeoutSeconds must be between 1 and 3600"))]
    pub handover_timeout_seconds: i32,
    /// What the rollout does when a node's handover fails.
    #[serde(default)]
    pub on_failure: OnFailure,
}

impl Default for Strategy {
    fn default() -> Self {
        Self {
            max_unavailable: default_max_unavailable(),
            partition: 0,
            paused: false,
            handover_timeout_seconds: default_handover_timeout(),
            on_failure: OnFailure::default(),
        }
    }
}

/// Reaction to a failed handover.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnFailure {
    /// Stop starting upgrades; nodes already upgraded stay upgraded.
    #[default]
    Pause,
    /// Hand every upgraded node back to the last fully rolled-out image.
    Rollback,
}

fn default_max_unavailable() -> Option<IntOrString> {
    Some(IntOrString::Int(DEFAULT_MAX_UNAVAILABLE))
}

fn default_handover_timeout() -> i32 {
    DEFAULT_HANDOVER_TIMEOUT_SECONDS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_spec_gets_documented_defaults() {
        let spec: KmeshUpgradeSpec =
            serde_yaml::from_str("agentImage: baton/agent:v2\nemptyImage: baton/empty:1\n")
                .expect("minimal spec parses");
        assert!(spec.node_selector.match_labels.is_empty());
        assert_eq!(spec.strategy, Strategy::default());
        assert_eq!(
            spec.strategy.max_unavailable,
            Some(IntOrString::Int(DEFAULT_MAX_UNAVAILABLE))
        );
        assert_eq!(spec.strategy.handover_timeout_seconds, 120);
        assert_eq!(spec.strategy.on_failure, OnFailure::Pause);
    }

    #[test]
    fn full_spec_round_trips_in_camel_case() {
        let yaml = r#"
nodeSelector: {matchLabels: {baton.dev/mesh: "on"}}
agentImage: baton/agent:v2
emptyImage: baton/empty:1
pod:
  priorityClassName: system-node-critical
  extraArgs: ["--log=debug"]
  tolerations: [{operator: Exists}]
  resources: {requests: {cpu: 100m}}
strategy: {maxUnavailable: "25%", partition: 3, paused: true, handoverTimeoutSeconds: 30, onFailure: Rollback}
"#;
        let spec: KmeshUpgradeSpec = serde_yaml::from_str(yaml).expect("full spec parses");
        assert_eq!(
            spec.strategy.max_unavailable,
            Some(IntOrString::String("25%".into()))
        );
        assert_eq!(spec.strategy.on_failure, OnFailure::Rollback);
        assert_eq!(spec.pod.extra_args, vec!["--log=debug".to_string()]);
        let back = serde_json::to_value(&spec).expect("serializes");
        assert_eq!(back["strategy"]["handoverTimeoutSeconds"], 30);
        assert_eq!(back["nodeSelector"]["matchLabels"]["baton.dev/mesh"], "on");
    }

    #[test]
    fn explicit_null_max_unavailable_is_accepted() {
        let spec: KmeshUpgradeSpec = serde_yaml::from_str(
            "agentImage: a\nemptyImage: e\nstrategy: {maxUnavailable: null}\n",
        )
        .expect("null maxUnavailable parses");
        assert_eq!(spec.strategy.max_unavailable, None);
    }
}
