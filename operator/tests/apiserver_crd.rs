//! The KmeshUpgrade CRD on a real kube-apiserver: valid objects are accepted
//! (with defaults), every CEL rule rejects what it should with its message.
//!
//! Needs `e2e/cluster/k8s-bins.sh` to have run (or `BATON_SKIP_APISERVER=1`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics

mod support;

use baton_operator::crd::{KmeshUpgrade, OnFailure};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{
    Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams, ValidationDirective,
};
use serde_json::{json, Value};
use support::apiserver::ApiServer;

const NS: &str = "default";

fn object(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "baton.dev/v1alpha1",
        "kind": "KmeshUpgrade",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }))
    .expect("valid object shape")
}

fn base_spec() -> Value {
    json!({"agentImage": "baton/agent:v2", "emptyImage": "baton/empty:1"})
}

/// `base_spec` with `strategy` fields merged in.
fn with_strategy(strategy: Value) -> Value {
    let mut spec = base_spec();
    spec["strategy"] = strategy;
    spec
}

/// `base_spec` with `pod` set.
fn with_pod(pod: Value) -> Value {
    let mut spec = base_spec();
    spec["pod"] = pod;
    spec
}

/// `base_spec` with `agentImage` (and `emptyImage` when given) replaced.
fn with_images(agent: &str, empty: Option<&str>) -> Value {
    let mut spec = base_spec();
    spec["agentImage"] = json!(agent);
    if let Some(empty) = empty {
        spec["emptyImage"] = json!(empty);
    }
    spec
}

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Well-formed references (distribution grammar), each accepted as agentImage.
fn valid_images() -> Vec<String> {
    vec![
        "agent".into(),
        "ghcr.io/baton-dev/baton-agent:0.2.0".into(),
        "localhost:5000/baton-agent".into(),
        "registry.example:5000/team/baton__agent.x-y:V1.2_rc-3".into(),
        "Registry.Example/baton/agent:latest".into(),
        "a--b/c_d/e.f".into(),
        format!("baton/agent@{DIGEST}"),
        format!("ghcr.io/baton-dev/baton-agent:0.2.0@{DIGEST}"),
        format!("baton/agent:{}", "t".repeat(128)),
    ]
}

/// Malformed references: the kubelet would refuse each with InvalidImageName.
fn invalid_images() -> Vec<String> {
    vec![
        "baton/agent: v2".into(),
        "baton agent:v2".into(),
        " baton/agent:v2".into(),
        "baton/agent:v2 ".into(),
        "baton/agent:v2\n".into(),
        "Baton/Agent:v1".into(),
        "baton/agent:".into(),
        "baton/agent:-v1".into(),
        format!("baton/agent:{}", "t".repeat(129)),
        "baton/agent@sha256:abc".into(),
        format!("baton/agent@sha512:{}", "0".repeat(128)),
        "baton//agent".into(),
        "baton/agent/".into(),
        "baton/-agent".into(),
        "baton/agent..x".into(),
        "https://ghcr.io/baton/agent".into(),
        "ghcr.io:port/baton/agent".into(),
        "-registry.example/agent".into(),
    ]
}

