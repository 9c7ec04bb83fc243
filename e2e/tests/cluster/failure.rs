//! Cluster failure scenarios with the REAL agents on the REAL datapath
//! (`fleet`: the real kube-apiserver and `baton-operator`, the node
//! shim, a cgroup and a bpffs per node, `…:v1` = the layout-1 agent, `…:v2` =
//! the layout-2 agent, one `baton-probe` per node connecting to the ClusterIP
//! from that node's cgroup throughout). One fleet of 3 nodes goes through:
//!
//! 1. **operator restart mid-rollout**: v1 → v2; the operator is SIGKILLed
//!    the moment it starts the second node's handover and a new one (another
//!    identity) takes the lease over: it finishes that handover from the pod's
//!    annotations and report, upgrades the third node, and no node is
//!    upgraded twice.
//! 2. **bad image** (`onFailure: Pause`): v3 is the layout-1 agent with
//!    `BATON_TEST_REJECT_PROGRAMS=1` (its programs fail to load as a verifier
//!    rejection would): the first node is marked failed with the agent's
//!    reason (status, `Degraded` condition, `HandoverFailed` event), the new
//!    slot is parked again, the old agent never stopped serving, and no other
//!    node is tried.
//! 3. **rollback** (`onFailure: Rollback`): v4 works on w1 and w3 but fails
//!    on w2 (a wrapper sets the reject hook there only): w1 takes v4, w2
//!    fails, and w1 is handed back to the stable v2 (`RolledBack`); w3 is
//!    never touched.
//! 4. **crashing image**: v5 exits 1 at start and never reports; the slot
//!    crash-loops until `handoverTimeoutSeconds` (5) fails the handover, the
//!    old agent keeps serving, and the second failure on w1 gets its own
//!    `HandoverFailed` event with its own reason.
//!
//! No connect fails or goes astray in any of them.
//!
//! Needs root, `e2e/cluster/k8s-bins.sh` (or `BATON_SKIP_APISERVER=1`) and
//! `cargo build --workspace --bins`.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use baton_agent::datapath::load::REJECT_ENV;
use baton_api::pairpod::{
    Slot, ANN_HANDOVER_STARTED, CONDITION_HANDOVER, ENV_NODE_NAME, STATUS_TRUE,
};
use baton_e2e::kit::kube::{
    active_slot, annotation, condition, container_pid, is_running, slot_status,
};
use baton_e2e::kit::wait::eventually;
use serde_json::{json, Value};

use crate::fleet::*;

/// The layout-1 agent whose programs are "rejected by the verifier".
const AGENT_V3_REJECTED: &str = "ghcr.io/baton-dev/baton-agent:v3-rejected";
/// The layout-1 agent, rejected on node w2 only.
const AGENT_V4_FLAKY: &str = "ghcr.io/baton-dev/baton-agent:v4";
/// A build that exits 1 at once (never reports).
const AGENT_V5_CRASHING: &str = "ghcr.io/baton-dev/baton-agent:v5-crashing";

/// What the agent says when its test hook rejects its programs.
fn rejected() -> String {
    format!("rejected by {REJECT_ENV}")
}

/// Every node runs `image` in `slot` with a live handover's figures, answers
/// `status` with `layout` and `verify` is clean.
async fn assert_fleet_on(
    fleet: &Fleet,
    status: &Value,
    image: &str,
    layout: u32,
    slot: Slot,
    when: &str,
) {
    for node in fleet.node_names() {
        let n = node_status(status, &node);
        assert_eq!(
            (n["activeSlot"].as_str(), n["version"].as_str()),
            (Some(slot.as_str()), Some(image)),
            "{when}: {node}: {status:#}"
        );
        let agent = fleet
            .agent_status(&node)
            .await
            .unwrap_or_else(|| panic!("{when}: {node}: baton-agent status failed"));
        assert_eq!(agent.layout_version, layout, "{when}: {node}");
        fleet.assert_verify_clean(&node, when).await;
    }
}

