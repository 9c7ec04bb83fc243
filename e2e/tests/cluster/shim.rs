//! The node shim against a real kube-apiserver: nodes and heartbeats, pods as
//! processes with the downward API read at start, status reports that keep
//! other writers' conditions, in-place image patches, crash loops, restart
//! policies, unmapped images, and deletion within the grace period.
//!
//! Needs `e2e/cluster/k8s-bins.sh` (or `BATON_SKIP_APISERVER=1`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use baton_api::pairpod::{
    Slot, ANN_ACTIVE_SLOT, CONDITION_HANDOVER, DEFAULT_RUN_DIR, ENV_ACTIVE_SLOT, ENV_CGROUP,
    ENV_NODE_NAME, ENV_POD_NAME, ENV_POD_NAMESPACE, ENV_RUN_DIR, ENV_SLOT, ENV_SLOT_VERSION,
    ENV_SLOT_VERSION_ALT, REASON_COMMITTED, STATUS_TRUE,
};
use baton_e2e::apiserver::ApiServer;
use baton_e2e::kit::bins::shim_bin;
use baton_e2e::kit::kube::{
    condition, container_pid, container_status, create_namespace, is_running, records, slot_status,
    starts,
};
use baton_e2e::kit::process::pid_alive as alive;
use baton_e2e::kit::wait::eventually;
use baton_e2e::shim::launch::{ShimLaunch, ShimProcess};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::fleet::MESH_LABEL;

const NS: &str = "shim-test";
const WAIT: Duration = Duration::from_secs(30);

struct Setup {
    server: ApiServer,
    client: kube::Client,
    shim: ShimProcess,
    records: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Setup {
    fn logs(&self) -> String {
        format!("{}\n{}", self.shim.logs(), self.server.logs())
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), NS)
    }

    /// Waits until `check` holds for pod `name`; returns the pod.
    async fn pod_until(&self, name: &str, what: &str, check: impl Fn(&Pod) -> bool) -> Pod {
        let pods = self.pods();
        eventually(
            &format!("pod {name}: {what}"),
            WAIT,
            || self.logs(),
            async || pods.get(name).await.ok().filter(|p| check(p)),
        )
        .await
        .unwrap()
    }

    async fn gone(&self, name: &str) {
        let pods = self.pods();
        eventually(
            &format!("pod {name} to be removed"),
            WAIT,
            || self.logs(),
            async || match pods.get_opt(name).await {
                Ok(None) => Some(()),
                _ => None,
            },
        )
        .await
        .unwrap();
    }
}

/// An API server, a namespace, and a shim for `nodes` mapping the test images.
async fn setup(nodes: &[&str]) -> Option<Setup> {
    let server = ApiServer::start().await?;
    let client = server.client().await;
    create_namespace(&client, NS).await.unwrap();
    let tmp = tempfile::tempdir().expect("tempdir");
    let records = tmp.path().join("records");
    std::fs::create_dir_all(&records).expect("records dir");
    let shim = shim_bin().unwrap();
    let record = format!("{} record --dir {}", shim.display(), records.display());
    let mut launch = ShimLaunch::new(&shim, server.kubeconfig(), &tmp.path().join("root"))
        .image("test/empty:1", "idle")
        .image("test/agent:v1", &record)
        .image("test/agent:v2", &record)
        .backoff(Duration::from_millis(1000), Duration::from_millis(2000))
        .arg("--heartbeat-seconds", "1")
        .process_env("RUST_LOG", "info,baton_e2e=debug");
    for node in nodes {
        launch = launch.node(node);
    }
    let shim = launch.spawn().expect("starting baton-node-shim");
    Some(Setup {
        server,
        client,
        shim,
        records,
        _tmp: tmp,
    })
}

fn pair_pod(name: &str, node: &str) -> Pod {
    let annotations = json!({
        ANN_ACTIVE_SLOT: Slot::A,
        (Slot::A.version_annotation()): "test/agent:v1",
        (Slot::B.version_annotation()): "test/empty:1"});
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NS, "annotations": annotations},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 5,
            "containers": [
                slot_container(Slot::A, "test/agent:v1"),
                slot_container(Slot::B, "test/empty:1"),
            ],
            "volumes": [
                {"name": "bpffs", "hostPath": {"path": "/sys/fs/bpf", "type": "DirectoryOrCreate"}},
                {"name": "run", "emptyDir": {"medium": "Memory"}}
            ]
        }
    }))
    .expect("pod")
}

