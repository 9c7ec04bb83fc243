//! Cluster scenarios on a real kube-apiserver: the real `baton-operator`
//! reconciles a `KmeshUpgrade` into agent pair pods, and the node shim plays
//! the kubelet for the fake nodes, running each slot as a local process.
//!
//! * **fresh install** (a stand-in for the agent, `baton-node-shim record`,
//!   which records its env and idles): pods appear on the selected nodes
//!   only, one active slot each (slot a on the agent image, slot b idle on
//!   the empty image), the downward API hands each slot its identity, and the
//!   status counts every node updated and ready (`Complete`).
//! * **rolling upgrade under traffic, then partition and pause**, with the
//!   REAL agents on the REAL datapath (`fleet`: a cgroup and a bpffs
//!   per node, the layout-1 agent as `:v1`, the layout-2 agent as `:v2`,
//!   Services from the API server, one `baton-probe` per node in that node's
//!   cgroup): v1 → v2 on 3 nodes with `maxUnavailable: 1` while every node
//!   takes new connections to the ClusterIP; then v2 → v1 with `partition: 2`
//!   (only the first node moves), `paused` (nothing starts), resume
//!   (complete); invalid spec updates are refused by the API server.
//!
//! Failures (bad image, rollback, operator restart) are in `cluster_failure.rs`.
//!
//! Needs root (cgroups, bpffs, BPF), `e2e/cluster/k8s-bins.sh` (or
//! `BATON_SKIP_APISERVER=1`) and the binaries of both layouts (`cargo
//! xtask build`; see `baton_e2e::kit::bins`).

use std::time::Duration;

use baton_api::pairpod::{
    ConditionReport, Slot, StartedReport, ANN_ACTIVE_SLOT, ANN_HANDOVER_STARTED, CONDITION_STARTED,
    ENV_ACTIVE_SLOT, ENV_CGROUP, ENV_NODE_NAME, ENV_POD_NAME, ENV_RUN_DIR, ENV_SLOT,
    ENV_SLOT_VERSION, ENV_SLOT_VERSION_ALT, REASON_STARTED, STATUS_TRUE,
};
use baton_e2e::apiserver::ApiServer;
use baton_e2e::kit::bins::shim_bin;
use baton_e2e::kit::kube::{
    agent_pod_selector, annotation, container_pid, create_namespace, create_service_account,
    install_crd, is_running, slot_status, starts, upgrade_object, upgrades,
};
use baton_e2e::kit::process::proc_status_kib;
use baton_e2e::kit::wait::eventually;
use baton_e2e::kit::OperatorCmd;
use baton_e2e::shim::launch::ShimLaunch;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

use crate::fleet::{self, MESH_LABEL};

const NS: &str = "baton-system";
const AGENT_V1: &str = "ghcr.io/baton-dev/baton-agent:v1";
const EMPTY: &str = "ghcr.io/baton-dev/baton-empty:1";