/// Waits until `node`'s pod shows its idle slot running `idle_image` (the
/// empty image after a failed handover, the retired agent's image as the
/// warm standby after a commit) and no handover running; returns the active
/// slot's pid.
async fn wait_parked(fleet: &Fleet, node: &str, active: Slot, idle_image: &str, when: &str) -> u32 {
    let idle = active.other();
    eventually(
        &format!("{when}: {node}: slot {idle} on {idle_image}, slot {active} active"),
        Duration::from_secs(30),
        || fleet.logs(),
        async || {
            let pod = fleet.pod(node).await;
            let parked = slot_status(&pod, idle)?;
            let running = slot_status(&pod, active)?;
            (active_slot(&pod) == active
                && annotation(&pod, ANN_HANDOVER_STARTED).is_none()
                && is_running(&parked)
                && parked.image == idle_image
                && is_running(&running))
            .then(|| container_pid(&running))
            .flatten()
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_restart_bad_image_and_rollback_under_traffic() {
    let Some(mut fleet) =
        Fleet::start("failure", [127, 0, 78], &["w1", "w2", "w3"], |bins, dir| {
            let script = dir.join("agent-v4.sh");
            std::fs::write(
                &script,
                format!(
                "#!/bin/sh\n# Image v4: the layout-1 agent, whose programs fail to load on w2.\n\
                 if [ \"${ENV_NODE_NAME}\" = w2 ]; then\n  {REJECT_ENV}=1\n  \
                 export {REJECT_ENV}\nfi\nexec {} \"$@\"\n",
                bins[0].display()
            ),
            )
            .expect("writing the v4 wrapper");
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
                .expect("chmod the v4 wrapper");
            vec![
                (
                    AGENT_V3_REJECTED.to_owned(),
                    format!("/usr/bin/env {REJECT_ENV}=1 {} run", bins[0].display()),
                ),
                (
                    AGENT_V4_FLAKY.to_owned(),
                    format!("{} run", script.display()),
                ),
                (AGENT_V5_CRASHING.to_owned(), "/bin/false".to_owned()),
            ]
        })
        .await
    else {
        return;
    };
    let t0 = Instant::now();
    let timeout = Duration::from_secs(120);
    let nodes = fleet.node_names();

    fleet
        .create_upgrade(
            AGENT_V1,
            json!({"maxUnavailable": 1, "handoverTimeoutSeconds": 30}),
        )
        .await;
    fleet
        .wait_status("v1 installed", 1, timeout, |s| {
            counts(s) == [Some(3), Some(3), Some(3), Some(0)] && s["phase"] == "Complete"
        })
        .await;
    for node in &nodes {
        fleet.wait_serving(node, 1).await;
    }

    // 1. The operator dies as it starts w2's handover; a new one finishes.
    fleet.start_traffic(150.0);
    let t1 = Instant::now();
    let generation = fleet
        .patch_spec(json!({"agentImage": AGENT_V2}))
        .await
        .expect("patching agentImage");
    fleet
        .rollout
        .wait_for("w2's handover to start", timeout, |r| {
            !r.starts_on("w2").is_empty()
        })
        .await;
    fleet.kill_operator();
    let killed = t1.elapsed();
    // Without an operator the agent still hands over and reports.
    eventually(
        "w2's agent to report Committed with no operator running",
        timeout,
        || fleet.logs(),
        async || {
            let pod = fleet.pod("w2").await;
            (condition(&pod, CONDITION_HANDOVER).as_deref() == Some(STATUS_TRUE)).then_some(())
        },
    )
    .await
    .unwrap();
    assert!(
        fleet.rollout.get().in_flight_on("w2"),
        "nobody finished w2's handover while no operator ran"
    );
    fleet.start_operator();
    let status = fleet
        .wait_status("v2 complete after the restart", generation, timeout, |s| {
            s["phase"] == "Complete" && s["stableImage"] == AGENT_V2 && s["updated"] == 3
        })
        .await;
    let restart_time = t1.elapsed();
    fleet.stop_traffic("v1 -> v2 with an operator restart");
    assert_eq!(
        counts(&status),
        [Some(3), Some(3), Some(3), Some(0)],
        "{status:#}"
    );
    print_nodes("after the operator restart", &status);
    let rollout = fleet.rollout.get();
    assert_eq!(rollout.max_in_flight, 1, "{rollout:?}");
    for node in &nodes {
        assert_eq!(
            rollout.starts_on(node),
            [AGENT_V2],
            "{node}: upgraded exactly once: {rollout:?}"
        );
        assert_eq!(fleet.process_starts(node, AGENT_V2), 1, "{node}");
        assert_eq!(
            fleet.node_events("HandoverCommitted", node).await.len(),
            1,
            "{node}: finished once"
        );
        let h = &node_status(&status, node)["lastHandover"];
        assert!(
            h["mapsMigrated"] == 2 && h["entriesCopied"].as_i64() >= Some(6),
            "{node}: {h:#}"
        );
    }
    let log = std::fs::read_to_string(fleet.dir.join("operator.log")).unwrap_or_default();
    assert!(
        log.contains("became leader") && log.contains("baton-operator-2"),
        "the second operator took the lease over:\n{log}"
    );
    assert_fleet_on(&fleet, &status, AGENT_V2, 2, Slot::B, "after the restart").await;

    // 2. A bad image with onFailure Pause: w1 fails, nothing else starts.
    let w1_before = wait_parked(&fleet, "w1", Slot::B, AGENT_V1, "before v3").await;
    fleet.start_traffic(150.0);
    let t2 = Instant::now();
    let generation = fleet
        .patch_spec(json!({"agentImage": AGENT_V3_REJECTED}))
        .await
        .expect("patching agentImage");
    let status = fleet
        .wait_status("v3 failed and paused", generation, timeout, |s| {
            s["phase"] == "Failed" && s["failedImage"] == AGENT_V3_REJECTED && s["failed"] == 1
        })
        .await;
    let failed_after = t2.elapsed();
    let w1 = node_status(&status, "w1");
    assert_eq!(
        (
            w1["phase"].as_str(),
            w1["failedImage"].as_str(),
            w1["activeSlot"].as_str(),
            w1["version"].as_str()
        ),
        (
            Some("Failed"),
            Some(AGENT_V3_REJECTED),
            Some("b"),
            Some(AGENT_V2)
        ),
        "{status:#}"
    );
    let reason = w1["lastHandover"]["message"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&rejected()),
        "the agent's reason reaches the status: {w1:#}"
    );
    let degraded = status_condition(&status, "Degraded");
    assert!(
        degraded["status"] == "True"
            && degraded["reason"] == "HandoverFailed"
            && degraded["message"]
                .as_str()
                .is_some_and(|m| m.contains(AGENT_V3_REJECTED)),
        "{degraded:#}"
    );
    assert_eq!(status_condition(&status, "Progressing")["status"], "False");
    let events = fleet.node_events("HandoverFailed", "w1").await;
    assert!(
        events.len() == 1
            && events[0].type_.as_deref() == Some("Warning")
            && events[0].note.as_deref().is_some_and(|n| {
                n.starts_with(&format!("w1: handover to {AGENT_V3_REJECTED} failed: "))
                    && n.contains(&rejected())
            }),
        "{events:#?}"
    );
    let w1_after = wait_parked(&fleet, "w1", Slot::B, EMPTY, "after v3").await;
    assert_eq!(
        w1_after, w1_before,
        "the old agent on w1 never stopped serving"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rollout = fleet.rollout.get();
    assert_eq!(rollout.starts_on("w1"), [AGENT_V2, AGENT_V3_REJECTED]);
    for node in ["w2", "w3"] {
        assert_eq!(
            rollout.starts_on(node),
            [AGENT_V2],
            "{node}: not tried after the failure: {rollout:?}"
        );
    }
    fleet.stop_traffic("v3 rejected on w1, rollout paused");
    assert_fleet_on(&fleet, &status, AGENT_V2, 2, Slot::B, "after v3").await;

    // 3. onFailure Rollback: v4 fails on w2, w1 goes back to v2.
    fleet.start_traffic(150.0);
    let t3 = Instant::now();
    let generation = fleet
        .patch_spec(json!({"agentImage": AGENT_V4_FLAKY, "strategy": {"onFailure": "Rollback"}}))
        .await
        .expect("patching agentImage and onFailure");
    let status = fleet
        .wait_status("v4 rolled back", generation, timeout, |s| {
            s["phase"] == "RolledBack"
        })
        .await;
    let rollback_time = t3.elapsed();
    // The rollback woke w1's v2 standby in slot b (no restart); the v4
    // agent in slot a is the standby now.
    wait_parked(&fleet, "w1", Slot::B, AGENT_V4_FLAKY, "after the rollback").await;
    fleet.stop_traffic("v4 rolled back");
    print_nodes("after the rollback", &status);
    assert_eq!(
        (
            status["stableImage"].as_str(),
            status["failedImage"].as_str(),
            status["failed"].as_i64()
        ),
        (Some(AGENT_V2), Some(AGENT_V4_FLAKY), Some(1)),
        "{status:#}"
    );
    let rollout = fleet.rollout.get();
    assert_eq!(
        rollout.starts_on("w1"),
        [AGENT_V2, AGENT_V3_REJECTED, AGENT_V4_FLAKY, AGENT_V2],
        "w1: upgraded to v4, then handed back to v2"
    );
    assert_eq!(rollout.starts_on("w2"), [AGENT_V2, AGENT_V4_FLAKY]);
    assert_eq!(rollout.starts_on("w3"), [AGENT_V2], "w3 never touched");
    assert_eq!(rollout.max_in_flight, 1, "{rollout:?}");
    let w2 = node_status(&status, "w2");
    assert!(
        w2["failedImage"] == AGENT_V4_FLAKY
            && w2["lastHandover"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(&rejected())),
        "{w2:#}"
    );
    assert_eq!(fleet.node_events("RollbackStarted", "w1").await.len(), 1);
    let failed_w2 = fleet.node_events("HandoverFailed", "w2").await;
    assert!(
        failed_w2.len() == 1
            && failed_w2[0]
                .note
                .as_deref()
                .is_some_and(|n| n.starts_with(&format!("w2: handover to {AGENT_V4_FLAKY} failed"))),
        "{failed_w2:#?}"
    );
    let h = &node_status(&status, "w1")["lastHandover"];
    assert!(
        h["mapsMigrated"] == 2
            && h["message"]
                .as_str()
                .is_some_and(|m| m.contains("layout 1")),
        "w1's rollback took over from the layout-1 v4 agent: {h:#}"
    );
    assert_fleet_on(&fleet, &status, AGENT_V2, 2, Slot::B, "after the rollback").await;

    // 4. A build that exits at start never reports: the handover times out
    // (handoverTimeoutSeconds 5) while the container crash-loops; the old
    // agent on w1 keeps serving, and with no node on v5 the rollback is
    // done at once. w1's second failure gets an event of its own.
    let w1_before = wait_parked(&fleet, "w1", Slot::B, AGENT_V4_FLAKY, "before v5").await;
    fleet.start_traffic(150.0);
    let t4 = Instant::now();
    let generation = fleet
        .patch_spec(json!({"agentImage": AGENT_V5_CRASHING,
                            "strategy": {"handoverTimeoutSeconds": 5}}))
        .await
        .expect("patching agentImage and the timeout");
    let status = fleet
        .wait_status("v5 timed out", generation, timeout, |s| {
            s["phase"] == "RolledBack" && s["failedImage"] == AGENT_V5_CRASHING
        })
        .await;
    let timeout_after = t4.elapsed();
    let w1_after = wait_parked(&fleet, "w1", Slot::B, EMPTY, "after v5").await;
    fleet.stop_traffic("v5 crash-looping on w1 until the timeout");
    assert_eq!(w1_after, w1_before, "the old agent on w1 kept serving");
    // handover-started has whole seconds, so the 5 s may count from up to
    // 1 s before the patch.
    assert!(
        timeout_after >= Duration::from_secs(4),
        "failed only at the timeout: {timeout_after:?}"
    );
    let w1 = node_status(&status, "w1");
    assert_eq!(
        (w1["failedImage"].as_str(), w1["version"].as_str()),
        (Some(AGENT_V5_CRASHING), Some(AGENT_V2)),
        "{status:#}"
    );
    let crashes = fleet.process_starts("w1", AGENT_V5_CRASHING);
    assert!(crashes >= 2, "v5 crash-looped: {crashes} starts");
    let notes: Vec<String> = fleet
        .node_events("HandoverFailed", "w1")
        .await
        .into_iter()
        .filter_map(|e| e.note)
        .collect();
    assert!(
        notes.len() == 2
            && notes.iter().any(|n| n.contains(AGENT_V3_REJECTED))
            && notes.iter().any(|n| {
                // What the kubelet was doing follows, when it held the slot
                // (its own crash-loop back-off of the crashing agent, which
                // counts against the timeout).
                let head = format!(
                    "w1: handover to {AGENT_V5_CRASHING} failed: handover did not commit within 5s"
                );
                n == &head
                    || n.strip_prefix(&head)
                        .is_some_and(|rest| rest.starts_with("; kubelet") && !rest.contains("plus"))
            }),
        "one HandoverFailed event per failure on w1, each with its reason: {notes:#?}"
    );
    assert_eq!(
        fleet
            .rollout
            .get()
            .starts_on("w1")
            .last()
            .map(String::as_str),
        Some(AGENT_V5_CRASHING)
    );
    assert_fleet_on(&fleet, &status, AGENT_V2, 2, Slot::B, "after v5").await;

    eprintln!(
        "cluster failure: operator killed {:.1} s into v1 -> v2, complete after {:.1} s; \
         v3 failed after {:.1} s; v4 rolled back after {:.1} s; v5 timed out after {:.1} s \
         ({crashes} crashes); test {:.1} s",
        killed.as_secs_f64(),
        restart_time.as_secs_f64(),
        failed_after.as_secs_f64(),
        rollback_time.as_secs_f64(),
        timeout_after.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
