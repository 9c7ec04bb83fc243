//! Scenarios on a real node: kubelet v1.34 + containerd + runc, images built
//! here (e2e/images/build.sh), the chart installed with real Helm, the
//! operator and the agents running as pods (e2e/node/rig.sh; docs/operations.md
//! "The real-node rig"). Each test installs, acts and uninstalls on its own;
//! they share the one node, so they run one at a time (`--test-threads=1`).
//!
//! * `helm_install_upgrade_uninstall`: `helm install` -> Complete on the
//!   layout-1 image with the agent ready, slots as documented, a real Service
//!   whose EndpointSlices the controller-manager maintains (backends are pods)
//!   served through the ClusterIP; `helm upgrade` to the layout-2 image under
//!   traffic from the attached cgroup (>= 1 000 connects/s, 20 held
//!   connections): 0 failed, 0 misrouted, held connections alive, figures in
//!   the status; `helm uninstall` leaves the node clean.
//! * `kubectl_apply_rollbacks_back_to_back`: the operator from Helm, the
//!   KmeshUpgrade from the sample kmeshupgrade.yaml with `kubectl apply -f`;
//!   then 10 changes back to back (v2, v1, v2, ...), each timed (apply ->
//!   committed -> finished) under traffic; none fails or waits on the
//!   kubelet's crash-loop back-off; `kubectl delete --cascade=foreground`
//!   leaves the node clean.
//! * `restarts_in_the_middle`: kubelet restarted, then containerd restarted,
//!   in the middle of a handover; the agent container SIGKILLed in each role:
//!   0 failed connects, the pair converges, nothing left staged.
//!
//! * `gates::preflight_and_canary_stop_bad_builds`: a build the verifier
//!   rejects stopped by preflight with zero handovers; a build refusing 1
//!   connect in 4 stopped by the canary and rolled back; a good build
//!   through both (real_node/gates.rs).
//!
//! Run: scripts/test.sh, or by hand (docs/operations.md):
//!   e2e/images/build.sh --profile dev --tag rig --out /var/tmp/baton-images
//!   e2e/node/rig.sh up --images /var/tmp/baton-images
//!   e2e/node/rig.sh exec cargo test -p baton-e2e --features real-node --test real_node -- --test-threads=1
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use baton_api::pairpod::{Slot, ANN_ACTIVE_SLOT, ANN_HANDOVER_STARTED};
use baton_e2e::node::{
    active_slot, annotation, cluster_ip, container_rss, container_status, slot_status, Rig,
    Traffic, AGENT_V1, AGENT_V2, EMPTY, NS, PROBE, TAG,
};
use baton_e2e::Report;
use serde_json::Value;

#[path = "real_node/gates.rs"]
mod gates;

const RELEASE: &str = "baton";
const UPGRADE: &str = "baton";
const APP_NS: &str = "demo";
/// `helm uninstall` of the release, waiting for its resources to go.
const HELM_UNINSTALL: [&str; 7] = [
    "uninstall",
    RELEASE,
    "-n",
    NS,
    "--wait",
    "--timeout",
    "120s",
];
const INSTALL_TIMEOUT: Duration = Duration::from_secs(120);
const CHANGE_TIMEOUT: Duration = Duration::from_secs(120);
/// Paced connects/s of the client: at least 1 000 must be achieved (asserted),
/// with headroom for a loaded CI machine.
const RATE: f64 = 1500.0;
const HOLD: u64 = 20;

