//! The controller against a real kube-apiserver with fake Node objects. There
//! is no kubelet: the test plays it (pod status) and the agents (handover
//! condition), and checks what the operator does in response.
//!
//! The operator and the agents act as the chart's service accounts, bound by
//! the chart's own RBAC: a missing permission fails these tests.
//!
//! Needs `e2e/cluster/k8s-bins.sh` (or `BATON_SKIP_APISERVER=1`) and the chart
//! test requirements (`pip install -r charts/tests/requirements.txt`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use baton_operator::controller::{self, Settings};
use baton_operator::crd::{KmeshUpgrade, RolloutPhase};
use baton_operator::leader::LeaseLock;
use baton_operator::metrics::Metrics;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use support::apiserver::ApiServer;

const NS: &str = support::chart::RELEASE_NAMESPACE;
const OPERATOR_SA: &str = "system:serviceaccount:baton-system:baton-operator";
const AGENT_SA: &str = "system:serviceaccount:baton-system:baton-agent";
const WAIT: Duration = Duration::from_secs(40);

/// Polls `check` until it returns `Some`, or panics with `what` after `WAIT`.
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < WAIT {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out after {WAIT:?} waiting for {what}");
}

async fn create<K>(api: &Api<K>, value: Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(value).expect("test object parses");
    api.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("creating test object: {e}"));
}

fn annotation(pod: &Pod, key: &str) -> Option<String> {
    pod.metadata.annotations.as_ref()?.get(key).cloned()
}

fn image(pod: &Pod, container: &str) -> Option<String> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == container)?
        .image
        .clone()
}

fn upgrading(pod: &Pod) -> bool {
    annotation(pod, "baton.dev/handover-started").is_some()
}

