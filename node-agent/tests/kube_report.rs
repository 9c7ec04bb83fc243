//! The handover report and the slot role against a real kube-apiserver, as
//! the chart's agent service account; the pod read back is fed to the
//! operator's own parser (`baton_operator::controller::observe`).
//!
//! Needs `e2e/cluster/k8s-bins.sh` (or `BATON_SKIP_APISERVER=1`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics

mod support;

use std::collections::HashMap;

use baton_agent::cluster::{report_handover, ClusterClient, Role, SlotInfo};
use baton_api::pairpod::{
    ConditionReport, HandoverOutcome, HandoverReport, Slot, CONDITION_HANDOVER, CONDITION_STARTED,
};
use baton_e2e::apiserver::ApiServer;
use baton_operator::controller::observe::observe;
use baton_operator::plan::{Reported, Standby};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use support::{create, install_agent_rbac, AGENT_USER, RELEASE_NAMESPACE};

const POD: &str = "baton-n1";

fn slot_env(slot: &str, version: &str, alt: &str) -> SlotInfo {
    let env = HashMap::from([
        ("BATON_SLOT", slot),
        ("BATON_ACTIVE_SLOT", "a"),
        ("BATON_SLOT_VERSION", version),
        ("BATON_SLOT_VERSION_ALT", alt),
        ("NODE_NAME", "n1"),
        ("POD_NAME", POD),
        ("POD_NAMESPACE", RELEASE_NAMESPACE),
    ]);
    SlotInfo::from_lookup(|k| env.get(k).map(|v| v.to_string())).expect("valid env")
}

fn report(message: &str) -> HandoverReport {
    HandoverReport {
        slot: Slot::B,
        version: "agent:v2".into(),
        duration_ms: 41,
        freeze_ms: 3,
        maps_reused: 5,
        maps_migrated: 1,
        entries_copied: 100_000,
        message: message.into(),
        datapath: None,
    }
}

fn conditions_sorted(pod: &Pod) -> Vec<(String, String, Option<String>)> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.type_, c.status, c.reason))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The agent's RBAC, and the pod mid-handover as the operator leaves it
/// after StartUpgrade (slot a active, b starting 5 s ago), with `extra`
/// annotations; returns when the handover started.
async fn pod_mid_handover(admin: &kube::Client, extra: serde_json::Value) -> Timestamp {
    install_agent_rbac(admin).await;
    let started = Timestamp::from_second(Timestamp::now().as_second() - 5).expect("time");
    let mut annotations = json!({
        "baton.dev/active-slot": "a", "baton.dev/slot-a-version": "agent:v1",
        "baton.dev/slot-b-version": "agent:v2",
        "baton.dev/handover-started": started.to_string()});
    if let (Some(a), Some(e)) = (annotations.as_object_mut(), extra.as_object()) {
        a.extend(e.clone());
    }
    let _: Pod = create(
        admin,
        RELEASE_NAMESPACE,
        json!({
            "metadata": {"name": POD, "annotations": annotations},
            "spec": {"nodeName": "n1", "serviceAccountName": "baton-agent", "containers": [
                {"name": "slot-a", "image": "agent:v1"}, {"name": "slot-b", "image": "agent:v2"}]},
        }),
    )
    .await;
    started
}

