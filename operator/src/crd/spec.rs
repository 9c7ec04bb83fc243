//! The desired state of a `KmeshUpgrade`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::{Message, Rule};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::KmeshUpgradeStatus;

/// maxUnavailable when the spec leaves it out: one node at a time.
pub const DEFAULT_MAX_UNAVAILABLE: i32 = 1;
/// Handover timeout when the spec leaves it out.
pub const DEFAULT_HANDOVER_TIMEOUT_SECONDS: i32 = 120;
/// Preflight timeout per node when the spec leaves it out.
pub const DEFAULT_PREFLIGHT_TIMEOUT_SECONDS: i32 = 120;
/// Canary soak when the spec leaves it out.
pub const DEFAULT_SOAK_SECONDS: i32 = 60;
/// Refused connects per million beyond the old rate that fail a canary (0.1 %).
pub const DEFAULT_MAX_REFUSED_PER_MILLION: i32 = 1_000;
/// Connects a canary must see before its refused share is judged.
pub const DEFAULT_MIN_CONNECTS: i64 = 100;

/// Runs the Baton agent as an (active, empty) slot pair on every selected node
/// and hot-upgrades it when `agentImage` changes.
// Every printcolumn repeats `type_ = "integer"`, which clippy mistakes for a
// duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
// The derive takes literals only: a test checks them against baton_api's
// UPGRADE_* constants, which the agent's owner check uses.
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
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.ready"),
    printcolumn(name = "Updated", type_ = "integer", json_path = ".status.updated"),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.failed"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Preflight",
        type_ = "string",
        json_path = ".status.preflight.summary"
    ),
    printcolumn(name = "Canary", type_ = "string", json_path = ".status.canary.phase"),
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
    #[x_kube(
        validation = Rule::new("self.size() > 0").message("agentImage must not be empty"),
        validation = image_reference_rule("agentImage")
    )]
    #[schemars(length(max = 512))]
    pub agent_image: String,
    /// Image parked in the idle slot: it must sleep forever and use no resources.
    #[x_kube(
        validation = Rule::new("self.size() > 0").message("emptyImage must not be empty"),
        validation = image_reference_rule("emptyImage")
    )]
    #[schemars(length(max = 512))]
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
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
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
    /// Address of the API server for the agents, given to both slots as
    /// KUBERNETES_SERVICE_HOST/PORT. Needed where nothing (no kube-proxy)
    /// routes the `kubernetes` Service's ClusterIP, which Baton replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_server: Option<ApiServerAddress>,
    /// Run the agent pod in the node's network namespace. A node datapath
    /// agent must work before and without any CNI and reach a node-local API
    /// server address, as kube-proxy and the Cilium agent do.
    #[serde(default = "default_host_network")]
    pub host_network: bool,
    /// cgroup v2 directory the agents attach to (env BATON_CGROUP); unset means
    /// the root of the cgroup2 mount, i.e. every process of the node. Meant for tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('/')")
        .message("pod.cgroup must be an absolute path"))]
    pub cgroup: Option<String>,
}

// Hand-written because `hostNetwork` defaults to true: a derived Default
// would make a spec without `pod` run the agents off the host network.
impl Default for PodSettings {
    fn default() -> Self {
        Self {
            resources: None,
            tolerations: Vec::new(),
            priority_class_name: None,
            extra_args: Vec::new(),
            api_server: None,
            host_network: default_host_network(),
            cgroup: None,
        }
    }
}

/// Where the agents reach the API server (like Cilium's k8sServiceHost/Port).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ApiServerAddress {
    /// Host name or IP address; it must be in the API server certificate's names.
    #[x_kube(validation = Rule::new("self.size() > 0")
        .message("pod.apiServer.host must not be empty"))]
    pub host: String,
    /// TCP port of the API server (often 6443 or 443).
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535")
        .message("pod.apiServer.port must be between 1 and 65535"))]
    pub port: i32,
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
            .message("maxUnavailable must not be 0 or 0%: the rollout could never progress"),
        // A regex rather than int(): int() of a long digit string overflows and
        // the rule would fail with an evaluation error instead of its message.
        validation = Rule::new(
            "type(self) == int || !self.endsWith('%') || self.matches('^0*([0-9]{1,2}|100)%$')"
        )
        .message("maxUnavailable must not be over 100%")
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
    /// The new image checks itself on each node before its handover there.
    #[serde(default)]
    pub preflight: Preflight,
    /// Upgrade a few nodes first and judge the new image by what their
    /// datapath saw; absent: no canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
}

/// Preflight settings: `baton-agent preflight` of the new image, in a
/// short-lived pod on the node, loads the build's programs through that
/// node's verifier and plans the migration over its live pins, changing
/// nothing. A failure on any node fails the image (onFailure applies)
/// before that node's handover.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Preflight {
    /// When the check runs.
    #[serde(default)]
    pub mode: PreflightMode,
    /// How long one node's check may take (the check pod's start included).
    #[serde(default = "default_preflight_timeout")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 3600")
        .message("preflight.timeoutSeconds must be between 1 and 3600"))]
    pub timeout_seconds: i32,
}

impl Default for Preflight {
    fn default() -> Self {
        Self {
            mode: PreflightMode::default(),
            timeout_seconds: default_preflight_timeout(),
        }
    }
}

/// When the preflight of a new image runs.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PreflightMode {
    /// On every node to upgrade, all of them before the first handover.
    #[default]
    AllNodes,
    /// On each node right before its own handover.
    EachNode,
    /// No preflight.
    Disabled,
}