fn both_running(pod: &Pod) -> bool {
    Slot::ALL
        .iter()
        .all(|&slot| slot_status(pod, slot).is_some_and(|s| is_running(&s) && s.ready))
        && condition(pod, "Ready").as_deref() == Some("True")
}

fn env_of(record: &serde_json::Value, name: &str) -> Option<String> {
    record["env"][name].as_str().map(str::to_owned)
}

#[tokio::test]
async fn pods_run_as_processes_with_the_downward_api_and_in_place_image_patches() {
    let w1 = format!("w1,{MESH_LABEL}=on");
    let Some(s) = setup(&[&w1, "w2=127.0.0.2"]).await else {
        return;
    };
    let root = s.shim.root().to_owned();

    // Nodes: registered Ready with their labels and address; Lease heartbeats.
    let nodes: Api<Node> = Api::all(s.client.clone());
    for (name, ip) in [("w1", "127.0.0.1"), ("w2", "127.0.0.2")] {
        let node = eventually(
            &format!("node {name} Ready"),
            WAIT,
            || s.logs(),
            async || {
                let node = nodes.get(name).await.ok()?;
                let ready = node
                    .status
                    .as_ref()?
                    .conditions
                    .as_ref()?
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                ready.then_some(node)
            },
        )
        .await
        .unwrap();
        let addresses = node.status.and_then(|s| s.addresses).unwrap_or_default();
        assert!(addresses
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == ip));
    }
    let w1 = nodes.get("w1").await.expect("w1");
    assert_eq!(
        w1.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(MESH_LABEL))
            .map(String::as_str),
        Some("on")
    );
    let leases: Api<Lease> = Api::namespaced(s.client.clone(), "kube-node-lease");
    let first = eventually(
        "w1's lease",
        WAIT,
        || s.logs(),
        async || leases.get("w1").await.ok()?.spec?.renew_time,
    )
    .await
    .unwrap();
    eventually(
        "w1's lease to be renewed",
        WAIT,
        || s.logs(),
        async || {
            let renewed = leases.get("w1").await.ok()?.spec?.renew_time?;
            (renewed.0 > first.0).then_some(())
        },
    )
    .await
    .unwrap();

    // A pair pod: both slots run, status is reported.
    let pods = s.pods();
    pods.create(&PostParams::default(), &pair_pod("pair", "w1"))
        .await
        .expect("creating pod");
    let pod = s
        .pod_until("pair", "both slots running and Ready", both_running)
        .await;
    let status = pod.status.as_ref().expect("status");
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(status.pod_ip.as_deref(), Some("127.0.0.1"));
    for c in ["ContainersReady", "Initialized", "PodScheduled"] {
        assert_eq!(condition(&pod, c).as_deref(), Some("True"), "{c}");
    }
    let a = slot_status(&pod, Slot::A).expect("slot a status");
    let b = slot_status(&pod, Slot::B).expect("slot b status");
    assert_eq!(
        (a.image.as_str(), a.restart_count, a.started),
        ("test/agent:v1", 0, Some(true))
    );
    assert_eq!(b.image, "test/empty:1");
    let idle_pid = container_pid(&b).expect("slot b pid");
    let cmdline = std::fs::read(format!("/proc/{idle_pid}/cmdline")).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("idle"),
        "the empty image runs the shim's idle mode"
    );

    // The process got the downward API, $(VAR) expansion and the local mount paths.
    let uid8: String = pod
        .metadata
        .uid
        .clone()
        .expect("uid")
        .chars()
        .take(8)
        .collect();
    let start = eventually(
        "slot a's record",
        WAIT,
        || s.logs(),
        async || {
            starts(&s.records, NS, "pair", Slot::A.container())
                .unwrap()
                .pop()
        },
    )
    .await
    .unwrap();
    let expect = [
        (ENV_SLOT, Slot::A.to_string()),
        (ENV_SLOT_VERSION, "test/agent:v1".to_owned()),
        (ENV_SLOT_VERSION_ALT, "test/empty:1".to_owned()),
        (ENV_ACTIVE_SLOT, Slot::A.to_string()),
        (ENV_NODE_NAME, "w1".to_owned()),
        (ENV_POD_NAME, "pair".to_owned()),
        (ENV_POD_NAMESPACE, NS.to_owned()),
        ("GREETING", "hello-w1".to_owned()),
        (
            "BATON_BPFFS",
            root.join("w1/bpffs/baton").display().to_string(),
        ),
        (
            ENV_RUN_DIR,
            root.join(format!("w1/pair-{uid8}/run"))
                .display()
                .to_string(),
        ),
        ("BATON_SHIM_RESTART", "0".to_owned()),
    ];
    for (name, value) in &expect {
        assert_eq!(
            env_of(&start, name).as_ref(),
            Some(value),
            "env {name}\n{start:#}"
        );
    }
    assert_eq!(
        env_of(&start, ENV_CGROUP),
        None,
        "no cgroup mount in this pod"
    );
    assert_eq!(
        env_of(&start, "HOME"),
        None,
        "nothing inherited but PATH and RUST_*"
    );

    // Its KUBECONFIG carries a token bound to the pod's service account and the pod.
    let kubeconfig = env_of(&start, "KUBECONFIG").expect("KUBECONFIG");
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).expect("pod kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    let as_pod = kube::Client::try_from(config).expect("client");
    let review: SelfSubjectReview = serde_json::from_value(json!({})).expect("review");
    let review = Api::<SelfSubjectReview>::all(as_pod)
        .create(&PostParams::default(), &review)
        .await
        .expect("SelfSubjectReview with the pod's token");
    let user = review.status.and_then(|s| s.user_info).expect("user info");
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:shim-test:default")
    );
    let bound_pod = user
        .extra
        .and_then(|e| e.get("authentication.kubernetes.io/pod-name").cloned());
    assert_eq!(bound_pod, Some(vec!["pair".to_owned()]));

    // The agent's condition, written by someone else, survives the shim's writes.
    let handover = json!({"status": {"conditions": [{"type": CONDITION_HANDOVER,
        "status": STATUS_TRUE, "reason": REASON_COMMITTED, "message": "{}",
        "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    pods.patch_status(
        "pair",
        &PatchParams::default(),
        &Patch::Strategic(&handover),
    )
    .await
    .expect("agent condition");

    // StartUpgrade: slot b's image and version annotation in one patch.
    let upgrade = json!({
        "metadata": {"annotations": {(Slot::B.version_annotation()): "test/agent:v2"}},
        "spec": {"containers": [{"name": Slot::B.container(), "image": "test/agent:v2"}]}});
    pods.patch("pair", &PatchParams::default(), &Patch::Strategic(&upgrade))
        .await
        .expect("patching slot b");
    let pod = s
        .pod_until("pair", "slot b restarted on test/agent:v2", |p| {
            slot_status(p, Slot::B).is_some_and(|c| {
                c.image == "test/agent:v2" && c.restart_count == 1 && is_running(&c)
            })
        })
        .await;
    assert_eq!(
        condition(&pod, CONDITION_HANDOVER).as_deref(),
        Some(STATUS_TRUE),
        "agent condition kept"
    );
    let a2 = slot_status(&pod, Slot::A).expect("slot a");
    assert_eq!(
        (a2.restart_count, &a2.container_id),
        (0, &a.container_id),
        "slot a untouched"
    );
    let b2 = slot_status(&pod, Slot::B).expect("slot b");
    let last = b2
        .last_state
        .and_then(|l| l.terminated)
        .expect("slot b lastState");
    assert_eq!(
        (last.exit_code, last.reason.as_deref()),
        (0, Some("Completed")),
        "idle exits 0 on SIGTERM"
    );
    assert!(!alive(idle_pid), "the old idle process is gone");
    let b_start = starts(&s.records, NS, "pair", Slot::B.container()).unwrap();
    assert_eq!(b_start.len(), 1);
    assert_eq!(
        env_of(&b_start[0], ENV_SLOT_VERSION).as_deref(),
        Some("test/agent:v2"),
        "annotation read at start"
    );
    assert_eq!(
        env_of(&b_start[0], ENV_SLOT).as_deref(),
        Some(Slot::B.as_str())
    );
    assert_eq!(
        env_of(&b_start[0], "BATON_SHIM_RESTART").as_deref(),
        Some("1")
    );
    assert_eq!(
        starts(&s.records, NS, "pair", Slot::A.container())
            .unwrap()
            .len(),
        1,
        "slot a started once"
    );

    // FinishUpgrade: active slot flips, slot a is parked on the empty image.
    let finish = json!({
        "metadata": {"annotations": {
            ANN_ACTIVE_SLOT: Slot::B,
            (Slot::A.version_annotation()): "test/empty:1"}},
        "spec": {"containers": [{"name": Slot::A.container(), "image": "test/empty:1"}]}});
    pods.patch("pair", &PatchParams::default(), &Patch::Strategic(&finish))
        .await
        .expect("parking slot a");
    s.pod_until("pair", "slot a parked", |p| {
        slot_status(p, Slot::A)
            .is_some_and(|c| c.image == "test/empty:1" && c.restart_count == 1 && is_running(&c))
    })
    .await;
    let a_events = records(&s.records, NS, "pair", Slot::A.container()).unwrap();
    assert_eq!(
        a_events.last().map(|r| r["signal"].clone()),
        Some(json!("SIGTERM")),
        "graceful stop: {a_events:?}"
    );

    // Deletion: processes stop, then the shim removes the pod.
    let b_pid = b_start[0]["pid"]
        .as_i64()
        .and_then(|p| u32::try_from(p).ok())
        .expect("pid");
    pods.delete("pair", &DeleteParams::default())
        .await
        .expect("deleting pod");
    s.gone("pair").await;
    assert!(!alive(b_pid), "slot b's process stopped");
    let b_events = records(&s.records, NS, "pair", Slot::B.container()).unwrap();
    assert_eq!(
        b_events.last().map(|r| r["signal"].clone()),
        Some(json!("SIGTERM")),
        "{b_events:?}"
    );
    assert!(
        !root.join(format!("w1/pair-{uid8}")).exists(),
        "pod dir removed"
    );
    assert!(
        root.join(format!("w1/logs/{NS}_pair_{}.log", Slot::B.container()))
            .is_file(),
        "logs kept"
    );
}

#[tokio::test]
async fn crash_loops_restart_policies_unmapped_images_and_the_grace_period() {
    let Some(s) = setup(&["w1"]).await else {
        return;
    };
    let pods = s.pods();
    let pod = |name: &str, policy: &str, grace: i64, image: &str, args: &[&str]| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": NS},
            "spec": {"nodeName": "w1", "restartPolicy": policy, "terminationGracePeriodSeconds": grace,
                     "containers": [{"name": "c", "image": image, "args": args}]}
        }))
        .expect("pod")
    };
    for p in [
        pod(
            "crash",
            "Always",
            5,
            "test/agent:v1",
            &["--exit-code", "3", "--after-ms", "300"],
        ),
        pod("once", "Never", 5, "test/agent:v1", &["--exit-code", "0"]),
        pod(
            "stubborn",
            "Always",
            1,
            "test/agent:v1",
            &["--ignore-sigterm"],
        ),
        pod("unmapped", "Always", 5, "test/nope:1", &[]),
    ] {
        pods.create(&PostParams::default(), &p)
            .await
            .expect("creating pod");
    }

    // Crash loop: restarted, lastState recorded, back-off visible.
    let backing_off = s
        .pod_until("crash", "CrashLoopBackOff", |p| {
            container_status(p, "c")
                .and_then(|c| c.state?.waiting?.reason)
                .is_some_and(|r| r == "CrashLoopBackOff")
        })
        .await;
    let c = container_status(&backing_off, "c").expect("status");
    let last = c.last_state.and_then(|l| l.terminated).expect("lastState");
    assert_eq!((last.exit_code, last.reason.as_deref()), (3, Some("Error")));
    assert!(!c.ready);
    assert_eq!(condition(&backing_off, "Ready").as_deref(), Some("False"));
    let pod = s
        .pod_until("crash", "3 restarts", |p| {
            container_status(p, "c").is_some_and(|c| c.restart_count >= 3)
        })
        .await;
    let runs = starts(&s.records, NS, "crash", "c").unwrap();
    assert!(runs.len() >= 4, "{runs:?}");
    let restarts: Vec<_> = runs
        .iter()
        .map(|r| env_of(r, "BATON_SHIM_RESTART"))
        .collect();
    assert_eq!(
        restarts[..4],
        [
            Some("0".into()),
            Some("1".into()),
            Some("2".into()),
            Some("3".into())
        ]
    );
    assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Running"));

    // restartPolicy Never: ran once, Succeeded.
    let once = s
        .pod_until("once", "Succeeded", |p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")
        })
        .await;
    let c = container_status(&once, "c").expect("status");
    assert_eq!(c.restart_count, 0);
    let done = c.state.and_then(|s| s.terminated).expect("terminated");
    assert_eq!(
        (done.exit_code, done.reason.as_deref()),
        (0, Some("Completed"))
    );

    // An image the shim does not map: ErrImagePull, Pending.
    let unmapped = s
        .pod_until("unmapped", "ErrImagePull", |p| {
            container_status(p, "c")
                .and_then(|c| c.state?.waiting?.reason)
                .is_some_and(|r| r == "ErrImagePull")
        })
        .await;
    let message = container_status(&unmapped, "c")
        .and_then(|c| c.state?.waiting?.message)
        .unwrap_or_default();
    assert!(message.contains("--image test/nope:1=COMMAND"), "{message}");
    assert_eq!(
        unmapped.status.and_then(|s| s.phase).as_deref(),
        Some("Pending")
    );

    // Deletion of a process that ignores SIGTERM: SIGKILL after the pod's 1 s grace.
    s.pod_until("stubborn", "running", |p| {
        container_status(p, "c").is_some_and(|c| is_running(&c))
    })
    .await;
    let pid = eventually(
        "stubborn's record",
        WAIT,
        || s.logs(),
        async || starts(&s.records, NS, "stubborn", "c").unwrap().pop()?["pid"].as_i64(),
    )
    .await
    .unwrap();
    let pid = u32::try_from(pid).expect("pid");
    let start = Instant::now();
    pods.delete("stubborn", &DeleteParams::default())
        .await
        .expect("deleting");
    s.gone("stubborn").await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "removed after {took:?}, before the grace period ended"
    );
    assert!(
        took < Duration::from_secs(15),
        "removed only after {took:?}"
    );
    assert!(!alive(pid));
    let events = records(&s.records, NS, "stubborn", "c").unwrap();
    assert!(
        events.iter().all(|e| e["event"] != "signal"),
        "SIGTERM was ignored: {events:?}"
    );
    let log = std::fs::read_to_string(s.shim.root().join("w1/logs/shim-test_stubborn_c.log"))
        .unwrap_or_default();
    assert!(log.contains("exited with code 137"), "{log}");

    // The pods left are removed too, including the never-started one.
    for name in ["crash", "once", "unmapped"] {
        pods.delete(name, &DeleteParams::default())
            .await
            .expect("deleting");
        s.gone(name).await;
    }
}