/// Plays the kubelet: both slots running and ready.
async fn kubelet_runs(pods: &Api<Pod>, name: &str) {
    let status = |c: &str| {
        json!({"name": c, "ready": true, "restartCount": 0, "image": "", "imageID": "",
               "state": {"running": {}}})
    };
    let body = json!({"status": {"phase": "Running",
        "containerStatuses": [status("slot-a"), status("slot-b")]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .unwrap_or_else(|e| panic!("kubelet status of {name}: {e}"));
}

/// Plays an agent that started as the active slot: `baton.dev/Started`.
async fn agent_starts(pods: &Api<Pod>, name: &str, slot: &str, version: &str) {
    let body = json!({"status": {"conditions": [{
        "type": "baton.dev/Started", "status": "True", "reason": "Started",
        "message": json!({"slot": slot, "version": version}).to_string(),
        "lastTransitionTime": Timestamp::now().to_string(),
    }]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Strategic(&body))
        .await
        .unwrap_or_else(|e| panic!("agent start condition on {name}: {e}"));
}

/// Plays the new agent: reports its handover through the pod condition.
async fn agent_reports(pods: &Api<Pod>, name: &str, slot: &str, version: &str, committed: bool) {
    let message = json!({"slot": slot, "version": version, "durationMs": 42, "freezeMs": 3,
                         "mapsReused": 5, "mapsMigrated": 1, "entriesCopied": 1234,
                         "message": if committed { "ok" } else { "frontend map refused" }});
    let body = json!({"status": {"conditions": [{
        "type": "baton.dev/Handover",
        "status": if committed { "True" } else { "False" },
        "reason": if committed { "Committed" } else { "Failed" },
        "message": message.to_string(),
        "lastTransitionTime": Timestamp::now().to_string(),
    }]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Strategic(&body))
        .await
        .unwrap_or_else(|e| panic!("agent condition on {name}: {e}"));
}

async fn pods_by_name(pods: &Api<Pod>) -> Vec<Pod> {
    let mut list = pods
        .list(&ListParams::default().labels("baton.dev/upgrade=baton"))
        .await
        .expect("listing pods")
        .items;
    list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    list
}

async fn status_where(
    upgrades: &Api<KmeshUpgrade>,
    what: &str,
    check: impl Fn(&baton_operator::crd::KmeshUpgradeStatus) -> bool,
) -> baton_operator::crd::KmeshUpgradeStatus {
    wait_for(what, || async {
        let s = upgrades.get("baton").await.ok()?.status?;
        check(&s).then_some(s)
    })
    .await
}

/// Runs one node's handover to `version` through: waits for the start, reports commit.
async fn commit_next(
    pods: &Api<Pod>,
    agent_pods: &Api<Pod>,
    node: &str,
    slot: &str,
    version: &str,
) {
    let name = format!("baton-{node}");
    let pod = wait_for(
        &format!("{name} to start a handover to {version}"),
        || async {
            let p = pods.get(&name).await.ok()?;
            (upgrading(&p) && image(&p, &format!("slot-{slot}")).as_deref() == Some(version))
                .then_some(p)
        },
    )
    .await;
    assert_eq!(
        annotation(&pod, &format!("baton.dev/slot-{slot}-version")).as_deref(),
        Some(version),
        "the slot's version annotation moves with its image"
    );
    // maxUnavailable 1: nobody else may be in flight meanwhile.
    let others: Vec<_> = pods_by_name(pods)
        .await
        .into_iter()
        .filter(|p| upgrading(p) && p.metadata.name.as_deref() != Some(&name))
        .filter_map(|p| p.metadata.name)
        .collect();
    assert!(
        others.is_empty(),
        "{others:?} upgrading at the same time as {name}"
    );
    agent_reports(agent_pods, &name, slot, version, true).await;
    wait_for(&format!("{name} to finish its handover"), || async {
        let p = pods.get(&name).await.ok()?;
        (!upgrading(&p) && annotation(&p, "baton.dev/active-slot").as_deref() == Some(slot))
            .then_some(())
    })
    .await;
}

fn forbidden<T>(result: Result<T, kube::Error>) -> bool {
    matches!(result, Err(kube::Error::Api(s)) if s.code == 403)
}

#[tokio::test]
async fn chart_accounts_get_what_they_need_and_no_more() {
    let Some(server) = ApiServer::start().await else {
        return;
    };
    support::chart::install_rbac(&server.client().await).await;
    let agent = server.client_as(AGENT_SA).await;
    let all = ListParams::default();
    Api::<Service>::all(agent.clone())
        .list(&all)
        .await
        .expect("agent lists services");
    Api::<EndpointSlice>::all(agent.clone())
        .list(&all)
        .await
        .expect("agent lists endpoint slices");
    assert!(forbidden(Api::<Node>::all(agent.clone()).list(&all).await));
    assert!(forbidden(
        Api::<Secret>::namespaced(agent.clone(), NS)
            .list(&all)
            .await
    ));
    assert!(forbidden(
        Api::<Pod>::namespaced(agent, NS)
            .delete("anything", &Default::default())
            .await
    ));
    let operator = server.client_as(OPERATOR_SA).await;
    assert!(forbidden(
        Api::<Secret>::namespaced(operator.clone(), NS)
            .list(&all)
            .await
    ));
    assert!(forbidden(Api::<Service>::all(operator).list(&all).await));
}

/// A cluster with chart RBAC, nodes n1..n3 (selected) and n4 (not), a
/// KmeshUpgrade `baton` on agent:v1 with `strategy`, and the operator running.
struct Harness {
    client: kube::Client,
    pods: Api<Pod>,
    /// Pods as the agents' service account sees them (for their reports).
    agent_pods: Api<Pod>,
    upgrades: Api<KmeshUpgrade>,
    metrics: Arc<Metrics>,
    stop: tokio::sync::oneshot::Sender<()>,
    operator: tokio::task::JoinHandle<Result<(), controller::ControllerError>>,
}

impl Harness {
    async fn start(server: &ApiServer, strategy: Value) -> Harness {
        let nodes = [("n1", true), ("n2", true), ("n3", true), ("n4", false)];
        Self::start_with(server, strategy, &nodes.map(|(n, m)| (n.to_owned(), m))).await
    }

    /// Like `start`, with `(name, selected)` nodes.
    async fn start_with(
        server: &ApiServer,
        mut strategy: Value,
        fleet: &[(String, bool)],
    ) -> Harness {
        // Nothing runs pods here: checks would never finish. The planner's
        // gate tests and the real node (e2e real_node.rs) cover preflight.
        if strategy.get("preflight").is_none() {
            strategy["preflight"] = json!({"mode": "Disabled"});
        }
        let client = server.client().await;
        support::install_crd(&client).await;
        support::chart::install_rbac(&client).await;
        let nodes: Api<Node> = Api::all(client.clone());
        for (name, mesh) in fleet {
            let labels = if *mesh {
                json!({"baton.dev/mesh": "on"})
            } else {
                json!({})
            };
            create(
                &nodes,
                json!({"metadata": {"name": name, "labels": labels}}),
            )
            .await;
        }
        let upgrades: Api<KmeshUpgrade> = Api::namespaced(client.clone(), NS);
        create(
            &upgrades,
            json!({"apiVersion": "baton.dev/v1alpha1", "kind": "KmeshUpgrade",
                   "metadata": {"name": "baton"},
                   "spec": {"nodeSelector": {"matchLabels": {"baton.dev/mesh": "on"}},
                            "agentImage": "agent:v1", "emptyImage": "empty:1",
                            "strategy": strategy}}),
        )
        .await;
        let metrics = Arc::new(Metrics::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let settings = Settings {
            in_flight_poll: Duration::from_millis(300),
            ..Settings::default()
        };
        // The operator acts as the chart's service account, under the chart's RBAC.
        let operator = tokio::spawn(controller::run(
            server.client_as(OPERATOR_SA).await,
            settings,
            metrics.clone(),
            async {
                let _ = stopped.await;
            },
        ));
        Harness {
            pods: Api::namespaced(client.clone(), NS),
            agent_pods: Api::namespaced(server.client_as(AGENT_SA).await, NS),
            client,
            upgrades,
            metrics,
            stop,
            operator,
        }
    }

    /// Plays the kubelet for the three pods and waits for a complete v1 rollout.
    async fn run_v1(&self) -> Vec<Pod> {
        let created = wait_for("three agent pods", || async {
            let list = pods_by_name(&self.pods).await;
            (list.len() == 3).then_some(list)
        })
        .await;
        for pod in &created {
            kubelet_runs(&self.pods, pod.metadata.name.as_deref().expect("name")).await;
        }
        // Running containers are not ready agents: nothing counts until the
        // agents say they own the datapath.
        let s = status_where(&self.upgrades, "pods running, no agent ready", |s| {
            s.nodes == 3 && s.phase.is_some()
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = self
            .upgrades
            .get("baton")
            .await
            .ok()
            .and_then(|u| u.status)
            .unwrap_or(s);
        assert_eq!((s.ready, s.updated), (0, 0), "{s:?}");
        assert_ne!(s.phase, Some(RolloutPhase::Complete));
        assert_eq!(
            s.stable_image, None,
            "an image that never served is no rollback target"
        );
        for pod in &created {
            let name = pod.metadata.name.as_deref().expect("name");
            agent_starts(&self.agent_pods, name, "a", "agent:v1").await;
        }
        let s = status_where(&self.upgrades, "a complete v1 rollout", |s| {
            s.phase == Some(RolloutPhase::Complete) && s.ready == 3
        })
        .await;
        assert_eq!((s.nodes, s.updated, s.failed), (3, 3, 0));
        assert_eq!(s.stable_image.as_deref(), Some("agent:v1"));
        created
    }

    async fn set_image(&self, image: &str) {
        self.upgrades
            .patch(
                "baton",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"agentImage": image}})),
            )
            .await
            .expect("patching agentImage");
    }

    async fn shutdown(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(20), self.operator)
            .await
            .expect("controller stops on shutdown")
            .expect("controller task did not panic")
            .expect("controller ended cleanly");
    }
}

#[tokio::test]
async fn controller_rolls_out_upgrades_and_stops_on_failure() {
    let Some(server) = ApiServer::start().await else {
        return;
    };
    let h = Harness::start(
        &server,
        json!({"maxUnavailable": 1, "handoverTimeoutSeconds": 60}),
    )
    .await;
    let (client, pods, agent_pods, upgrades) = (&h.client, &h.pods, &h.agent_pods, &h.upgrades);

    // 1. One pair pod per selected node, none on the unselected one.
    let created = h.run_v1().await;
    let names: Vec<_> = created
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(names, ["baton-n1", "baton-n2", "baton-n3"]);
    for pod in &created {
        let spec = pod.spec.as_ref().expect("pod spec");
        assert_eq!(image(pod, "slot-a").as_deref(), Some("agent:v1"));
        assert_eq!(image(pod, "slot-b").as_deref(), Some("empty:1"));
        assert_eq!(spec.service_account_name.as_deref(), Some("baton-agent"));
        let owner = &pod.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("KmeshUpgrade", Some(true))
        );
    }

    // 2. A new image is a hot upgrade, one node at a time, in name order.
    h.set_image("agent:v2").await;
    for node in ["n1", "n2", "n3"] {
        commit_next(pods, agent_pods, node, "b", "agent:v2").await;
    }
    let s = status_where(upgrades, "a complete v2 rollout", |s| {
        s.phase == Some(RolloutPhase::Complete) && s.updated == 3
    })
    .await;
    assert_eq!(s.stable_image.as_deref(), Some("agent:v2"));
    for pod in pods_by_name(pods).await {
        assert_eq!(
            image(&pod, "slot-a").as_deref(),
            Some("agent:v1"),
            "the old agent stays in its slot as the warm standby"
        );
        assert_eq!(
            annotation(&pod, "baton.dev/slot-a-version").as_deref(),
            Some("agent:v1")
        );
        assert_eq!(image(&pod, "slot-b").as_deref(), Some("agent:v2"));
    }
    let n1 = s
        .node_statuses
        .iter()
        .find(|n| n.node == "n1")
        .expect("n1 status");
    assert_eq!(n1.version.as_deref(), Some("agent:v2"));
    let figures = n1
        .last_handover
        .as_ref()
        .expect("handover figures in status");
    assert_eq!((figures.duration_ms, figures.entries_copied), (42, 1234));

    // 3. A failed handover parks the new slot again and halts the rollout.
    h.set_image("agent:v3").await;
    wait_for("n1 to start v3 in slot a", || async {
        let p = pods.get("baton-n1").await.ok()?;
        (upgrading(&p) && image(&p, "slot-a").as_deref() == Some("agent:v3")).then_some(())
    })
    .await;
    agent_reports(agent_pods, "baton-n1", "a", "agent:v3", false).await;
    let s = status_where(upgrades, "the rollout to fail", |s| {
        s.phase == Some(RolloutPhase::Failed)
    })
    .await;
    assert_eq!((s.failed, s.failed_image.as_deref()), (1, Some("agent:v3")));
    let n1 = pods.get("baton-n1").await.expect("n1 pod");
    assert!(!upgrading(&n1));
    assert_eq!(
        image(&n1, "slot-a").as_deref(),
        Some("empty:1"),
        "failed slot parked"
    );
    assert_eq!(
        annotation(&n1, "baton.dev/active-slot").as_deref(),
        Some("b"),
        "old agent still active"
    );
    let n1_status = s.node_statuses.iter().find(|n| n.node == "n1").expect("n1");
    assert_eq!(
        n1_status
            .last_handover
            .as_ref()
            .and_then(|h| h.message.as_deref()),
        Some("frontend map refused"),
        "the failure, not the previous success, is n1's last handover: {n1_status:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy: Vec<_> = pods_by_name(pods)
        .await
        .into_iter()
        .filter(upgrading)
        .collect();
    assert!(
        busy.is_empty(),
        "no handover may start after a failure with onFailure: Pause"
    );

    // 4. Events tell the story.
    let events: Api<Event> = Api::namespaced(client.clone(), NS);
    let reasons = wait_for("HandoverFailed event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        let reasons: Vec<String> = list.items.into_iter().filter_map(|e| e.reason).collect();
        reasons
            .iter()
            .any(|r| r == "HandoverFailed")
            .then_some(reasons)
    })
    .await;
    for want in ["PodCreated", "HandoverCommitted", "StandbyReset"] {
        assert!(
            reasons.iter().any(|r| r == want),
            "no {want} event in {reasons:?}"
        );
    }

    // 5. A node that leaves the selection loses its pod.
    Api::<Node>::all(client.clone())
        .patch(
            "n3",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"baton.dev/mesh": null}}})),
        )
        .await
        .expect("unlabelling n3");
    // Without a kubelet a bound pod stays Terminating: deletion requested is the check.
    wait_for("n3's pod to be deleted", || async {
        let pod = pods.get_opt("baton-n3").await.ok()?;
        pod.is_none_or(|p| p.metadata.deletion_timestamp.is_some())
            .then_some(())
    })
    .await;
    status_where(upgrades, "two selected nodes", |s| s.nodes == 2).await;

    let text = h.metrics.render();
    assert!(
        text.contains(r#"baton_operator_actions_total{action="start_upgrade"} 4"#),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            r#"baton_operator_failed_nodes{{namespace="{NS}",name="baton"}} 1"#
        )),
        "{text}"
    );

    h.shutdown().await;
}