#[tokio::test]
async fn fresh_install_one_pod_per_selected_node_with_one_active_slot() {
    let Some(server) = ApiServer::start().await else {
        return;
    };
    let client = server.client().await;
    install_crd(&client).await.unwrap();
    create_namespace(&client, NS).await.unwrap();
    create_service_account(&client, NS, "baton-agent")
        .await
        .unwrap();

    let tmp = tempfile::tempdir().expect("tempdir");
    let records = tmp.path().join("records");
    std::fs::create_dir_all(&records).expect("records dir");
    let root = tmp.path().join("root");
    let shim = shim_bin().unwrap();
    let stand_in = format!("{} record --dir {}", shim.display(), records.display());
    let mut launch = ShimLaunch::new(&shim, server.kubeconfig(), &root)
        .image(AGENT_V1, &stand_in)
        .image(EMPTY, "idle")
        // Not selected: must get no pod.
        .node("x1");
    for node in ["w1", "w2", "w3"] {
        launch = launch.node(&format!("{node},{MESH_LABEL}=on"));
    }
    let shim = launch.spawn().expect("starting baton-node-shim");
    let operator = OperatorCmd::new(server.kubeconfig(), NS, "baton-operator-0")
        .unwrap()
        .spawn(&tmp.path().join("operator.log"))
        .unwrap();
    let logs = || format!("{}\n{}\n{}", operator.logs(), shim.logs(), server.logs());

    let upgrade = upgrade_object(
        "baton",
        NS,
        json!({
            "nodeSelector": {"matchLabels": {MESH_LABEL: "on"}},
            "agentImage": AGENT_V1,
            "emptyImage": EMPTY,
            "pod": {"extraArgs": ["--log=info"]},
        }),
    )
    .unwrap();
    let upgrades = upgrades(&client, NS);
    upgrades
        .create(&PostParams::default(), &upgrade)
        .await
        .expect("creating the KmeshUpgrade");

    // Readiness gating: running containers are not ready agents. The
    // stand-in never says it owns a datapath, so nothing counts yet.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    eventually(
        "3 pods running, none counted ready before its agent reports",
        Duration::from_secs(60),
        logs,
        async || {
            let status = upgrades.get("baton").await.ok()?.data["status"].clone();
            let counts = ["nodes", "updated", "ready", "failed"].map(|k| status[k].as_i64());
            let list = pods.list(&ListParams::default()).await.ok()?;
            let running = list
                .items
                .iter()
                .filter(|p| slot_status(p, Slot::A).is_some_and(|c| is_running(&c)))
                .count();
            (running == 3
                && counts == [Some(3), Some(0), Some(0), Some(0)]
                && status["phase"] == "Progressing"
                && status.get("stableImage").is_none())
            .then_some(())
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = upgrades.get("baton").await.expect("upgrade").data["status"].clone();
    assert_eq!(
        (status["ready"].as_i64(), status["phase"].as_str()),
        (Some(0), Some("Progressing")),
        "still nothing ready without a report: {status:#}"
    );
    // What the real agent writes once it owns the datapath (its Started condition).
    let started = StartedReport {
        slot: Slot::A,
        version: AGENT_V1.to_owned(),
        handover_protocol: None,
    }
    .to_message()
    .expect("the start report");
    for node in ["w1", "w2", "w3"] {
        let body = json!({"status": {"conditions": [{
            "type": CONDITION_STARTED, "status": STATUS_TRUE, "reason": REASON_STARTED,
            "message": started}]}});
        pods.patch_status(
            &format!("baton-{node}"),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Strategic(&body),
        )
        .await
        .expect("writing the start report");
    }
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
    .await
    .unwrap();
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

    let list = pods
        .list(&ListParams::default().labels(&agent_pod_selector()))
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
        assert_eq!(
            annotation(pod, ANN_ACTIVE_SLOT),
            Some(Slot::A.as_str()),
            "{name}"
        );
        let a = slot_status(pod, Slot::A).expect("slot a");
        let b = slot_status(pod, Slot::B).expect("slot b");
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
        let runs = starts(&records, NS, name, Slot::A.container()).unwrap();
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
        assert_eq!(env(ENV_SLOT).as_deref(), Some(Slot::A.as_str()));
        assert_eq!(env(ENV_ACTIVE_SLOT).as_deref(), Some(Slot::A.as_str()));
        assert_eq!(env(ENV_SLOT_VERSION).as_deref(), Some(AGENT_V1));
        assert_eq!(env(ENV_SLOT_VERSION_ALT).as_deref(), Some(EMPTY));
        assert_eq!(env(ENV_NODE_NAME), Some(node.clone()));
        assert_eq!(env(ENV_POD_NAME).as_deref(), Some(name));
        let local = |p: String| Some(root.join(p).display().to_string());
        assert_eq!(env(ENV_RUN_DIR), local(format!("{node}/{name}-{uid8}/run")));
        assert_eq!(env("BATON_BPFFS"), local(format!("{node}/bpffs/baton")));
        assert_eq!(env(ENV_CGROUP), local(format!("{node}/cgroup")));
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
            starts(&records, NS, name, Slot::B.container())
                .unwrap()
                .is_empty(),
            "slot b is idle"
        );
    }
}