/// A container of the agent pair pod, as the operator builds it
/// (`operator/src/controller/podspec.rs`: env through the downward API, the
/// bpffs and run-dir mounts), spelled with `baton_api::pairpod`.
fn slot_container(slot: Slot, image: &str) -> serde_json::Value {
    let field = |name: &str, path: String| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let annotation = |key: String| format!("metadata.annotations['{key}']");
    json!({
        "name": slot.container(),
        "image": image,
        "env": [
            {"name": ENV_SLOT, "value": slot},
            field(ENV_SLOT_VERSION, annotation(slot.version_annotation())),
            field(ENV_SLOT_VERSION_ALT, annotation(slot.other().version_annotation())),
            field(ENV_ACTIVE_SLOT, annotation(ANN_ACTIVE_SLOT.to_owned())),
            {"name": ENV_RUN_DIR, "value": DEFAULT_RUN_DIR},
            field(ENV_NODE_NAME, "spec.nodeName".into()),
            field(ENV_POD_NAME, "metadata.name".into()),
            field(ENV_POD_NAMESPACE, "metadata.namespace".into()),
            {"name": "GREETING", "value": format!("hello-$({ENV_NODE_NAME})")},
        ],
        "volumeMounts": [
            {"name": "bpffs", "mountPath": "/sys/fs/bpf"},
            {"name": "run", "mountPath": DEFAULT_RUN_DIR},
        ],
    })
}
