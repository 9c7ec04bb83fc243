//! The KmeshUpgrade CRD on a real kube-apiserver: valid objects are accepted
//! (with defaults), every CEL rule rejects what it should with its message.
//!
//! Needs `e2e/cluster/k8s-bins.sh` to have run (or `BATON_SKIP_APISERVER=1`).

mod support;

use baton_operator::crd::{KmeshUpgrade, OnFailure};
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
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
                    "extraArgs": ["--log=debug"]
                },
                "strategy": {"maxUnavailable": 2, "partition": 0, "paused": true,
                             "handoverTimeoutSeconds": 1, "onFailure": "Pause"}
            }),
        ),
    ];
    for (name, spec) in accepted {
        dynamic
            .create(&pp, &object(name, spec.clone()))
            .await
            .unwrap_or_else(|e| panic!("valid spec {name} refused: {e}\nspec: {spec}"));
        typed
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("{name} does not read back into the Rust types: {e}"));
    }

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
    ];
    let mut wrong = Vec::new();
    for (name, spec, message) in rejected {
        match dynamic.create(&pp, &object(name, spec.clone())).await {
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