/// Removes what an earlier, failed scenario may have left (best effort), so
/// that every scenario starts from a node without Baton.
fn fresh(rig: &Rig) {
    let kubectl = Path::new("kubectl");
    let _ = rig.try_run(
        kubectl,
        &[
            "delete",
            "kmu",
            "--all",
            "-n",
            NS,
            "--cascade=foreground",
            "--timeout=120s",
        ],
    );
    let _ = rig.try_run(&rig.bins.join("helm"), &HELM_UNINSTALL);
    let _ = rig.try_run(
        kubectl,
        &[
            "delete",
            "namespace",
            APP_NS,
            "--ignore-not-found",
            "--timeout=120s",
        ],
    );
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("baton-real-node-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Chart values every install on the rig needs: local images, the API server
/// at the node address (nothing routes the `kubernetes` Service: no
/// kube-proxy), the agent attached to the rig's client cgroup.
fn rig_values(rig: &Rig, agent_tag: &str) -> Vec<String> {
    vec![
        format!("operator.image.tag={TAG}"),
        format!("agent.image.tag={agent_tag}"),
        format!("operator.apiServer.host={}", rig.node_ip),
        "operator.apiServer.port=6443".into(),
        format!("agent.apiServer.host={}", rig.node_ip),
        "agent.apiServer.port=6443".into(),
        format!("agent.cgroup={}", rig.cgroup.display()),
    ]
}

fn helm_install(rig: &Rig, agent_tag: &str, extra: &[&str]) {
    let mut args: Vec<String> = [
        "install",
        RELEASE,
        "charts/baton",
        "-n",
        NS,
        "--create-namespace",
        "--wait",
        "--timeout",
        "120s",
    ]
    .map(String::from)
    .to_vec();
    for v in rig_values(rig, agent_tag) {
        args.push("--set".into());
        args.push(v);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    rig.helm(&args);
    eprintln!("helm install: {:?}", t0.elapsed());
}

fn helm_uninstall(rig: &Rig) {
    let t0 = Instant::now();
    rig.helm(&HELM_UNINSTALL);
    eprintln!("helm uninstall: {:?}", t0.elapsed());
}

/// Three backend pods (baton-probe `serve` on the pod IP) behind a ClusterIP
/// Service; returns `ClusterIP:80` once its EndpointSlice lists 3 ready
/// endpoints.
fn backends(rig: &Rig, dir: &Path) -> String {
    let manifest = format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: {APP_NS}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: echo, namespace: {APP_NS}}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: echo}}}}
  template:
    metadata: {{labels: {{app: echo}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: echo
        image: {PROBE}
        imagePullPolicy: Never
        args: ["serve", "--backend", "$(POD_IP):8080"]
        env:
        - name: POD_IP
          valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
        ports: [{{containerPort: 8080}}]
        readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: {APP_NS}}}
spec:
  selector: {{app: echo}}
  ports: [{{port: 80, targetPort: 8080}}]
"#
    );
    let file = dir.join("backends.yaml");
    std::fs::write(&file, manifest).expect("backends manifest");
    rig.kubectl(&["apply", "-f", &file.to_string_lossy()]);
    rig.wait_until("3 ready endpoints of demo/echo", INSTALL_TIMEOUT, || {
        let slices = rig.get(&[
            "endpointslices",
            "-n",
            APP_NS,
            "-l",
            "kubernetes.io/service-name=echo",
        ])?;
        let ready = slices["items"]
            .as_array()?
            .iter()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["conditions"]["ready"] == true)
            .count();
        (ready == 3).then_some(())
    });
    let svc = rig
        .get(&["service", "-n", APP_NS, "echo"])
        .expect("service echo");
    cluster_ip(&svc)
}

/// `podIP:8080` of every backend pod.
fn backend_identities(rig: &Rig) -> BTreeSet<String> {
    let pods = rig
        .get(&["pods", "-n", APP_NS, "-l", "app=echo"])
        .expect("backend pods");
    pods["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["status"]["podIP"].as_str())
                .map(|ip| format!("{ip}:8080"))
                .collect()
        })
        .unwrap_or_default()
}

fn remove_backends(rig: &Rig) {
    rig.kubectl(&[
        "delete",
        "namespace",
        APP_NS,
        "--wait=true",
        "--timeout=120s",
    ]);
}

/// Panics unless every connect succeeded and reached a backend pod, and
/// every held connection survived.
fn assert_clean(report: &Report, want: &BTreeSet<String>, when: &str) {
    let t = &report.totals;
    let misrouted: Vec<&String> = t.identities.keys().filter(|k| !want.contains(*k)).collect();
    assert!(
        t.attempted > 0 && t.failed == 0 && t.ok == t.attempted && misrouted.is_empty(),
        "{when}: {} attempted, {} ok, {} failed ({:?}, first error {:?}), misrouted to {misrouted:?}",
        t.attempted,
        t.ok,
        t.failed,
        t.errors,
        t.first_error
    );
    if let Some(h) = &report.hold {
        assert!(
            h.held == h.requested && h.alive == h.held && h.dead_count == 0,
            "{when}: held connections: {h:?}"
        );
    }
    eprintln!(
        "{when}: {} connects at {:.0}/s, 0 failed, 0 misrouted, {} backends, held {}",
        t.attempted,
        report.achieved_rate,
        t.identities.len(),
        report.hold.as_ref().map_or(0, |h| h.alive)
    );
}