/// Checks every node after a rollout to `image` (map layout `layout`) that
/// put its agent in `slot`, the retired agent of `standby` waiting in the
/// other slot: the pod, the running processes, the agent's own status and
/// `verify`, and the node status with its handover figures.
#[allow(clippy::too_many_arguments)]
async fn assert_nodes_on(
    fleet: &fleet::Fleet,
    status: &serde_json::Value,
    nodes: &[&str],
    image: &str,
    standby: &str,
    layout: u32,
    slot: Slot,
    when: &str,
) {
    use crate::fleet::*;
    let parked = slot.other();
    for node in nodes {
        let n = node_status(status, node);
        assert_eq!(
            (
                n["activeSlot"].as_str(),
                n["version"].as_str(),
                n["phase"].as_str()
            ),
            (Some(slot.as_str()), Some(image), Some("Running")),
            "{when}: {node}: {status:#}"
        );
        let h = &n["lastHandover"];
        assert!(
            h["durationMs"].as_i64().is_some()
                && h["freezeMs"].as_i64().is_some()
                && h["mapsMigrated"].as_i64() == Some(2)
                && h["mapsReused"].as_i64() == Some(4)
                && h["entriesCopied"].as_i64() >= Some(6),
            "{when}: {node}: endpoint and backend change layout, so both migrate \
             (3 endpoints + 3 backends at least), the 4 other maps are reused: {h:#}"
        );
        assert!(
            h["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("took over from")),
            "{when}: {node}: a live handover, not a start from the pins: {h:#}"
        );
        let ann = fleet.annotations(node).await;
        let get = |k: &str| ann.get(k).map(String::as_str);
        assert_eq!(
            (
                get(ANN_ACTIVE_SLOT),
                get(&slot.version_annotation()),
                get(&parked.version_annotation()),
                get(ANN_HANDOVER_STARTED),
            ),
            (Some(slot.as_str()), Some(image), Some(standby), None),
            "{when}: {node}: the retired slot keeps its image as the standby: {ann:?}"
        );
        // The retired agent re-execs itself into standby mode (same pid,
        // same container) shortly after handing over.
        let (standby_c, active_c) = eventually(
            &format!("{when}: {node}: the old slot's agent waits as a warm standby"),
            Duration::from_secs(30),
            || fleet.logs(),
            async || {
                let pod = fleet.pod(node).await;
                let standby_c = slot_status(&pod, parked)?;
                let active_c = slot_status(&pod, slot)?;
                let pid = container_pid(&standby_c)?;
                (is_running(&standby_c)
                    && standby_c.image == standby
                    && fleet::in_standby_mode(pid)
                    && is_running(&active_c)
                    && active_c.image == image)
                    .then_some((standby_c, active_c))
            },
        )
        .await
        .unwrap();
        let pid = container_pid(&standby_c).unwrap_or_default();
        let [rss, anon, file] = ["VmRSS", "RssAnon", "RssFile"].map(|f| proc_status_kib(pid, f));
        eprintln!(
            "{when}: {node}: standby {standby} RSS {rss:?} KiB (anon {anon:?}, file {file:?})"
        );
        assert!(
            anon.is_some_and(|kib| kib < fleet::STANDBY_RSS_MAX_KIB),
            "{when}: {node}: a standby holds nothing and stays small: {anon:?} KiB anonymous"
        );
        let agent = fleet
            .agent_status(node)
            .await
            .unwrap_or_else(|| panic!("{when}: {node}: baton-agent status failed"));
        assert_eq!(
            (
                agent.layout_version,
                Some(agent.pid),
                agent.source.starts_with("kubernetes")
            ),
            (layout, container_pid(&active_c), true),
            "{when}: {node}: the active slot's process answers: {agent:#?}"
        );
        fleet.assert_verify_clean(node, when).await;
        let metrics = fleet.scrape(node);
        assert!(
            metrics.starts_with("HTTP/1.1 200 OK") && metrics.contains("baton_generation"),
            "{when}: {node}: metrics on the node's own address (inherited listener): {metrics}"
        );
    }
}

/// Issue 4, scenarios 1, 3 and 5 with the real agent on the real datapath.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_upgrade_under_traffic_then_partition_pause_and_resume() {
    use crate::fleet::*;
    let Some(mut fleet) = Fleet::start("upgrade", [127, 0, 77], &["w1", "w2", "w3"], |_, _| {
        Vec::new()
    })
    .await
    else {
        return;
    };
    let t0 = std::time::Instant::now();
    let nodes = ["w1", "w2", "w3"];
    let timeout = Duration::from_secs(120);

    // Install v1 (layout 1): every node's agent programs default/web.
    fleet
        .create_upgrade(
            AGENT_V1,
            json!({"maxUnavailable": 1, "handoverTimeoutSeconds": 60}),
        )
        .await;
    let status = fleet
        .wait_status("v1 installed on 3 nodes", 1, timeout, |s| {
            counts(s) == [Some(3), Some(3), Some(3), Some(0)] && s["phase"] == "Complete"
        })
        .await;
    assert_eq!(status["stableImage"], AGENT_V1);
    for node in nodes {
        fleet.wait_serving(node, 1).await;
    }
    let installed = t0.elapsed();

    // 1. v1 -> v2 under traffic, maxUnavailable 1.
    fleet.start_traffic(150.0);
    let t1 = std::time::Instant::now();
    let generation = fleet
        .patch_spec(json!({"agentImage": AGENT_V2}))
        .await
        .expect("patching agentImage");
    let status = fleet
        .wait_status("v1 -> v2 complete", generation, timeout, |s| {
            s["phase"] == "Complete" && s["stableImage"] == AGENT_V2 && s["updated"] == 3
        })
        .await;
    let upgrade_time = t1.elapsed();
    let connects = fleet.stop_traffic("v1 -> v2 on 3 nodes");
    assert_eq!(
        counts(&status),
        [Some(3), Some(3), Some(3), Some(0)],
        "{status:#}"
    );
    let available = status_condition(&status, "Available");
    assert_eq!(available["status"], "True", "{status:#}");
    assert_eq!(status_condition(&status, "Degraded")["status"], "False");
    print_nodes("v1 -> v2", &status);
    assert_nodes_on(
        &fleet,
        &status,
        &nodes,
        AGENT_V2,
        AGENT_V1,
        2,
        Slot::B,
        "v1 -> v2",
    )
    .await;
    let rollout = fleet.rollout.get();
    assert_eq!(
        rollout.max_in_flight, 1,
        "maxUnavailable 1: one handover at a time: {rollout:?}"
    );
    for node in nodes {
        assert_eq!(rollout.starts_on(node), [AGENT_V2], "{node}: {rollout:?}");
        assert_eq!(
            fleet.process_starts(node, AGENT_V2),
            1,
            "{node}: one v2 agent process"
        );
    }
    for node in nodes {
        let events = fleet.node_events("HandoverCommitted", node).await;
        assert!(
            events.len() == 1
                && events[0]
                    .note
                    .as_deref()
                    .is_some_and(|n| n.starts_with(&format!("{node}: slot b is active"))),
            "one HandoverCommitted event for {node}: {events:#?}"
        );
    }

    // 3. v2 -> v1 with partition 2: only the first node (by name) moves.
    fleet.start_traffic(150.0);
    let generation = fleet
        .patch_spec(json!({"agentImage": AGENT_V1, "strategy": {"partition": 2}}))
        .await
        .expect("patching agentImage and partition");
    let status = fleet
        .wait_status("w1 back on v1, partition 2", generation, timeout, |s| {
            s["updated"] == 1
                && s["phase"] == "Complete"
                && node_status(s, "w1")["version"] == AGENT_V1
        })
        .await;
    assert_nodes_on(
        &fleet,
        &status,
        &["w1"],
        AGENT_V1,
        AGENT_V2,
        1,
        Slot::A,
        "partition 2",
    )
    .await;
    for node in ["w2", "w3"] {
        assert_eq!(node_status(&status, node)["version"], AGENT_V2, "{node}");
    }

    // Pause, then lift the partition: nothing starts while paused.
    let generation = fleet
        .patch_spec(json!({"strategy": {"paused": true}}))
        .await
        .expect("pausing");
    let generation = fleet
        .patch_spec(json!({"strategy": {"partition": 0}}))
        .await
        .expect("lifting the partition")
        .max(generation);
    let status = fleet
        .wait_status("paused", generation, timeout, |s| s["phase"] == "Paused")
        .await;
    assert_eq!(status_condition(&status, "Progressing")["status"], "False");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rollout = fleet.rollout.get();
    for node in ["w2", "w3"] {
        assert_eq!(
            rollout.starts_on(node),
            [AGENT_V2],
            "{node}: nothing starts while paused: {rollout:?}"
        );
    }

    // 5. The API server refuses invalid updates of the live object with the
    // rule's message (the create side is operator/tests/apiserver_crd.rs).
    for (spec, message) in [
        (
            json!({"strategy": {"maxUnavailable": "0%"}}),
            "maxUnavailable must not be 0 or 0%",
        ),
        (
            json!({"agentImage": EMPTY}),
            "agentImage and emptyImage must differ",
        ),
        (
            json!({"strategy": {"partition": -1}}),
            "should be greater than or equal to 0",
        ),
    ] {
        match fleet.patch_spec(spec.clone()).await {
            Err(kube::Error::Api(e)) if e.code == 422 && e.message.contains(message) => {}
            other => panic!("update {spec}: expected 422 with {message:?}, got {other:?}"),
        }
    }
    assert_eq!(
        fleet.upgrade().await.metadata.generation,
        Some(generation),
        "refused updates change nothing"
    );

    // Resume: w2 and w3 go back to v1.
    let generation = fleet
        .patch_spec(json!({"strategy": {"paused": false}}))
        .await
        .expect("resuming");
    let status = fleet
        .wait_status("resumed and complete on v1", generation, timeout, |s| {
            s["phase"] == "Complete" && s["stableImage"] == AGENT_V1 && s["updated"] == 3
        })
        .await;
    let connects_back = fleet.stop_traffic("v2 -> v1 with partition, pause and resume");
    print_nodes("v2 -> v1", &status);
    assert_nodes_on(
        &fleet,
        &status,
        &nodes,
        AGENT_V1,
        AGENT_V2,
        1,
        Slot::A,
        "v2 -> v1",
    )
    .await;
    let rollout = fleet.rollout.get();
    assert_eq!(rollout.max_in_flight, 1, "{rollout:?}");
    for node in nodes {
        assert_eq!(
            rollout.starts_on(node),
            [AGENT_V2, AGENT_V1],
            "{node}: {rollout:?}"
        );
    }
    eprintln!(
        "cluster upgrade: install {:.1} s, v1 -> v2 on 3 nodes {:.1} s ({connects} connects), \
         v2 -> v1 with partition/pause {connects_back} connects; test {:.1} s",
        installed.as_secs_f64(),
        upgrade_time.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}

/// Container id, restart count and pid of both slots of `node`'s pod.
async fn containers(fleet: &fleet::Fleet, node: &str) -> Vec<(String, i32, Option<u32>)> {
    let pod = fleet.pod(node).await;
    Slot::ALL
        .iter()
        .map(|&slot| {
            let s = slot_status(&pod, slot).unwrap_or_else(|| panic!("{node}: slot {slot} status"));
            (
                s.container_id.clone().unwrap_or_default(),
                s.restart_count,
                container_pid(&s),
            )
        })
        .collect()
}

/// The warm standby: v1 -> v2 -> v1 -> v2 under traffic. The first change
/// restarts slot b once (empty image -> v2); every later flip wakes the
/// retired agent waiting in the other slot through annotations only, so no
/// container restarts (same container ids, restart counts and pids) and the
/// kubelet's crash-loop back-off (keyed by container and image, which the
/// shim mimics) never applies. 0 failed connects throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_standby_flips_between_two_images_restart_no_container() {
    use crate::fleet::*;
    let Some(mut fleet) = Fleet::start("standby", [127, 0, 79], &["w1", "w2", "w3"], |_, _| {
        Vec::new()
    })
    .await
    else {
        return;
    };
    let nodes = ["w1", "w2", "w3"];
    let timeout = Duration::from_secs(120);
    fleet
        .create_upgrade(
            AGENT_V1,
            json!({"maxUnavailable": 1, "handoverTimeoutSeconds": 60}),
        )
        .await;
    fleet
        .wait_status("v1 installed", 1, timeout, |s| {
            counts(s) == [Some(3), Some(3), Some(3), Some(0)] && s["phase"] == "Complete"
        })
        .await;
    for node in nodes {
        fleet.wait_serving(node, 1).await;
    }
    fleet.start_traffic(150.0);
    let mut after_first = Vec::new();
    let mut flip_times = Vec::new();
    for (i, (image, layout, slot)) in [
        (AGENT_V2, 2, Slot::B),
        (AGENT_V1, 1, Slot::A),
        (AGENT_V2, 2, Slot::B),
    ]
    .into_iter()
    .enumerate()
    {
        let t = std::time::Instant::now();
        let generation = fleet
            .patch_spec(json!({"agentImage": image}))
            .await
            .expect("patching agentImage");
        let status = fleet
            .wait_status(&format!("flip {i} to {image}"), generation, timeout, |s| {
                s["phase"] == "Complete"
                    && s["stableImage"] == image
                    && s["updated"] == 3
                    && s["ready"] == 3
            })
            .await;
        flip_times.push(t.elapsed().as_secs_f64());
        let other = if image == AGENT_V1 {
            AGENT_V2
        } else {
            AGENT_V1
        };
        let when = format!("flip {i} to {image}");
        assert_nodes_on(&fleet, &status, &nodes, image, other, layout, slot, &when).await;
        let now: Vec<_> = {
            let mut v = Vec::new();
            for node in nodes {
                v.push(containers(&fleet, node).await);
            }
            v
        };
        if i == 0 {
            after_first = now;
        } else {
            assert_eq!(
                now, after_first,
                "{when}: no container restarted (ids, restart counts, pids)"
            );
        }
    }
    let connects = fleet.stop_traffic("v1 -> v2 -> v1 -> v2");
    for node in nodes {
        assert_eq!(
            (
                fleet.process_starts(node, AGENT_V1),
                fleet.process_starts(node, AGENT_V2)
            ),
            (1, 1),
            "{node}: each image started once; the flips were exec's of the standby"
        );
        assert_eq!(
            fleet.rollout.get().starts_on(node),
            [AGENT_V2, AGENT_V1, AGENT_V2],
            "{node}"
        );
        let pod = fleet.pod(node).await;
        for slot in Slot::ALL {
            let s = slot_status(&pod, slot).expect("status");
            assert!(
                s.state
                    .as_ref()
                    .and_then(|st| st.waiting.as_ref())
                    .is_none(),
                "{node}: slot {slot} never waits on the kubelet: {s:?}"
            );
        }
    }
    eprintln!("warm standby flips: {flip_times:.1?} s, {connects} connects, 0 failed");
}

