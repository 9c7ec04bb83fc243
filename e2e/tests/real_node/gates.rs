//! Preflight and canary on the real node (issue: safe rollouts). One
//! scenario, three images in a row under traffic through the ClusterIP:
//!
//! 1. a build whose programs the verifier rejects: its check pod fails on
//!    this node's kernel and the rollout stops with zero handovers started
//!    (no container restarted, no handover annotated, traffic clean);
//! 2. a build that passes preflight but refuses 1 connect to a VIP in 4 (a
//!    test-only datapath switch): the canary trips on the numbers its agent
//!    reports and the node is rolled back to the stable image;
//! 3. a good build (the layout-2 image): preflight plans the migration, the
//!    canary soaks and passes, the rollout completes with 0 failed connects
//!    and the node's disruption figures in the status.

use super::*;
use baton_e2e::node::{AGENT_BROKEN, AGENT_FAULTY};
use serde_json::json;

/// Seconds the canary soaks in step 3 (step 2 trips long before).
const SOAK: u64 = 20;

/// The sample kmeshupgrade.yaml for `image` with `canary` and onFailure: Rollback.
fn gated(rig: &Rig, image: &str, canary: Value) -> String {
    let mut doc: Value = serde_json::from_str(&sample_upgrade(rig, image)).expect("sample json");
    let strategy = &mut doc["spec"]["strategy"];
    strategy["onFailure"] = "Rollback".into();
    strategy["canary"] = canary;
    serde_json::to_string_pretty(&doc).expect("json")
}

fn node_status(status: &Value) -> &Value {
    &status["nodeStatuses"][0]
}