#[tokio::test]
async fn handover_report_lands_on_the_pod_and_the_operator_reads_it() {
    let Some(server) = ApiServer::start().await else {
        return;
    };
    let admin = server.client().await;
    let started = pod_mid_handover(&admin, json!({})).await;
    // Plays the kubelet: conditions the report must leave alone.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), RELEASE_NAMESPACE);
    let kubelet = json!({"status": {"phase": "Running", "conditions": [
        {"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}]}});
    pods.patch_status(POD, &PatchParams::default(), &Patch::Merge(&kubelet))
        .await
        .expect("kubelet status");

    let (new, old) = (
        slot_env("b", "agent:v2", "agent:v1"),
        slot_env("a", "agent:v1", "agent:v2"),
    );
    let agent = server.client_as(AGENT_USER).await;
    assert_eq!(
        new.current_role(&agent).await.expect("role"),
        Role::Successor
    );
    assert_eq!(old.current_role(&agent).await.expect("role"), Role::Active);

    report_handover(
        &agent,
        RELEASE_NAMESPACE,
        POD,
        HandoverOutcome::Committed,
        &report("ok"),
    )
    .await
    .expect("reporting as the agent's service account");
    let pod = pods.get(POD).await.expect("reading the pod back");
    let conditions = conditions_sorted(&pod);
    assert_eq!(
        conditions,
        [
            ("PodScheduled".into(), "True".into(), None),
            ("Ready".into(), "True".into(), None),
            (
                CONDITION_HANDOVER.into(),
                "True".into(),
                Some("Committed".into())
            ),
            // A committing successor also says it started (readiness gating).
            (
                CONDITION_STARTED.into(),
                "True".into(),
                Some("Started".into())
            ),
        ],
        "the kubelet's conditions survive"
    );
    let c = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == CONDITION_HANDOVER))
        .expect("handover condition");
    let at = c
        .last_transition_time
        .as_ref()
        .expect("lastTransitionTime")
        .0;
    assert!(at.as_second() >= started.as_second());
    let body: serde_json::Value =
        serde_json::from_str(c.message.as_deref().expect("message")).expect("JSON message");
    assert_eq!(
        body,
        json!({"slot": "b", "version": "agent:v2", "durationMs": 41, "freezeMs": 3,
               "mapsReused": 5, "mapsMigrated": 1, "entriesCopied": 100000, "message": "ok"})
    );

    // The operator's parser sees a committed handover with these figures.
    let seen = observe(&pod, "empty:1", Timestamp::now());
    assert!(
        matches!(&seen.view.standby, Standby::Upgrading { image, report: Some(Reported::Committed), .. }
                 if image == "agent:v2"),
        "{:?}",
        seen.view.standby
    );
    let figures = seen.figures.expect("figures");
    assert_eq!(
        (
            figures.duration_ms,
            figures.freeze_ms,
            figures.maps_reused,
            figures.maps_migrated
        ),
        (41, 3, 5, 1)
    );
    assert_eq!(
        (figures.entries_copied, figures.message.as_deref()),
        (100_000, Some("ok"))
    );

    // The old agent, restarted before the operator flips the active slot, stays idle.
    assert_eq!(old.current_role(&agent).await.expect("role"), Role::Retired);
    assert_eq!(new.current_role(&agent).await.expect("role"), Role::Active);

    // A failure replaces the condition (one per type) through the blocking client.
    let config = server.config_as(AGENT_USER).await;
    let new_again = new.clone();
    tokio::task::spawn_blocking(move || {
        let client = ClusterClient::connect(Some(config)).expect("blocking client");
        client
            .report_handover(
                &new_again,
                HandoverOutcome::Failed,
                &report("frontend map refused"),
            )
            .expect("reporting the failure");
        assert_eq!(client.role(&new_again).expect("role"), Role::Retired);
    })
    .await
    .expect("blocking client thread");
    let pod = pods.get(POD).await.expect("reading the pod back");
    // One condition per type: the Handover condition replaced, Started kept.
    let types: Vec<String> = conditions_sorted(&pod).into_iter().map(|c| c.0).collect();
    assert_eq!(
        types,
        [
            "PodScheduled",
            "Ready",
            CONDITION_HANDOVER,
            CONDITION_STARTED
        ]
    );
    let seen = observe(&pod, "empty:1", Timestamp::now());
    assert!(
        matches!(&seen.view.standby,
                 Standby::Upgrading { report: Some(Reported::Failed { message }), .. }
                 if message == "frontend map refused"),
        "{:?}",
        seen.view.standby
    );
    assert_eq!(old.current_role(&agent).await.expect("role"), Role::Active);
}

#[tokio::test]
async fn a_soak_rewrites_the_report_and_keeps_the_commit_time() {
    use baton_api::admin::ProtocolRange;
    use baton_api::datapath::{DatapathRate, DatapathWindow, OutcomeCounts};
    use baton_api::pairpod::StartedReport;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    let Some(server) = ApiServer::start().await else {
        return;
    };
    let admin = server.client().await;
    let started = pod_mid_handover(&admin, json!({"baton.dev/soak-seconds": "10"})).await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), RELEASE_NAMESPACE);
    let new = slot_env("b", "agent:v2", "agent:v1");
    let committed = Time(Timestamp::from_second(started.as_second() + 2).expect("time"));
    let window = |redirected: u64, last: bool| DatapathWindow {
        before: Some(DatapathRate {
            window_ms: 30_000,
            counts: OutcomeCounts {
                connect: 900,
                redirected: 900,
                ..OutcomeCounts::default()
            },
        }),
        after: OutcomeCounts {
            connect: redirected + 3,
            redirected,
            no_endpoint: 3,
            ..OutcomeCounts::default()
        },
        after_ms: redirected * 10,
        syncs: 2,
        sync_errors: 0,
        last,
    };
    let with = |w: DatapathWindow| HandoverReport {
        datapath: Some(w),
        ..report("took over")
    };
    let config = server.config_as(AGENT_USER).await;
    let (first, last) = (with(window(100, false)), with(window(500, true)));
    let at = committed.clone();
    tokio::task::spawn_blocking(move || {
        let client = ClusterClient::connect(Some(config)).expect("blocking client");
        client
            .report_handover_at(&new, HandoverOutcome::Committed, &first, at.clone())
            .expect("the commit's report");
        // A soak's rewrite, seconds later.
        client
            .report_soak(&new, &last, at)
            .expect("the soak's last report");
    })
    .await
    .expect("blocking client thread");

    let pod = pods.get(POD).await.expect("reading the pod back");
    let conditions = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let c = conditions
        .iter()
        .find(|c| c.type_ == CONDITION_HANDOVER)
        .expect("handover condition");
    assert_eq!(c.last_transition_time, Some(committed), "{c:?}");
    assert_eq!(c.reason.as_deref(), Some("Committed"));
    let body = HandoverReport::from_message(c.message.as_deref().expect("message"))
        .expect("a handover report");
    assert_eq!(body.datapath, Some(window(500, true)));
    let raw: serde_json::Value =
        serde_json::from_str(c.message.as_deref().expect("message")).expect("JSON");
    assert_eq!(raw["datapath"]["final"], true);
    assert_eq!(raw["datapath"]["after"]["noEndpoint"], 3);
    assert_eq!(raw["datapath"]["before"]["windowMs"], 30_000);
    // Started, written with the first report, says the protocol range.
    let s = conditions
        .iter()
        .find(|c| c.type_ == CONDITION_STARTED)
        .expect("started condition");
    let started_report = StartedReport::from_message(s.message.as_deref().expect("message"))
        .expect("a start report");
    assert!(
        matches!(started_report.handover_protocol, Some(ProtocolRange { min, max }) if min >= 1 && max >= min),
        "{started_report:?}"
    );
    // The operator still reads a fresh committed handover.
    let seen = observe(&pod, "empty:1", Timestamp::now());
    assert!(
        matches!(&seen.view.standby, Standby::Upgrading { image, report: Some(Reported::Committed), .. }
                 if image == "agent:v2"),
        "{:?}",
        seen.view.standby
    );
}