#[tokio::test]
async fn controller_rolls_back_after_a_failure() {
    let Some(server) = ApiServer::start().await else {
        return;
    };
    let h = Harness::start(
        &server,
        json!({"maxUnavailable": 1, "onFailure": "Rollback"}),
    )
    .await;
    h.run_v1().await;
    h.set_image("agent:v2").await;
    commit_next(&h.pods, &h.agent_pods, "n1", "b", "agent:v2").await;
    // n2's handover fails: n1, already on v2, is handed back to v1.
    wait_for("n2 to start v2", || async {
        let p = h.pods.get("baton-n2").await.ok()?;
        upgrading(&p).then_some(())
    })
    .await;
    agent_reports(&h.agent_pods, "baton-n2", "b", "agent:v2", false).await;
    status_where(&h.upgrades, "a rollback", |s| {
        s.phase == Some(RolloutPhase::RollingBack)
    })
    .await;
    commit_next(&h.pods, &h.agent_pods, "n1", "a", "agent:v1").await;
    let s = status_where(&h.upgrades, "the rollback to finish", |s| {
        s.phase == Some(RolloutPhase::RolledBack)
    })
    .await;
    assert_eq!(s.failed_image.as_deref(), Some("agent:v2"));
    assert_eq!(s.stable_image.as_deref(), Some("agent:v1"));
    for pod in pods_by_name(&h.pods).await {
        let active = annotation(&pod, "baton.dev/active-slot").unwrap_or_default();
        assert_eq!(
            image(&pod, &format!("slot-{active}")).as_deref(),
            Some("agent:v1"),
            "{:?} runs v1 again",
            pod.metadata.name
        );
        assert!(!upgrading(&pod));
    }
    // n3 never moved: the rollback started before its turn.
    let n3 = h.pods.get("baton-n3").await.expect("n3");
    assert_eq!(
        annotation(&n3, "baton.dev/active-slot").as_deref(),
        Some("a")
    );
    let text = h.metrics.render();
    assert!(
        text.contains(r#"baton_operator_actions_total{action="start_rollback"} 1"#),
        "{text}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn lease_has_one_holder_at_a_time() {
    let Some(server) = ApiServer::start().await else {
        return;
    };
    support::chart::install_rbac(&server.client().await).await;
    let leases: Api<Lease> = Api::namespaced(server.client_as(OPERATOR_SA).await, NS);
    let duration = Duration::from_secs(2);
    let a = LeaseLock::new(leases.clone(), "baton-operator", "replica-a", duration);
    let b = LeaseLock::new(leases.clone(), "baton-operator", "replica-b", duration);
    assert!(a.try_acquire_or_renew().await.expect("a acquires"));
    assert!(
        !b.try_acquire_or_renew().await.expect("b asks"),
        "b must not lead while a renews"
    );
    assert!(a.try_acquire_or_renew().await.expect("a renews"));
    // a stops renewing: once the lease expires, b takes over and a has lost it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(b.try_acquire_or_renew().await.expect("b takes over"));
    assert!(!a.try_acquire_or_renew().await.expect("a asks again"));
    let lease = leases.get("baton-operator").await.expect("lease");
    let spec = lease.spec.expect("lease spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(spec.lease_transitions, Some(1));
    // hold() reports the loss instead of leading on.
    let lost = tokio::time::timeout(Duration::from_secs(10), a.hold())
        .await
        .expect("a notices it lost the lease");
    assert!(lost.to_string().contains("replica-b"), "{lost}");
}

#[tokio::test]
async fn controller_never_exceeds_max_unavailable_on_a_hundred_nodes() {
    let Some(server) = ApiServer::start().await else {
        return;
    };
    let fleet: Vec<_> = (0..100).map(|i| (format!("w{i:03}"), true)).collect();
    let h = Harness::start_with(&server, json!({"maxUnavailable": "10%"}), &fleet).await;
    let created = wait_for("a hundred agent pods", || async {
        let list = pods_by_name(&h.pods).await;
        (list.len() == 100).then_some(list)
    })
    .await;
    for pod in &created {
        let name = pod.metadata.name.as_deref().expect("name");
        kubelet_runs(&h.pods, name).await;
        agent_starts(&h.agent_pods, name, "a", "agent:v1").await;
    }
    status_where(&h.upgrades, "a complete v1 rollout", |s| {
        s.phase == Some(RolloutPhase::Complete) && s.ready == 100
    })
    .await;

    // The agents commit every handover as soon as they see it; meanwhile the
    // test counts handovers in flight on every pass.
    let before = api_writes(&h.client).await;
    h.set_image("agent:v2").await;
    let mut most_in_flight = 0;
    let start = std::time::Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "rollout too slow"
        );
        let pods = pods_by_name(&h.pods).await;
        let in_flight: Vec<_> = pods.iter().filter(|p| upgrading(p)).collect();
        most_in_flight = most_in_flight.max(in_flight.len());
        assert!(
            in_flight.len() <= 10,
            "{} handovers in flight > maxUnavailable 10",
            in_flight.len()
        );
        for pod in &in_flight {
            let name = pod.metadata.name.as_deref().expect("name");
            agent_reports(&h.agent_pods, name, "b", "agent:v2", true).await;
        }
        let done = pods
            .iter()
            .all(|p| !upgrading(p) && image(p, "slot-b").as_deref() == Some("agent:v2"));
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        most_in_flight >= 5,
        "the budget was used ({most_in_flight} at most in flight)"
    );
    let s = status_where(&h.upgrades, "a complete v2 rollout", |s| {
        s.phase == Some(RolloutPhase::Complete) && s.updated == 100
    })
    .await;
    assert_eq!(s.node_statuses.len(), 100);
    // API writes per node upgraded besides status, from the API server's own
    // request counters: pod patches (not pods/status, which the test's agents
    // write) and events. The target is at most 3.
    let after = api_writes(&h.client).await;
    let (patches, events) = (after.0 - before.0, after.1 - before.1);
    let per_node = (patches + events) / 100.0;
    eprintln!("API writes for 100 node upgrades: {patches} pod patches + {events} events = {per_node:.2} per node");
    assert!(
        per_node <= 3.0,
        "{per_node:.2} API writes per node upgrade (target ≤ 3)"
    );
    assert!(
        patches >= 200.0,
        "each upgrade patches the pod twice ({patches} patches)"
    );
    h.shutdown().await;
}

/// (pod PATCH requests without subresource, event creations and updates) so far, from the
/// API server's `apiserver_request_total`.
async fn api_writes(client: &kube::Client) -> (f64, f64) {
    let req = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("a static request");
    let text = client.request_text(req).await.expect("apiserver /metrics");
    let mut out = (0.0, 0.0);
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let has = |kv: &str| line.contains(kv);
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if has("resource=\"pods\"") && has("verb=\"PATCH\"") && has("subresource=\"\"") {
            out.0 += value;
        }
        if has("resource=\"events\"") && (has("verb=\"POST\"") || has("verb=\"PATCH\"")) {
            out.1 += value;
        }
    }
    out
}