/// Events about the KmeshUpgrade, as `reason: note` lines.
fn events(rig: &Rig) -> Vec<String> {
    let list = rig
        .get(&[
            "events",
            "-n",
            NS,
            "--field-selector",
            "involvedObject.kind=KmeshUpgrade",
        ])
        .unwrap_or(Value::Null);
    list["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    format!(
                        "{}: {}",
                        e["reason"].as_str().unwrap_or_default(),
                        e["note"]
                            .as_str()
                            .or_else(|| e["message"].as_str())
                            .unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The images in the agent pod's two slots.
fn slot_images(pod: &Value) -> Vec<String> {
    pod["spec"]["containers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c["image"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn preflight_and_canary_stop_bad_builds() {
    let Some(rig) = Rig::from_env() else { return };
    fresh(&rig);
    let dir = scratch("gates");
    let vip = install_with_kubectl(&rig, &dir);
    let want = backend_identities(&rig);
    let pod0 = rig.agent_pod(UPGRADE).expect("agent pod");
    let restarts0 = restart_counts(&pod0);

    // 1. Rejected by this kernel's verifier: caught before any handover.
    let traffic = Traffic::start(&rig, &dir, &vip, RATE, HOLD);
    let t0 = Instant::now();
    apply(&rig, &dir, &gated(&rig, AGENT_BROKEN, Value::Null));
    let status = rig.wait_until("the broken build failed preflight", CHANGE_TIMEOUT, || {
        let s = rig.upgrade_status(UPGRADE);
        (s["failedImage"] == AGENT_BROKEN && node_status(&s)["preflight"]["result"] == "Failed")
            .then_some(s)
    });
    eprintln!("broken build: preflight failed after {:?}", t0.elapsed());
    let check = &node_status(&status)["preflight"];
    let message = check["message"].as_str().unwrap_or_default();
    assert!(message.contains("verifier"), "preflight message: {check}");
    assert_eq!(check["image"], AGENT_BROKEN);
    assert_eq!(status["preflight"]["failed"], 1, "{status}");
    let printed = rig.kubectl(&["get", "kmu", "-n", NS, UPGRADE]);
    assert!(
        printed.contains("PREFLIGHT") && printed.contains("1 failed"),
        "{printed}"
    );
    // Zero handovers: nothing announced, no slot got the image, no restart.
    std::thread::sleep(Duration::from_secs(3));
    let pod = rig.agent_pod(UPGRADE).expect("agent pod");
    assert_eq!(
        annotation(&pod, ANN_HANDOVER_STARTED),
        None,
        "a handover started"
    );
    assert!(
        !slot_images(&pod).iter().any(|i| i == AGENT_BROKEN),
        "a slot runs the broken build: {:?}",
        slot_images(&pod)
    );
    assert_eq!(restart_counts(&pod), restarts0, "a slot restarted");
    assert_eq!(active_container(&pod).1["image"], AGENT_V1);
    assert!(
        events(&rig)
            .iter()
            .any(|e| e.starts_with("PreflightFailed")),
        "events: {:?}",
        events(&rig)
    );
    assert_clean(
        &traffic.stop(),
        &want,
        "a build the verifier rejects, stopped by preflight",
    );

    // 2. Passes preflight, refuses a share of connects: the canary trips.
    let traffic = Traffic::start(&rig, &dir, &vip, RATE, 0);
    let t0 = Instant::now();
    // The window runs from the successor's Hello, so connects the old build
    // served during the handover are in it: with 100 as the minimum, a
    // verdict at the commit's own report (~120 connects, nearly all the old
    // build's) shows 1 of 120. 1 000 keeps the first verdict for a report
    // where the faulty build's share dominates.
    let canary = json!({"nodes": 1, "soakSeconds": 300, "maxRefusedPerMillion": 1000,
                        "minConnects": 1000});
    apply(&rig, &dir, &gated(&rig, AGENT_FAULTY, canary));
    let status = rig.wait_until("the faulty build failed its canary", CHANGE_TIMEOUT, || {
        let s = rig.upgrade_status(UPGRADE);
        (s["canary"]["phase"] == "Failed").then_some(s)
    });
    eprintln!(
        "faulty build: canary failed after {:?}: {}",
        t0.elapsed(),
        status["canary"]
    );
    assert_eq!(status["canary"]["image"], AGENT_FAULTY);
    let why = status["canary"]["message"].as_str().unwrap_or_default();
    assert!(
        why.contains("refused") && why.contains("per million"),
        "{why}"
    );
    // The tripped share is about 1 in 4 (less the handover's old-build
    // connects): parse "N of M connects".
    let (refused, connects) = why
        .split_once(": ")
        .and_then(|(_, rest)| {
            let mut w = rest.split_whitespace();
            let n: f64 = w.next()?.parse().ok()?;
            let _of = w.next()?;
            let m: f64 = w.next()?.parse().ok()?;
            Some((n, m))
        })
        .unwrap_or_else(|| panic!("no figures in {why:?}"));
    let share = refused / connects;
    assert!(
        (0.15..0.35).contains(&share),
        "refused share {share:.3} in {why:?}"
    );
    rig.wait_until("rolled back to the stable image", CHANGE_TIMEOUT, || {
        let s = rig.upgrade_status(UPGRADE);
        let pod = rig.agent_pod(UPGRADE)?;
        let (_, st) = active_container(&pod);
        (s["phase"] == "RolledBack" && st["image"] == AGENT_V1 && st["ready"] == true).then_some(())
    });
    eprintln!("faulty build: rolled back after {:?}", t0.elapsed());
    let report = traffic.stop();
    assert!(
        report.totals.failed > 0,
        "the probe saw no refused connect from the faulty build: {:?}",
        report.totals
    );
    eprintln!(
        "faulty build: the probe saw {} of {} connects fail",
        report.totals.failed, report.totals.attempted
    );
    assert!(
        events(&rig).iter().any(|e| e.starts_with("CanaryFailed")),
        "events: {:?}",
        events(&rig)
    );
    assert_serving(&rig, &dir, &vip, "after the canary's rollback");

    // 3. A good build (layout 2) passes both gates.
    let traffic = Traffic::start(&rig, &dir, &vip, RATE, HOLD);
    let t0 = Instant::now();
    let canary = json!({"nodes": 1, "soakSeconds": SOAK});
    apply(&rig, &dir, &gated(&rig, AGENT_V2, canary));
    let status = rig.wait_complete(
        UPGRADE,
        AGENT_V2,
        CHANGE_TIMEOUT + Duration::from_secs(SOAK),
    );
    eprintln!("good build: Complete after {:?}", t0.elapsed());
    assert_eq!(status["canary"]["phase"], "Passed", "{status}");
    let node = node_status(&status);
    assert_eq!(node["preflight"]["result"], "Passed", "{node}");
    assert!(
        node["preflight"]["mapsMigrated"].as_i64().unwrap_or(0) > 0,
        "layout 1 -> 2 migrates maps: {node}"
    );
    let d = &node["lastHandover"]["disruption"];
    assert!(
        d["connects"].as_i64().unwrap_or(0) > 0,
        "disruption figures: {node}"
    );
    assert_eq!(d["refused"], 0, "{node}");
    assert_eq!(d["syncErrors"], 0, "{node}");
    eprintln!(
        "good build: preflight {} / disruption {d}",
        node["preflight"]
    );
    assert_clean(
        &traffic.stop(),
        &want,
        "a good build through preflight and canary",
    );

    uninstall_with_kubectl(&rig);
}
