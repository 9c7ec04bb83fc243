//! The `baton-operator run` binary, started by the e2e kit's launcher
//! (`baton_e2e::kit::OperatorCmd`, whose arguments are checked against the
//! chart's Deployment's) with the operator's service account, against a real
//! API server: it elects itself leader, creates agent pods, serves metrics and
//! health, and stops cleanly on SIGTERM.
//!
//! Needs `e2e/cluster/k8s-bins.sh` (or `BATON_SKIP_APISERVER=1`) and the chart
//! test requirements (`pip install -r charts/tests/requirements.txt`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use baton_e2e::kit::wait::eventually;
use baton_e2e::kit::OperatorCmd;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use support::apiserver::ApiServer;
use support::chart::RELEASE_NAMESPACE;

/// Longest wait for each step.
const WAIT: Duration = Duration::from_secs(40);

/// The operator container's args from the rendered chart.
fn chart_args() -> Vec<String> {
    let docs = support::chart::render("{}");
    let deployment = &support::chart::of_kind(&docs, &["Deployment"])[0];
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .expect("operator args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_owned())
        .collect()
}

fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).ok()?;
    Some(out)
}

#[tokio::test]
async fn operator_binary_runs_with_the_charts_arguments() {
    let Some(server) = ApiServer::start().await else {
        return;
    };
    let client = server.client().await;
    support::install_crd(&client).await;
    support::chart::install_rbac(&client).await;

    let cmd = OperatorCmd::new(
        &server.kubeconfig_as("system:serviceaccount:baton-system:baton-operator"),
        RELEASE_NAMESPACE,
        "baton-operator-0",
    )
    .unwrap();
    let metrics = cmd.metrics_addr();
    // The kit's arguments are the chart's, with a free loopback port for
    // the container's metrics address.
    let mut chart = chart_args();
    assert_eq!(chart[0], "run");
    let addr = chart
        .iter_mut()
        .find(|a| a.starts_with("--metrics-addr="))
        .expect("chart passes --metrics-addr");
    *addr = format!("--metrics-addr={metrics}");
    let kit: Vec<String> = cmd
        .command()
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        kit, chart,
        "the kit's operator arguments differ from the chart's"
    );
    let operator = cmd.spawn(&server.dir().join("operator.log")).unwrap();

    eventually(
        "/healthz",
        WAIT,
        || operator.logs(),
        async || http_get(metrics, "/healthz").filter(|r| r.ends_with("ok\n")),
    )
    .await
    .unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
    let holder = eventually(
        "the operator to take the lease",
        WAIT,
        || operator.logs(),
        async || {
            leases
                .get("baton-operator")
                .await
                .ok()?
                .spec?
                .holder_identity
        },
    )
    .await
    .unwrap();
    assert_eq!(holder, "baton-operator-0");

    let node: Node = serde_json::from_value(json!({"metadata": {"name": "w1"}})).expect("node");
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .expect("creating node");
    let upgrade = serde_json::from_value(json!({
        "apiVersion": "baton.dev/v1alpha1", "kind": "KmeshUpgrade",
        "metadata": {"name": "baton", "namespace": RELEASE_NAMESPACE},
        "spec": {"agentImage": "agent:v1", "emptyImage": "empty:1"}}))
    .expect("upgrade");
    Api::<baton_operator::crd::KmeshUpgrade>::namespaced(client.clone(), RELEASE_NAMESPACE)
        .create(&PostParams::default(), &upgrade)
        .await
        .expect("creating KmeshUpgrade");
    let pods: Api<Pod> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
    eventually(
        "the agent pod",
        WAIT,
        || operator.logs(),
        async || {
            let list = pods.list(&ListParams::default()).await.ok()?;
            list.items
                .into_iter()
                .find(|p| p.metadata.name.as_deref() == Some("baton-w1"))
        },
    )
    .await
    .unwrap();
    let scraped = eventually(
        "create_pod in /metrics",
        WAIT,
        || operator.logs(),
        async || {
            http_get(metrics, "/metrics")
                .filter(|m| m.contains(r#"baton_operator_actions_total{action="create_pod"} 1"#))
        },
    )
    .await
    .unwrap();
    assert!(scraped.contains("baton_operator_nodes{"), "{scraped}");

    // SIGTERM: the controller drains and the process exits successfully.
    let pid = i32::try_from(operator.process().pid()).expect("pid fits");
    assert!(operator.process().alive(), "the operator is gone");
    // SAFETY: signalling our own child, not reaped yet (it is alive), by pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = eventually(
        "the operator's exit after SIGTERM",
        Duration::from_secs(20),
        || operator.logs(),
        async || operator.process().exited(),
    )
    .await
    .unwrap();
    assert!(
        status.success(),
        "operator exited with {status}\n{}",
        operator.logs()
    );
}
