//! The Helm chart, rendered by real Helm, passes a server-side dry-run apply
//! on a real kube-apiserver (CRD installed for real first), and its uninstall
//! hook (`baton-operator uninstall` with the Job's arguments, as the operator's
//! account under the chart's RBAC) deletes the KmeshUpgrade in the foreground
//! and waits for it and its agent pods.
//!
//! Needs `e2e/cluster/k8s-bins.sh` (or `BATON_SKIP_APISERVER=1`) and the chart
//! test requirements: `pip install -r charts/tests/requirements.txt`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton_operator::crd::KmeshUpgrade;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::Resource;
use serde_json::json;
use support::apiserver::ApiServer;
use support::chart::{self, RELEASE_NAMESPACE};

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
            "pod": {"extraArgs": ["--handover-timeout-ms=20000"], "resources": {"limits": {"memory": "128Mi"}}},
            "strategy": {"maxUnavailable": "25%", "partition": 2, "paused": true,
                         "handoverTimeoutSeconds": 30, "onFailure": "Rollback"}},
            "operator": {"replicas": 2, "image": {"repository": "reg.example/op", "tag": "v9"}}}"#,
        r#"{"agent": {"apiServer": {"host": "192.0.2.10", "port": 6443}, "hostNetwork": true,
                      "cgroup": "/sys/fs/cgroup/unified/baton-test"},
            "operator": {"hostNetwork": true, "nodeName": "cp-1",
                         "apiServer": {"host": "192.0.2.10", "port": 6443},
                         "env": [{"name": "RUST_BACKTRACE", "value": "1"}]}}"#,
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
            kinds.contains(&"KmeshUpgrade")
                && kinds.contains(&"Deployment")
                && kinds.contains(&"Job"),
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

/// Kills the uninstall process if the test ends early.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Running {
    fn child(&mut self) -> &mut Child {
        self.0
            .as_mut()
            .expect("uninstall process not yet collected")
    }

    /// The exit status and output, once it has exited within `limit`.
    fn finish(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let start = Instant::now();
        while self.running() {
            assert!(
                start.elapsed() < limit,
                "baton-operator uninstall still running after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = self
            .0
            .take()
            .expect("uninstall process")
            .wait_with_output()
            .expect("uninstall output");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status, text)
    }

    fn running(&mut self) -> bool {
        self.child()
            .try_wait()
            .expect("waiting for uninstall")
            .is_none()
    }
}

/// Starts the hook's command (the rendered Job's args, `timeout` replaced when
/// given) as the operator's service account.
fn start_hook(server: &ApiServer, timeout: Option<&str>) -> Running {
    let docs = chart::render("{}");
    let job = &chart::of_kind(&docs, &["Job"])[0];
    assert_eq!(
        job["metadata"]["annotations"]["helm.sh/hook"].as_str(),
        Some("pre-delete")
    );
    let pod = &job["spec"]["template"]["spec"];
    let account = pod["serviceAccountName"].as_str().expect("hook account");
    let mut args: Vec<String> = pod["containers"][0]["args"]
        .as_sequence()
        .expect("hook args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_owned())
        .collect();
    if let Some(timeout) = timeout {
        let arg = args
            .iter_mut()
            .find(|a| a.starts_with("--timeout="))
            .expect("the hook passes --timeout");
        *arg = format!("--timeout={timeout}");
    }
    let user = format!("system:serviceaccount:{RELEASE_NAMESPACE}:{account}");
    let child = Command::new(env!("CARGO_BIN_EXE_baton-operator"))
        .args(&args)
        .env("KUBECONFIG", server.kubeconfig_as(&user))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting baton-operator uninstall");
    Running(Some(child))
}

/// Creates the chart's KmeshUpgrade and one agent pod it owns (as the
/// operator would); returns the pod's name.
async fn install_upgrade_and_pod(client: &kube::Client, node: &str) -> String {
    let upgrade = &chart::of_kind(&chart::render("{}"), &["KmeshUpgrade"])[0];
    let upgrade: KmeshUpgrade =
        serde_yaml::from_value(upgrade.clone()).expect("chart KmeshUpgrade");
    let upgrades: Api<KmeshUpgrade> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
    let created = upgrades
        .create(&PostParams::default(), &upgrade)
        .await
        .expect("creating the chart's KmeshUpgrade");
    let owner = created.controller_owner_ref(&()).expect("owner reference");
    let name = format!(
        "{}-{node}",
        created.metadata.name.clone().unwrap_or_default()
    );
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": {"baton.dev/upgrade": created.metadata.name, "app.kubernetes.io/name": "baton-agent"},
            "ownerReferences": [owner],
        },
        "spec": {
            "serviceAccountName": "baton-agent",
            "containers": [{"name": "slot-a", "image": "baton/agent:v1"}],
        },
    }))
    .expect("pod object");
    Api::<Pod>::namespaced(client.clone(), RELEASE_NAMESPACE)
        .create(&PostParams::default(), &pod)
        .await
        .expect("creating the agent pod");
    name
}

/// Polls `check` for up to 20 s.
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The test API server has no garbage collector: the test plays it, in the
/// worst order for the hook (the KmeshUpgrade goes before its pod, as the GC
/// does with owner references that do not block deletion).
#[tokio::test]
async fn uninstall_hook_waits_for_the_kmeshupgrade_and_its_agent_pods() {
    let Some(server) = ApiServer::start().await else {
        return;
    };
    let client = server.client().await;
    support::install_crd(&client).await;
    chart::install_rbac(&client).await;
    let pod_name = install_upgrade_and_pod(&client, "w1").await;
    let upgrades: Api<KmeshUpgrade> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);

    let mut hook = start_hook(&server, None);
    // Foreground: the object stays, being deleted, until its dependents are handled.
    let finalizers = eventually(
        "the KmeshUpgrade to be deleted in the foreground",
        async || {
            let u = upgrades.get("baton").await.ok()?;
            u.metadata.deletion_timestamp.as_ref()?;
            u.metadata.finalizers
        },
    )
    .await;
    assert_eq!(finalizers, ["foregroundDeletion"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(hook.running(), "exited while the KmeshUpgrade still exists");

    // "GC": the owner goes first (its pods do not block it) ...
    upgrades
        .patch(
            "baton",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("removing the foreground finalizer");
    eventually("the KmeshUpgrade to be gone", async || {
        upgrades
            .get_opt("baton")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(hook.running(), "exited while an agent pod still exists");

    // ... then its pod: now the hook may return.
    pods.delete(&pod_name, &DeleteParams::default().grace_period(0))
        .await
        .expect("deleting the agent pod");
    let (status, output) = hook.finish(Duration::from_secs(15));
    assert!(status.success(), "uninstall failed ({status}):\n{output}");

    // Nothing left to delete: still a success (a re-run of the hook, or no release object).
    let (status, output) = start_hook(&server, None).finish(Duration::from_secs(15));
    assert!(
        status.success(),
        "uninstall of nothing failed ({status}):\n{output}"
    );

    // Nobody finishes the deletion: a non-zero exit naming what is left.
    let pod_name = install_upgrade_and_pod(&client, "w2").await;
    let (status, output) = start_hook(&server, Some("2s")).finish(Duration::from_secs(15));
    assert!(
        !status.success(),
        "uninstall succeeded with objects left:\n{output}"
    );
    for needle in [
        "timed out after 2s",
        "foregroundDeletion",
        pod_name.as_str(),
    ] {
        assert!(output.contains(needle), "no {needle:?} in:\n{output}");
    }
}
