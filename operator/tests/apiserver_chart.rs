//! The Helm chart, rendered by real Helm, passes a server-side dry-run apply
//! on a real kube-apiserver (CRD installed for real first).
//!
//! Needs `e2e/cluster/k8s-bins.sh` (or `BATON_SKIP_APISERVER=1`) and the chart
//! test requirements: `pip install -r charts/tests/requirements.txt`.

mod support;

use std::process::Command;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use serde::Deserialize;
use support::apiserver::ApiServer;

const NAMESPACE: &str = "baton-system";

/// Renders the chart through charts/tests/render_chart.py into YAML documents.
fn render(values: &str) -> Vec<serde_yaml::Value> {
    let script = support::repo_root().join("charts/tests/render_chart.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg(&script)
        .args(["--namespace", NAMESPACE, "--set-json", values])
        .output()
        .unwrap_or_else(|e| panic!("running {python} {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "rendering the chart failed ({}); install the chart test requirements with\n  \
         pip install -r charts/tests/requirements.txt\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("rendered chart is UTF-8");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_yaml::Value::deserialize(doc).expect("rendered YAML parses"))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// Server-side dry-run applies every document; returns "kind/name: error" lines.
async fn dry_run_all(client: &kube::Client, docs: &[serde_yaml::Value]) -> Vec<String> {
    let mut failures = Vec::new();
    for doc in docs {
        let obj: DynamicObject =
            serde_yaml::from_value(doc.clone()).expect("rendered object has metadata");
        let types = obj
            .types
            .clone()
            .expect("rendered object has apiVersion/kind");
        let gvk = GroupVersionKind::try_from(&types).expect("apiVersion parses");
        let name = obj
            .metadata
            .name
            .clone()
            .expect("rendered object has a name");
        let what = format!("{}/{name}", types.kind);
        let (ar, caps) = match discovery::pinned_kind(client, &gvk).await {
            Ok(found) => found,
            Err(e) => {
                failures.push(format!("{what}: kind not served: {e}"));
                continue;
            }
        };
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Cluster => Api::all_with(client.clone(), &ar),
            Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                obj.metadata.namespace.as_deref().unwrap_or(NAMESPACE),
                &ar,
            ),
        };
        let params = PatchParams::apply(support::MANAGER).dry_run();
        if let Err(e) = api.patch(&name, &params, &Patch::Apply(&obj)).await {
            failures.push(format!("{what}: {e}"));
        }
    }
    failures
}

#[tokio::test]
async fn rendered_chart_passes_server_side_dry_run() {
    let Some(server) = ApiServer::start().await else {
        return;
    };
    let client = server.client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": NAMESPACE}}))
            .expect("namespace object");
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("creating the release namespace");

    let variants = [
        "{}",
        r#"{"upgrade": {"nodeSelector": {"baton.dev/mesh": "on"},
            "pod": {"extraArgs": ["--log=debug"], "resources": {"limits": {"memory": "128Mi"}}},
            "strategy": {"maxUnavailable": "25%", "partition": 2, "paused": true,
                         "handoverTimeoutSeconds": 30, "onFailure": "Rollback"}},
            "operator": {"replicas": 2, "image": {"repository": "reg.example/op", "tag": "v9"}}}"#,
    ];
    for values in variants {
        let docs = render(values);
        let (crds, objects): (Vec<_>, Vec<_>) = docs
            .into_iter()
            .partition(|d| d["kind"].as_str() == Some("CustomResourceDefinition"));
        assert_eq!(
            crds.len(),
            1,
            "the chart ships exactly the KmeshUpgrade CRD"
        );
        // Helm installs crds/ for real before templates; so do we.
        for crd in &crds {
            let crd: CustomResourceDefinition =
                serde_yaml::from_value(crd.clone()).expect("chart CRD parses");
            support::apply_and_wait_established(&client, &crd).await;
        }
        let kinds: Vec<_> = objects.iter().filter_map(|d| d["kind"].as_str()).collect();
        assert!(
            kinds.contains(&"KmeshUpgrade") && kinds.contains(&"Deployment"),
            "{kinds:?}"
        );
        let failures = dry_run_all(&client, &objects).await;
        assert!(
            failures.is_empty(),
            "dry-run apply refused (values {values}):\n{}",
            failures.join("\n")
        );
    }

    // The dry run must really validate: a KmeshUpgrade that breaks a CEL rule is refused.
    let mut bad = render("{}")
        .into_iter()
        .find(|d| d["kind"].as_str() == Some("KmeshUpgrade"))
        .expect("default render has a KmeshUpgrade");
    bad["spec"]["emptyImage"] = bad["spec"]["agentImage"].clone();
    let failures = dry_run_all(&client, &[bad]).await;
    assert!(
        failures.len() == 1 && failures[0].contains("agentImage and emptyImage must differ"),
        "{failures:?}"
    );
}