#[tokio::test]
async fn kmeshupgrade_crd_validates_on_a_real_apiserver() {
    let Some(server) = ApiServer::start().await else {
        return;
    };
    let client = server.client().await;
    support::install_crd(&client).await;
    let ar = ApiResource::erase::<KmeshUpgrade>(&());
    let dynamic: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &ar);
    let typed: Api<KmeshUpgrade> = Api::namespaced(client.clone(), NS);
    let pp = PostParams::default();

    // Accepted, with the schema's defaults filled in by the server.
    dynamic
        .create(&pp, &object("minimal", base_spec()))
        .await
        .unwrap_or_else(|e| panic!("minimal spec refused: {e}"));
    let read = typed.get("minimal").await.expect("typed read back");
    assert_eq!(read.spec.strategy.handover_timeout_seconds, 120);
    assert_eq!(read.spec.strategy.on_failure, OnFailure::Pause);
    assert_eq!(
        serde_json::to_value(&read.spec.strategy.max_unavailable).expect("serializes"),
        json!(1)
    );

    let accepted = [
        (
            "pct",
            with_strategy(json!({"maxUnavailable": "25%", "partition": 3})),
        ),
        (
            "count-string",
            with_strategy(json!({"maxUnavailable": "7"})),
        ),
        (
            "bounds",
            with_strategy(json!({"handoverTimeoutSeconds": 3600, "onFailure": "Rollback"})),
        ),
        ("null-max", with_strategy(json!({"maxUnavailable": null}))),
        ("pct-100", with_strategy(json!({"maxUnavailable": "100%"}))),
        ("pct-007", with_strategy(json!({"maxUnavailable": "007%"}))),
        // A count above the fleet is fine: it is capped at the fleet.
        ("count-150", with_strategy(json!({"maxUnavailable": "150"}))),
        ("int-150", with_strategy(json!({"maxUnavailable": 150}))),
        (
            "gates",
            with_strategy(
                json!({"preflight": {"mode": "EachNode", "timeoutSeconds": 3600},
                                 "canary": {"nodes": 3, "soakSeconds": 0,
                                            "maxRefusedPerMillion": 1000000,
                                            "minConnects": 0, "maxSyncErrors": 5}}),
            ),
        ),
        (
            "canary-defaults",
            with_strategy(json!({"canary": {}, "preflight": {"mode": "Disabled"}})),
        ),
        (
            "api-dns",
            with_pod(json!({"apiServer": {"host": "api.example", "port": 443}})),
        ),
        (
            "api-v6",
            with_pod(json!({"apiServer": {"host": "fd00::1", "port": 65535}})),
        ),
        (
            "full",
            json!({
                "nodeSelector": {"matchLabels": {"baton.dev/mesh": "on"}},
                "agentImage": "baton/agent:v2",
                "emptyImage": "baton/empty:1",
                "pod": {
                    "resources": {"requests": {"cpu": "100m", "memory": 64}},
                    "tolerations": [{"operator": "Exists"}],
                    "priorityClassName": "system-node-critical",
                    "extraArgs": ["--handover-timeout-ms=20000"],
                    "apiServer": {"host": "192.0.2.10", "port": 6443},
                    "hostNetwork": false,
                    "cgroup": "/sys/fs/cgroup/unified/baton-test"
                },
                "strategy": {"maxUnavailable": 2, "partition": 0, "paused": true,
                             "handoverTimeoutSeconds": 1, "onFailure": "Pause"}
            }),
        ),
    ];
    let images = valid_images()
        .into_iter()
        .enumerate()
        .map(|(i, image)| (format!("image-{i}"), with_images(&image, None)))
        // The same grammar guards emptyImage.
        .chain([(
            "empty-image-digest".to_owned(),
            with_images("baton/agent:v2", Some(&format!("baton/empty@{DIGEST}"))),
        )]);
    let accepted = accepted
        .into_iter()
        .map(|(name, spec)| (name.to_owned(), spec))
        .chain(images);
    for (name, spec) in accepted {
        dynamic
            .create(&pp, &object(&name, spec.clone()))
            .await
            .unwrap_or_else(|e| panic!("valid spec {name} refused: {e}\nspec: {spec}"));
        typed
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("{name} does not read back into the Rust types: {e}"));
    }
    // hostNetwork defaults to true on the server, with or without `pod`.
    for name in ["minimal", "api-dns"] {
        let raw = dynamic.get(name).await.expect("raw read back");
        assert_eq!(
            raw.data["spec"]["pod"]["hostNetwork"],
            json!(true),
            "{name}"
        );
    }
    let full = typed.get("full").await.expect("typed read back");
    assert!(!full.spec.pod.host_network);
    assert_eq!(
        full.spec.pod.cgroup.as_deref(),
        Some("/sys/fs/cgroup/unified/baton-test")
    );

    // Rejected, each with the message of the rule that caught it.
    let mut same_images = base_spec();
    same_images["emptyImage"] = json!("baton/agent:v2");
    let mut empty_agent = base_spec();
    empty_agent["agentImage"] = json!("");
    let mut empty_empty = base_spec();
    empty_empty["emptyImage"] = json!("");
    let rejected = [
        (
            "same-images",
            same_images,
            "agentImage and emptyImage must differ",
        ),
        ("empty-agent", empty_agent, "agentImage must not be empty"),
        ("empty-empty", empty_empty, "emptyImage must not be empty"),
        (
            "max-words",
            with_strategy(json!({"maxUnavailable": "ten"})),
            "maxUnavailable must be a whole number or a percentage",
        ),
        (
            "max-neg",
            with_strategy(json!({"maxUnavailable": "-1"})),
            "maxUnavailable must be a whole number or a percentage",
        ),
        (
            "max-frac",
            with_strategy(json!({"maxUnavailable": "2.5%"})),
            "maxUnavailable must be a whole number or a percentage",
        ),
        (
            "max-zero-pct",
            with_strategy(json!({"maxUnavailable": "0%"})),
            "maxUnavailable must not be 0 or 0%",
        ),
        (
            "max-zero-str",
            with_strategy(json!({"maxUnavailable": "00"})),
            "maxUnavailable must not be 0 or 0%",
        ),
        (
            "max-zero-int",
            with_strategy(json!({"maxUnavailable": 0})),
            "maxUnavailable must not be 0 or 0%",
        ),
        (
            "max-neg-int",
            with_strategy(json!({"maxUnavailable": -3})),
            "maxUnavailable must not be 0 or 0%",
        ),
        (
            "timeout-zero",
            with_strategy(json!({"handoverTimeoutSeconds": 0})),
            "handoverTimeoutSeconds must be between 1 and 3600",
        ),
        (
            "timeout-long",
            with_strategy(json!({"handoverTimeoutSeconds": 3601})),
            "handoverTimeoutSeconds must be between 1 and 3600",
        ),
        (
            "partition-neg",
            with_strategy(json!({"partition": -1})),
            "should be greater than or equal to 0",
        ),
        (
            "on-failure",
            with_strategy(json!({"onFailure": "Explode"})),
            "Unsupported value: \"Explode\"",
        ),
        ("no-images", json!({}), "spec.agentImage: Required value"),
        (
            "preflight-mode",
            with_strategy(json!({"preflight": {"mode": "Sometimes"}})),
            "Unsupported value: \"Sometimes\"",
        ),
        (
            "preflight-timeout",
            with_strategy(json!({"preflight": {"timeoutSeconds": 0}})),
            "preflight.timeoutSeconds must be between 1 and 3600",
        ),
        (
            "canary-nodes",
            with_strategy(json!({"canary": {"nodes": 0}})),
            "canary.nodes must be at least 1",
        ),
        (
            "canary-soak",
            with_strategy(json!({"canary": {"soakSeconds": 86401}})),
            "canary.soakSeconds must be between 0 and 86400",
        ),
        (
            "canary-ppm",
            with_strategy(json!({"canary": {"maxRefusedPerMillion": 1000001}})),
            "canary.maxRefusedPerMillion must be between 0 and 1000000",
        ),
        (
            "canary-min-connects",
            with_strategy(json!({"canary": {"minConnects": -1}})),
            "should be greater than or equal to 0",
        ),
        (
            "pct-150",
            with_strategy(json!({"maxUnavailable": "150%"})),
            "maxUnavailable must not be over 100%",
        ),
        (
            "pct-101",
            with_strategy(json!({"maxUnavailable": "101%"})),
            "maxUnavailable must not be over 100%",
        ),
        (
            "pct-huge",
            with_strategy(json!({"maxUnavailable": "99999999999999999999%"})),
            "maxUnavailable must not be over 100%",
        ),
        (
            "api-port-zero",
            with_pod(json!({"apiServer": {"host": "192.0.2.10", "port": 0}})),
            "pod.apiServer.port must be between 1 and 65535",
        ),
        (
            "api-port-high",
            with_pod(json!({"apiServer": {"host": "192.0.2.10", "port": 65536}})),
            "pod.apiServer.port must be between 1 and 65535",
        ),
        (
            "api-host-empty",
            with_pod(json!({"apiServer": {"host": "", "port": 6443}})),
            "pod.apiServer.host must not be empty",
        ),
        (
            "api-no-port",
            with_pod(json!({"apiServer": {"host": "192.0.2.10"}})),
            "spec.pod.apiServer.port: Required value",
        ),
        (
            "cgroup-relative",
            with_pod(json!({"cgroup": "sys/fs/cgroup"})),
            "pod.cgroup must be an absolute path",
        ),
    ];
    let bad_images = invalid_images()
        .into_iter()
        .enumerate()
        .flat_map(|(i, image)| {
            [
                (
                    format!("bad-agent-image-{i}"),
                    with_images(&image, None),
                    "agentImage must be an image reference",
                ),
                (
                    format!("bad-empty-image-{i}"),
                    with_images("baton/agent:v2", Some(&image)),
                    "emptyImage must be an image reference",
                ),
            ]
        });
    let rejected = rejected
        .into_iter()
        .map(|(name, spec, message)| (name.to_owned(), spec, message))
        .chain(bad_images);
    let mut wrong = Vec::new();
    for (name, spec, message) in rejected {
        match dynamic.create(&pp, &object(&name, spec.clone())).await {
            Ok(_) => wrong.push(format!(
                "{name}: accepted, expected {message:?}\n  spec: {spec}"
            )),
            Err(kube::Error::Api(status))
                if status.code == 422 && status.message.contains(message) => {}
            Err(e) => wrong.push(format!("{name}: expected 422 with {message:?}, got {e}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "CEL/schema validation mismatches:\n{}",
        wrong.join("\n")
    );
}

/// The repository's sample `kmeshupgrade.yaml` passes the CRD's validation
/// as `kubectl apply --server-side` sends it, with strict field validation (a
/// misspelt field fails instead of being dropped), and reads back unchanged.
#[tokio::test]
async fn sample_kmeshupgrade_is_accepted_by_a_real_apiserver() {
    let Some(server) = ApiServer::start().await else {
        return;
    };
    let client = server.client().await;
    support::install_crd(&client).await;
    let path = support::repo_root().join("kmeshupgrade.yaml");
    let text = std::fs::read_to_string(&path).expect("reading the sample");
    let sample: DynamicObject = serde_yaml::from_str(&text).expect("sample parses");
    let namespace = sample
        .metadata
        .namespace
        .clone()
        .expect("sample has a namespace");
    let name = sample.metadata.name.clone().expect("sample has a name");
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": namespace}})).expect("namespace object");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("creating the sample's namespace");

    let ar = ApiResource::erase::<KmeshUpgrade>(&());
    let dynamic: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &ar);
    let params = PatchParams::apply("kubectl").validation(ValidationDirective::Strict);
    dynamic
        .patch(&name, &params, &Patch::Apply(&sample))
        .await
        .unwrap_or_else(|e| panic!("the API server refused {}: {e}", path.display()));
    let read = Api::<KmeshUpgrade>::namespaced(client, &namespace)
        .get(&name)
        .await
        .expect("typed read back");
    let parsed: KmeshUpgrade = serde_yaml::from_str(&text).expect("typed parse");
    assert_eq!(
        read.spec, parsed.spec,
        "the server changed or dropped part of the sample"
    );
}
