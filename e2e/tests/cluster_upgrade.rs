//! Cluster scenarios on a real kube-apiserver: the real `baton-operator`
//! reconciles a `KmeshUpgrade` into agent pair pods, and the node shim plays
//! the kubelet for the fake nodes, running each slot as a local process.
//!
//! Here now, with a stand-in for the agent image (`baton-node-shim record`,
//! which records its env and idles):
//!
//! * **fresh install**: pods appear on the selected nodes only, one active
//!   slot each (slot a on the agent image, slot b idle on the empty image),
//!   the downward API hands each slot its identity, and the status counts
//!   every node updated and ready (`Complete`).
//!
//! Next, once the agent does the handover (map the agent images to the real
//! `baton-agent` with `--image IMAGE=<baton-agent> run`, bpffs mounted at
//! `<root>/<node>/bpffs`, a cgroup per node with `--host-path
//! /sys/fs/cgroup=<dir>/{node}`, the agent's RBAC from the chart, and
//! `--env BATON_SERVICES=...` / `BATON_METRICS_ADDR={host_ip}:9095` so
//! nodes do not share ports):
//!
//! * **upgrade of 3 nodes under traffic**: `agentImage` v1 → v2 with
//!   `maxUnavailable: 1`; never more than one handover in flight, a
//!   `baton-probe` load sees no failed connect, every node ends on v2 with
//!   slot b active and slot a parked, `stableImage` v2.
//! * **bad image**: v2 mapped to a command that exits at once: `HandoverFailed`
//!   event, `phase: Failed` (or `RolledBack` with `onFailure: Rollback`),
//!   the old agent kept serving, the same image never retried on that node.
//! * **partition / pause**: `partition: 1` keeps the last node on v1;
//!   `paused` mid-rollout finishes running handovers and starts none.
//! * **operator restart** mid-rollout: a new leader picks up the running
//!   handovers from the pods' annotations without starting extra ones.
//!
//! Needs `e2e/cluster/k8s-bins.sh` (or `BATON_SKIP_APISERVER=1`) and a built
//! `baton-operator` (`cargo build --workspace --bins`).

mod kube_support;

use std::path::Path;
use std::time::Duration;

use baton_e2e::apiserver::ApiServer;
use baton_e2e::shim::launch::ShimLaunch;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use kube::core::GroupVersionKind;
use kube_support::*;
use serde_json::json;

const NS: &str = "baton-system";
const SHIM: &str = env!("CARGO_BIN_EXE_baton-node-shim");
const AGENT_V1: &str = "ghcr.io/baton-dev/baton-agent:v1";
const EMPTY: &str = "ghcr.io/baton-dev/baton-empty:1";

fn upgrades(client: &kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("baton.dev", "v1alpha1", "KmeshUpgrade");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "kmeshupgrades");
    Api::namespaced_with(client.clone(), NS, &ar)
}