/// A short burst through the ClusterIP: every connect reaches a backend, and
/// every backend is reached.
fn assert_serving(rig: &Rig, dir: &Path, vip: &str, when: &str) {
    let want = backend_identities(rig);
    let traffic = Traffic::start(rig, dir, vip, 500.0, 0);
    std::thread::sleep(Duration::from_secs(1));
    let report = traffic.stop();
    assert_clean(&report, &want, when);
    assert_eq!(
        report.totals.identities.len(),
        want.len(),
        "{when}: backends reached {:?}, want {want:?}",
        report.totals.identities
    );
}

/// The active slot and its container's status (by the pod's active-slot annotation).
fn active_container(pod: &Value) -> (Slot, Value) {
    let slot = active_slot(pod);
    let status = slot_status(pod, slot).cloned().unwrap_or(Value::Null);
    (slot, status)
}

/// Programs attached to the client cgroup (bpftool).
fn attached_programs(rig: &Rig) -> String {
    let out = rig.try_run(
        Path::new("bpftool"),
        &["cgroup", "show", &rig.cgroup.to_string_lossy()],
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// After an uninstall: no program on the cgroup, no pin, no agent pod.
fn assert_node_clean(rig: &Rig, when: &str) {
    rig.wait_until(&format!("{when}: agent pod gone"), INSTALL_TIMEOUT, || {
        rig.agent_pod(UPGRADE).is_none().then_some(())
    });
    let progs = attached_programs(rig);
    assert!(
        !progs.contains("connect4") && !progs.contains("connect6"),
        "{when}: programs still attached to {}:\n{progs}",
        rig.cgroup.display()
    );
    let pins = Path::new("/sys/fs/bpf/baton");
    let left: Vec<_> = std::fs::read_dir(pins)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "{when}: pins left under {}: {left:?}",
        pins.display()
    );
    eprintln!("{when}: node clean (no attachment on the cgroup, no pin)");
}

fn wait_installed(rig: &Rig, image: &str) -> Value {
    let t0 = Instant::now();
    let status = rig.wait_complete(UPGRADE, image, INSTALL_TIMEOUT);
    eprintln!("KmeshUpgrade Complete on {image} after {:?}", t0.elapsed());
    status
}

#[test]
fn helm_install_upgrade_uninstall() {
    let Some(rig) = Rig::from_env() else { return };
    fresh(&rig);
    let dir = scratch("helm");
    helm_install(&rig, &format!("{TAG}-v1"), &[]);
    let vip = backends(&rig, &dir);
    wait_installed(&rig, AGENT_V1);

    // Slots as documented: the agent active in slot a, slot b on the empty image.
    let pod = rig.agent_pod(UPGRADE).expect("agent pod");
    let ann = &pod["metadata"]["annotations"];
    assert_eq!(
        annotation(&pod, ANN_ACTIVE_SLOT),
        Some(Slot::A.as_str()),
        "{ann}"
    );
    let a = slot_status(&pod, Slot::A).expect("slot a status");
    let b = slot_status(&pod, Slot::B).expect("slot b status");
    assert_eq!(a["image"], AGENT_V1, "{a}");
    assert_eq!(a["ready"], true, "{a}");
    assert_eq!(b["image"], EMPTY, "{b}");
    assert!(b["state"]["running"].is_object(), "{b}");
    assert_serving(&rig, &dir, &vip, "after helm install");

    // helm upgrade to the layout-2 image under traffic.
    let want = backend_identities(&rig);
    let traffic = Traffic::start(&rig, &dir, &vip, RATE, HOLD);
    std::thread::sleep(Duration::from_secs(1));
    let t0 = Instant::now();
    rig.helm(&[
        "upgrade",
        RELEASE,
        "charts/baton",
        "-n",
        NS,
        "--reuse-values",
        "--set",
        &format!("agent.image.tag={TAG}-v2"),
    ]);
    let status = rig.wait_complete(UPGRADE, AGENT_V2, CHANGE_TIMEOUT);
    eprintln!("helm upgrade -> Complete on v2: {:?}", t0.elapsed());
    std::thread::sleep(Duration::from_secs(1));
    let report = traffic.stop();
    assert_clean(&report, &want, "helm upgrade v1 -> v2");
    assert!(
        report.achieved_rate >= 1000.0,
        "rate {}",
        report.achieved_rate
    );
    let node = &status["nodeStatuses"][0];
    let figures = &node["lastHandover"];
    assert!(
        figures["durationMs"].is_i64() && figures["mapsMigrated"].as_i64().unwrap_or(0) > 0,
        "figures of a layout-changing handover: {node}"
    );
    let pod = rig.agent_pod(UPGRADE).expect("agent pod");
    let (active, st) = active_container(&pod);
    assert_eq!(active, Slot::B, "{}", pod["metadata"]["annotations"]);
    assert_eq!(st["image"], AGENT_V2, "{st}");
    assert_eq!(st["ready"], true, "{st}");
    // The old slot keeps the retired agent as a warm standby (no swap to the
    // empty image, so no container restart: docs/operator.md).
    let old = slot_status(&pod, Slot::A).expect("slot a status");
    assert_eq!(old["image"], AGENT_V1, "{old}");
    assert!(old["state"]["running"].is_object(), "{old}");
    assert_eq!(old["restartCount"], 0, "{old}");
    eprintln!("agent pod memory (VmRSS KiB): {:?}", container_rss(&pod));
    assert_serving(&rig, &dir, &vip, "after helm upgrade");

    helm_uninstall(&rig);
    assert_node_clean(&rig, "helm uninstall");
    remove_backends(&rig);
}

/// The sample kmeshupgrade.yaml with this rig's images, API server and cgroup.
fn sample_upgrade(rig: &Rig, image: &str) -> String {
    let text =
        std::fs::read_to_string(rig.repo.join("kmeshupgrade.yaml")).expect("kmeshupgrade.yaml");
    let mut doc: Value = serde_yaml::from_str(&text).expect("kmeshupgrade.yaml parses");
    doc["metadata"]["name"] = UPGRADE.into();
    doc["metadata"]["namespace"] = NS.into();
    let spec = &mut doc["spec"];
    spec["agentImage"] = image.into();
    spec["emptyImage"] = EMPTY.into();
    spec["pod"]["apiServer"] = serde_json::json!({"host": rig.node_ip, "port": 6443});
    spec["pod"]["cgroup"] = rig.cgroup.to_string_lossy().into_owned().into();
    // JSON, not YAML: kubectl reads YAML 1.1, where a re-serialized `on` is a boolean.
    serde_json::to_string_pretty(&doc).expect("json")
}

/// The sample selects nodes labelled `baton.dev/mesh=on`, as a user would.
fn label_node(rig: &Rig) {
    rig.kubectl(&[
        "label",
        "node",
        &rig.node,
        "baton.dev/mesh=on",
        "--overwrite",
    ]);
}

fn apply(rig: &Rig, dir: &Path, json: &str) {
    let file = dir.join("kmeshupgrade.json");
    std::fs::write(&file, json).expect("write kmeshupgrade.json");
    rig.kubectl(&["apply", "-f", &file.to_string_lossy()]);
}

/// (slot a, slot b) restart counts of the agent pod.
fn restart_counts(pod: &Value) -> (i64, i64) {
    let count = |slot: Slot| {
        slot_status(pod, slot)
            .and_then(|s| s["restartCount"].as_i64())
            .unwrap_or(-1)
    };
    (count(Slot::A), count(Slot::B))
}

/// The path without Helm for the KmeshUpgrade: the operator from the chart
/// (`upgrade.enabled=false`), the node labelled, the sample applied; returns
/// the backends' `ClusterIP:80` once the agent serves on the layout-1 image.
fn install_with_kubectl(rig: &Rig, dir: &Path) -> String {
    helm_install(
        rig,
        &format!("{TAG}-v1"),
        &["--set", "upgrade.enabled=false"],
    );
    let vip = backends(rig, dir);
    label_node(rig);
    apply(rig, dir, &sample_upgrade(rig, AGENT_V1));
    wait_installed(rig, AGENT_V1);
    vip
}

/// `kubectl delete kmu --cascade=foreground` leaves the node clean; then the
/// operator and the backends go.
fn uninstall_with_kubectl(rig: &Rig) {
    let t0 = Instant::now();
    rig.kubectl(&[
        "delete",
        "kmu",
        "-n",
        NS,
        UPGRADE,
        "--cascade=foreground",
        "--timeout=120s",
    ]);
    eprintln!(
        "kubectl delete kmu --cascade=foreground: {:?}",
        t0.elapsed()
    );
    assert_node_clean(rig, "kubectl delete kmu");
    helm_uninstall(rig);
    remove_backends(rig);
}

/// One node change's wall time: apply -> the new slot committed -> finished.
struct Timing {
    to: &'static str,
    committed: Duration,
    finished: Duration,
}

#[test]
fn kubectl_apply_rollbacks_back_to_back() {
    let Some(rig) = Rig::from_env() else { return };
    fresh(&rig);
    let dir = scratch("kubectl");
    let vip = install_with_kubectl(&rig, &dir);
    assert_serving(&rig, &dir, &vip, "after kubectl apply");

    let want = backend_identities(&rig);
    let traffic = Traffic::start(&rig, &dir, &vip, RATE, HOLD);
    let mut timings = Vec::new();
    let mut baseline = None;
    // Seconds between changes (default 0: back to back, the kubelet back-off
    // case); docs/benchmarks.md also reports a run with 12 s.
    let gap: u64 = std::env::var("BATON_REAL_NODE_GAP_S")
        .ok()
        .and_then(|g| g.parse().ok())
        .unwrap_or(0);
    for i in 0..10 {
        std::thread::sleep(Duration::from_secs(if i > 0 { gap } else { 0 }));
        let to = if i % 2 == 0 { AGENT_V2 } else { AGENT_V1 };
        let before = rig.agent_pod(UPGRADE).expect("agent pod");
        let (old_active, _) = active_container(&before);
        let t0 = Instant::now();
        apply(&rig, &dir, &sample_upgrade(&rig, to));
        let committed = rig.wait_until(
            &format!("change {i}: committed to {to}"),
            CHANGE_TIMEOUT,
            || {
                let pod = rig.agent_pod(UPGRADE)?;
                let (active, st) = active_container(&pod);
                (active != old_active && st["image"] == to && st["ready"] == true)
                    .then(|| t0.elapsed())
            },
        );
        rig.wait_complete(UPGRADE, to, CHANGE_TIMEOUT);
        let finished = t0.elapsed();
        let status = rig.upgrade_status(UPGRADE);
        assert_eq!(
            status["failed"].as_i64().unwrap_or(0),
            0,
            "change {i}: {status}"
        );
        let restarts = restart_counts(&rig.agent_pod(UPGRADE).expect("agent pod"));
        eprintln!("change {i} -> {to}: committed {committed:?}, finished {finished:?}, restarts {restarts:?}");
        // Once each slot has run its image, later flips between the two
        // images restart no container: the standby takes over in place, so
        // the kubelet's crash-loop back-off never applies.
        match &baseline {
            None if i == 1 => baseline = Some(restarts),
            Some(b) => assert_eq!(&restarts, b, "change {i}: a container restarted"),
            None => {}
        }
        timings.push(Timing {
            to,
            committed,
            finished,
        });
    }
    let report = traffic.stop();
    assert_clean(&report, &want, "10 changes back to back");
    let pod = rig.agent_pod(UPGRADE).expect("agent pod");
    let rss = container_rss(&pod);
    eprintln!("agent pod memory (VmRSS KiB): {rss:?}");

    let mut finished: Vec<Duration> = timings.iter().map(|t| t.finished).collect();
    finished.sort();
    let median = finished[finished.len() / 2];
    let max = finished[finished.len() - 1];
    eprintln!(
        "node change wall time over {}: median {median:?}, max {max:?}",
        finished.len()
    );
    if let Some(out) = std::env::var_os("BATON_REAL_NODE_RESULTS") {
        let rows: Vec<Value> = timings
            .iter()
            .map(|t| {
                serde_json::json!({"to": t.to, "committed_ms": t.committed.as_millis() as u64,
                    "finished_ms": t.finished.as_millis() as u64})
            })
            .collect();
        let summary = serde_json::json!({"changes": rows, "connects": report.totals.attempted,
            "failed": report.totals.failed, "median_ms": median.as_millis() as u64,
            "max_ms": max.as_millis() as u64, "gap_s": gap, "rss_kib": rss});
        std::fs::write(out, summary.to_string()).expect("results file");
    }

    uninstall_with_kubectl(&rig);
}

/// The pod's container id of `container` (without the runtime prefix).
fn container_id(pod: &Value, container: &str) -> String {
    container_status(pod, container)
        .and_then(|c| c["containerID"].as_str())
        .and_then(|id| id.strip_prefix("containerd://"))
        .unwrap_or_default()
        .to_owned()
}

fn sigkill_container(rig: &Rig, id: &str) {
    let sock = std::env::var("BATON_NODE_CONTAINERD").expect("BATON_NODE_CONTAINERD");
    rig.run(
        Path::new("ctr"),
        &[
            "-a", &sock, "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", id,
        ],
    );
}

/// No staging directory left beside the pins (a successor's half-built datapath).
fn assert_nothing_staged(when: &str) {
    let staged: Vec<_> = std::fs::read_dir("/sys/fs/bpf/baton")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("staging"))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        staged.is_empty(),
        "{when}: staged datapath left: {staged:?}"
    );
}