/// Canary settings: the first `nodes` nodes upgrade, then the rollout waits
/// `soakSeconds` while their agents report what the datapath saw since
/// their handover; a threshold crossed (or an agent restart) fails the image
/// and onFailure applies.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Canary {
    /// Nodes upgraded first.
    #[serde(default = "default_canary_nodes")]
    #[x_kube(validation = Rule::new("self >= 1").message("canary.nodes must be at least 1"))]
    pub nodes: i32,
    /// How long the canaries run the new image before the rollout goes on.
    #[serde(default = "default_soak_seconds")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 86400")
        .message("canary.soakSeconds must be between 0 and 86400"))]
    pub soak_seconds: i32,
    /// Most refused connects to a VIP, per million, beyond the rate the old
    /// agent saw before its handover.
    #[serde(default = "default_max_refused_ppm")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 1000000")
        .message("canary.maxRefusedPerMillion must be between 0 and 1000000"))]
    pub max_refused_per_million: i32,
    /// Fewest connects to a VIP a canary must see to judge its refused
    /// share; below it the share is reported but not judged.
    #[serde(default = "default_min_connects")]
    #[schemars(range(min = 0))]
    pub min_connects: i64,
    /// Most failed syncs of a canary agent during the soak.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub max_sync_errors: i64,
}

impl Default for Canary {
    fn default() -> Self {
        Self {
            nodes: default_canary_nodes(),
            soak_seconds: default_soak_seconds(),
            max_refused_per_million: default_max_refused_ppm(),
            min_connects: default_min_connects(),
            max_sync_errors: 0,
        }
    }
}

impl Default for Strategy {
    fn default() -> Self {
        Self {
            max_unavailable: default_max_unavailable(),
            partition: 0,
            paused: false,
            handover_timeout_seconds: default_handover_timeout(),
            on_failure: OnFailure::default(),
            preflight: Preflight::default(),
            canary: None,
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

fn default_preflight_timeout() -> i32 {
    DEFAULT_PREFLIGHT_TIMEOUT_SECONDS
}

fn default_canary_nodes() -> i32 {
    1
}

fn default_soak_seconds() -> i32 {
    DEFAULT_SOAK_SECONDS
}

fn default_max_refused_ppm() -> i32 {
    DEFAULT_MAX_REFUSED_PER_MILLION
}

fn default_min_connects() -> i64 {
    DEFAULT_MIN_CONNECTS
}

fn default_host_network() -> bool {
    true
}

/// A well-formed image reference, after the grammar of
/// github.com/distribution/reference (RE2 syntax, as CEL's `matches` uses):
///
/// ```text
/// reference := [domain "/"] path [":" tag] ["@" digest]
/// domain    := host [":" port]      host: DNS labels joined by ".", any case
/// path      := component ("/" component)*
/// component := [a-z0-9]+ (separator [a-z0-9]+)*    separator: "." "_" "__" "-"+
/// tag       := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
/// digest    := "sha256:" 64 lowercase hex digits
/// ```
///
/// The image fields also carry `maxLength: 512` (a 255-character name, a
/// 128-character tag and a digest fit): without a bound the API server
/// estimates the regex's cost on a 3 MiB string and refuses the CRD.
///
/// Not accepted: IPv6 registry hosts (`[::1]:5000/…`) and digests other than
/// sha256. The kubelet would refuse anything outside the grammar with
/// InvalidImageName only once a pod exists; here the API server refuses it.
pub const IMAGE_REFERENCE_REGEX: &str = concat!(
    "^",
    // Optional registry: DNS labels (alphanumerics, inner hyphens) joined by dots, optional port.
    "([a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?([.][a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*(:[0-9]+)?/)?",
    // First path component: lowercase alphanumerics with single separators between them.
    "[a-z0-9]+(([._]|__|[-]+)[a-z0-9]+)*",
    // Further path components, each after a slash.
    "(/[a-z0-9]+(([._]|__|[-]+)[a-z0-9]+)*)*",
    // Optional tag: a word character, then up to 127 word characters, dots or hyphens.
    "(:[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127})?",
    // Optional digest.
    "(@sha256:[a-f0-9]{64})?",
    "$",
);

/// The CEL rule that `field` holds a well-formed image reference.
fn image_reference_rule(field: &str) -> Rule {
    Rule::new(format!("self.matches('{IMAGE_REFERENCE_REGEX}')")).message(Message::Message(
        format!(
            "{field} must be an image reference such as registry.example:5000/baton/agent:v1.2 \
             (lowercase path, optional :tag, optional @sha256:<64 hex digits>), without spaces"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crd_is_where_the_agent_looks_for_its_owner() {
        use baton_api::pairpod::{UPGRADE_GROUP, UPGRADE_KIND, UPGRADE_PLURAL, UPGRADE_VERSION};
        use kube::Resource;
        assert_eq!(KmeshUpgrade::group(&()), UPGRADE_GROUP);
        assert_eq!(KmeshUpgrade::version(&()), UPGRADE_VERSION);
        assert_eq!(KmeshUpgrade::kind(&()), UPGRADE_KIND);
        assert_eq!(KmeshUpgrade::plural(&()), UPGRADE_PLURAL);
    }

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
  extraArgs: ["--handover-timeout-ms=20000"]
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
        assert_eq!(
            spec.pod.extra_args,
            vec!["--handover-timeout-ms=20000".to_string()]
        );
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
