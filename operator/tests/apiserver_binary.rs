//! The `baton-operator run` binary, started with the arguments of the chart's
//! Deployment and the operator's service account, against a real API server:
//! it elects itself leader, creates agent pods, serves metrics and health, and
//! stops cleanly on SIGTERM.
//!
//! Needs `e2e/cluster/k8s-bins.sh` (or `BATON_SKIP_APISERVER=1`) and the chart
//! test requirements (`pip install -r charts/tests/requirements.txt`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use support::apiserver::ApiServer;
use support::chart::RELEASE_NAMESPACE;

/// Kills the operator if the test ends early.
struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).ok()?;
    Some(out)
}

async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(40) {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn operator_binary_runs_with_the_charts_arguments() {
    let Some(server) = ApiServer::start().await else {
        return;
    };
    let client = server.client().await;
    support::install_crd(&client).await;
    support::chart::install_rbac(&client).await;

    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut args = chart_args();
    assert_eq!(args[0], "run");
    let metrics = args
        .iter_mut()
        .find(|a| a.starts_with("--metrics-addr="))
        .expect("chart passes --metrics-addr");
    // Same flag, a free loopback port instead of the container's 9090.
    *metrics = format!("--metrics-addr=127.0.0.1:{port}");
    let log = std::fs::File::create(server.dir().join("operator.log")).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_baton-operator"))
        .args(&args)
        .env(
            "KUBECONFIG",
            server.kubeconfig_as("system:serviceaccount:baton-system:baton-operator"),
        )
        .env("POD_NAME", "baton-operator-0")
        .env("POD_NAMESPACE", RELEASE_NAMESPACE)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .expect("starting baton-operator");
    let mut operator = Operator(child);
    let log_tail =
        || std::fs::read_to_string(server.dir().join("operator.log")).unwrap_or_default();

    eventually("/healthz", async || {
        http_get(port, "/healthz").filter(|r| r.ends_with("ok\n"))
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
    let holder = eventually("the operator to take the lease", async || {
        leases
            .get("baton-operator")
            .await
            .ok()?
            .spec?
            .holder_identity
    })
    .await;
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
    eventually("the agent pod", async || {
        let list = pods.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|p| p.metadata.name.as_deref() == Some("baton-w1"))
    })
    .await;
    let metrics = eventually("create_pod in /metrics", async || {
        http_get(port, "/metrics")
            .filter(|m| m.contains(r#"baton_operator_actions_total{action="create_pod"} 1"#))
    })
    .await;
    assert!(metrics.contains("baton_operator_nodes{"), "{metrics}");

    // SIGTERM: the controller drains and the process exits successfully.
    let pid = i32::try_from(operator.0.id()).expect("pid fits");
    // SAFETY: signalling our own child by pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = operator.0.try_wait().expect("waiting for operator") {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no exit after SIGTERM\n{}",
            log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        status.success(),
        "operator exited with {status}\n{}",
        log_tail()
    );
}