#[tokio::test]
async fn fresh_install_one_pod_per_selected_node_with_one_active_slot() {
    let Some(server) = ApiServer::start().await else {
        return;
    };
    let client = server.client().await;
    install_crd(&client).await;
    create_namespace(&client, NS).await;
    create_service_account(&client, NS, "baton-agent").await;

    let tmp = tempfile::tempdir().expect("tempdir");
    let records = tmp.path().join("records");
    std::fs::create_dir_all(&records).expect("records dir");
    let root = tmp.path().join("root");
    let stand_in = format!("{SHIM} record --dir {}", records.display());
    let mut launch = ShimLaunch::new(Path::new(SHIM), server.kubeconfig(), &root)
        .image(AGENT_V1, &stand_in)
        .image(EMPTY, "idle")
        // Not selected: must get no pod.
        .node("x1");
    for node in ["w1", "w2", "w3"] {
        launch = launch.node(&format!("{node},baton.dev/mesh=on"));
    }
    let shim = launch.spawn().expect("starting baton-node-shim");
    let operator = OperatorProcess::start(
        server.kubeconfig(),
        NS,
        "baton-operator-0",
        &tmp.path().join("operator.log"),
    );
    let logs = || format!("{}\n{}\n{}", operator.logs(), shim.logs(), server.logs());

    let upgrade: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "baton.dev/v1alpha1", "kind": "KmeshUpgrade",
        "metadata": {"name": "baton", "namespace": NS},
        "spec": {
            "nodeSelector": {"matchLabels": {"baton.dev/mesh": "on"}},
            "agentImage": AGENT_V1,
            "emptyImage": EMPTY,
            "pod": {"extraArgs": ["--log=info"]},
        }
    }))
    .expect("KmeshUpgrade");
    let upgrades = upgrades(&client);
    upgrades
        .create(&PostParams::default(), &upgrade)
        .await
        .expect("creating the KmeshUpgrade");

    let status = eventually(
        "status Complete with 3 nodes ready",
        Duration::from_secs(60),
        logs,
        async || {
            let status = upgrades.get("baton").await.ok()?.data["status"].clone();
            let counts = ["nodes", "updated", "ready", "failed"].map(|k| status[k].as_i64());
            (counts == [Some(3), Some(3), Some(3), Some(0)] && status["phase"] == "Complete")
                .then_some(status)
        },
    )
    .await;
    assert_eq!(status["stableImage"], AGENT_V1);
    let per_node = status["nodeStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut seen: Vec<_> = per_node
        .iter()
        .map(|n| {
            (
                n["node"].as_str(),
                n["activeSlot"].as_str(),
                n["version"].as_str(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        ["w1", "w2", "w3"].map(|n| (Some(n), Some("a"), Some(AGENT_V1))),
        "{status:#}"
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let list = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=baton-agent"))
        .await
        .expect("listing agent pods");
    let mut names: Vec<_> = list
        .items
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["baton-w1", "baton-w2", "baton-w3"],
        "x1 is not selected"
    );
    for pod in &list.items {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .expect("bound");
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations.get("baton.dev/active-slot").map(String::as_str),
            Some("a")
        );
        let a = container_status(pod, "slot-a").expect("slot-a");
        let b = container_status(pod, "slot-b").expect("slot-b");
        assert!(
            is_running(&a) && a.ready && a.image == AGENT_V1,
            "{name}: {a:?}"
        );
        assert!(is_running(&b) && b.image == EMPTY, "{name}: {b:?}");
        assert!(
            b.image_id.ends_with("baton-node-shim"),
            "idle slot runs the shim's idle mode: {b:?}"
        );

        // The active slot's process: exactly one start, told who it is.
        let runs = starts(&records, NS, name, "slot-a");
        assert_eq!(runs.len(), 1, "{name}: {runs:?}");
        let env = |k: &str| runs[0]["env"][k].as_str().map(str::to_owned);
        let uid8: String = pod
            .metadata
            .uid
            .clone()
            .unwrap_or_default()
            .chars()
            .take(8)
            .collect();
        assert_eq!(env("BATON_SLOT").as_deref(), Some("a"));
        assert_eq!(env("BATON_ACTIVE_SLOT").as_deref(), Some("a"));
        assert_eq!(env("BATON_SLOT_VERSION").as_deref(), Some(AGENT_V1));
        assert_eq!(env("BATON_SLOT_VERSION_ALT").as_deref(), Some(EMPTY));
        assert_eq!(env("NODE_NAME"), Some(node.clone()));
        assert_eq!(env("POD_NAME").as_deref(), Some(name));
        let local = |p: String| Some(root.join(p).display().to_string());
        assert_eq!(
            env("BATON_RUN_DIR"),
            local(format!("{node}/{name}-{uid8}/run"))
        );
        assert_eq!(env("BATON_BPFFS"), local(format!("{node}/bpffs/baton")));
        assert_eq!(env("BATON_CGROUP"), local(format!("{node}/cgroup")));
        assert!(
            env("KUBECONFIG").is_some(),
            "the agent can reach the API server"
        );
        assert_eq!(
            runs[0]["args"]
                .as_array()
                .and_then(|a| a.last())
                .and_then(|a| a.as_str()),
            Some("--log=info")
        );
        assert!(
            starts(&records, NS, name, "slot-b").is_empty(),
            "slot b is idle"
        );
    }
}