/// Uninstall: an agent pod deleted while its KmeshUpgrade lives keeps the
/// datapath (traffic stays clean, the operator recreates the pod and the new
/// agent adopts the pins); deleting the KmeshUpgrade with foreground
/// propagation removes it: pins gone, programs detached on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_removes_the_datapath_a_deleted_pod_keeps_it() {
    use crate::fleet::*;
    use kube::api::{DeleteParams, PropagationPolicy};
    let Some(mut fleet) =
        Fleet::start("uninstall", [127, 0, 80], &["w1", "w2"], |_, _| Vec::new()).await
    else {
        return;
    };
    let nodes = ["w1", "w2"];
    let timeout = Duration::from_secs(120);
    fleet
        .create_upgrade(AGENT_V1, json!({"maxUnavailable": 1}))
        .await;
    fleet
        .wait_status("v1 installed", 1, timeout, |s| {
            counts(s) == [Some(2), Some(2), Some(2), Some(0)] && s["phase"] == "Complete"
        })
        .await;
    for node in nodes {
        fleet.wait_serving(node, 1).await;
    }

    // 1. A pod deleted while the KmeshUpgrade lives: the datapath stays.
    fleet.start_traffic(150.0);
    let pods: Api<Pod> = Api::namespaced(fleet.client.clone(), NS);
    let old_uid = fleet.pod("w1").await.metadata.uid;
    pods.delete("baton-w1", &DeleteParams::default())
        .await
        .expect("deleting w1's agent pod");
    eventually(
        "w1's pod gone and recreated",
        Duration::from_secs(60),
        || fleet.logs(),
        async || {
            let p = pods.get("baton-w1").await.ok()?;
            (p.metadata.uid != old_uid).then_some(())
        },
    )
    .await
    .unwrap();
    fleet
        .wait_status("w1 ready again", 1, timeout, |s| {
            counts(s) == [Some(2), Some(2), Some(2), Some(0)] && s["phase"] == "Complete"
        })
        .await;
    fleet.wait_serving("w1", 1).await;
    fleet.stop_traffic("w1's agent pod deleted and recreated");
    for node in nodes {
        assert!(
            pinned(&fleet, node) && !attached(&fleet, node).is_empty(),
            "{node}: the datapath stays while the KmeshUpgrade lives"
        );
    }

    // 2. Uninstall: delete the KmeshUpgrade with foreground propagation.
    let upgrades = upgrades(&fleet.client, NS);
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        ..DeleteParams::default()
    };
    upgrades
        .delete(UPGRADE, &dp)
        .await
        .expect("deleting the KmeshUpgrade");
    // This API server runs no garbage collector: do its part, as
    // kube-controller-manager would for foreground deletion (delete the
    // dependents while the owner carries its deletionTimestamp).
    let owner = upgrades
        .get(UPGRADE)
        .await
        .expect("owner kept until dependents go");
    assert!(owner.metadata.deletion_timestamp.is_some());
    for node in nodes {
        pods.delete(&pod_name(node), &DeleteParams::default())
            .await
            .expect("deleting a dependent pod");
    }
    eventually(
        "agent pods gone",
        Duration::from_secs(60),
        || fleet.logs(),
        async || {
            let list = pods.list(&ListParams::default()).await.ok()?;
            list.items.is_empty().then_some(())
        },
    )
    .await
    .unwrap();
    for node in nodes {
        assert!(
            !pinned(&fleet, node),
            "{node}: pins removed on uninstall: {:?}",
            std::fs::read_dir(fleet.kernel.node(node).pin_dir()).map(|d| d.count())
        );
        assert_eq!(
            attached(&fleet, node),
            Vec::<String>::new(),
            "{node}: programs detached on uninstall"
        );
    }
    // The GC would now drop the foregroundDeletion finalizer.
    let _ = upgrades
        .patch(
            UPGRADE,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await;
}

/// Whether `node`'s pin directory holds any pin.
fn pinned(fleet: &fleet::Fleet, node: &str) -> bool {
    std::fs::read_dir(fleet.kernel.node(node).pin_dir())
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

/// Program names attached to `node`'s cgroup (bpftool).
fn attached(fleet: &fleet::Fleet, node: &str) -> Vec<String> {
    let out = std::process::Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(fleet.kernel.node(node).cgroup())
        .arg("-j")
        .output()
        .expect("running bpftool");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(json!([]));
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect()
}