#[test]
fn restarts_in_the_middle() {
    let Some(rig) = Rig::from_env() else { return };
    fresh(&rig);
    let dir = scratch("restarts");
    let vip = install_with_kubectl(&rig, &dir);
    let want = backend_identities(&rig);
    let traffic = Traffic::start(&rig, &dir, &vip, RATE, HOLD);

    for (process, to) in [("kubelet", AGENT_V2), ("containerd", AGENT_V1)] {
        apply(&rig, &dir, &sample_upgrade(&rig, to));
        // In the middle: once the operator announced the handover.
        rig.wait_until(&format!("handover to {to} started"), CHANGE_TIMEOUT, || {
            let pod = rig.agent_pod(UPGRADE)?;
            annotation(&pod, ANN_HANDOVER_STARTED)
                .is_some()
                .then_some(())
        });
        rig.rig(&["restart", process]);
        rig.wait_complete(UPGRADE, to, CHANGE_TIMEOUT);
        assert_nothing_staged(&format!("{process} restarted during a handover"));
        eprintln!("{process} restarted during a handover to {to}: converged");
    }

    // SIGKILL of the agent container in each role.
    for role in ["active", "idle"] {
        let pod = rig.agent_pod(UPGRADE).expect("agent pod");
        let (active, _) = active_container(&pod);
        let victim = if role == "active" {
            active.container()
        } else {
            active.other().container()
        };
        let id = container_id(&pod, victim);
        assert!(!id.is_empty(), "no container id for {victim}: {pod}");
        sigkill_container(&rig, &id);
        rig.wait_until(
            &format!("{victim} ({role}) restarted and the pair ready"),
            CHANGE_TIMEOUT,
            || {
                let pod = rig.agent_pod(UPGRADE)?;
                let (now_active, st) = active_container(&pod);
                let restarted =
                    container_id(&pod, victim) != id && !container_id(&pod, victim).is_empty();
                (restarted && now_active == active && st["ready"] == true).then_some(())
            },
        );
        rig.wait_complete(UPGRADE, AGENT_V1, CHANGE_TIMEOUT);
        assert_nothing_staged(&format!("SIGKILL of the {role} slot"));
        eprintln!("SIGKILL of the {role} slot ({victim}): converged");
    }
    let report = traffic.stop();
    assert_clean(&report, &want, "restarts and kills in the middle");

    uninstall_with_kubectl(&rig);
}
