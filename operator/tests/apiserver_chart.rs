//! The Helm chart, rendered by real Helm, passes a server-side dry-run apply
//! on a real kube-apiserver (CRD installed for real first).
//!
//! Needs `e2e/cluster/k8s-bins.sh` (or `BATON_SKIP_APISERVER=1`) and the chart
//! test requirements: `pip install -r charts/tests/requirements.txt`.

mod support;

use support::apiserver::ApiServer;
use support::chart;

#[tokio::test]
async fn rendered_chart_passes_server_side_dry_run() {
    let Some(server) = ApiServer::start().await else {
        return;
    };
    let client = server.client().await;
    chart::create_release_namespace(&client).await;

    let variants = [
        "{}",
        r#"{"upgrade": {"nodeSelector": {"baton.dev/mesh": "on"},
            "pod": {"extraArgs": ["--log=debug"], "resources": {"limits": {"memory": "128Mi"}}},
            "strategy": {"maxUnavailable": "25%", "partition": 2, "paused": true,
                         "handoverTimeoutSeconds": 30, "onFailure": "Rollback"}},
            "operator": {"replicas": 2, "image": {"repository": "reg.example/op", "tag": "v9"}}}"#,
    ];
    for values in variants {
        let docs = chart::render(values);
        assert_eq!(
            chart::install_crds(&client, &docs).await,
            1,
            "the chart ships exactly the KmeshUpgrade CRD"
        );
        let objects: Vec<_> = docs
            .iter()
            .filter(|d| d["kind"].as_str() != Some("CustomResourceDefinition"))
            .cloned()
            .collect();
        let kinds: Vec<_> = objects.iter().filter_map(|d| d["kind"].as_str()).collect();
        assert!(
            kinds.contains(&"KmeshUpgrade") && kinds.contains(&"Deployment"),
            "{kinds:?}"
        );
        let failures = chart::apply(&client, &objects, true).await;
        assert!(
            failures.is_empty(),
            "dry-run apply refused (values {values}):\n{}",
            failures.join("\n")
        );
    }

    // The dry run must really validate: a KmeshUpgrade that breaks a CEL rule is refused.
    let mut bad = chart::of_kind(&chart::render("{}"), &["KmeshUpgrade"]);
    bad[0]["spec"]["emptyImage"] = bad[0]["spec"]["agentImage"].clone();
    let failures = chart::apply(&client, &bad, true).await;
    assert!(
        failures.len() == 1 && failures[0].contains("agentImage and emptyImage must differ"),
        "{failures:?}"
    );
}
