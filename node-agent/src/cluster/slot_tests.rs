use std::collections::HashMap;

use serde_json::{json, Value};

use super::*;

const EMPTY: &str = "empty:1";
const T0: &str = "2026-01-01T00:00:30Z";

fn info(slot: &str, active: &str, version: &str, alt: &str) -> SlotInfo {
    let env = HashMap::from([
        ("BATON_SLOT", slot),
        ("BATON_ACTIVE_SLOT", active),
        ("BATON_SLOT_VERSION", version),
        ("BATON_SLOT_VERSION_ALT", alt),
        ("NODE_NAME", "n1"),
        ("POD_NAME", "baton-n1"),
        ("POD_NAMESPACE", "baton-system"),
    ]);
    SlotInfo::from_lookup(|k| env.get(k).map(|v| v.to_string())).expect("valid env")
}

/// A pod with these annotations and, optionally, a handover condition.
fn pod(annotations: Value, report: Option<(&str, &str, &str, &str)>) -> Pod {
    let conditions = match report {
        None => json!([{"type": "Ready", "status": "True"}]),
        Some((slot, version, reason, at)) => json!([
            {"type": "Ready", "status": "True"},
            {"type": "baton.dev/Handover",
             "status": if reason == "Committed" { "True" } else { "False" },
             "reason": reason, "lastTransitionTime": at,
             "message": json!({"slot": slot, "version": version, "durationMs": 1,
                               "freezeMs": 0, "mapsReused": 0, "mapsMigrated": 0,
                               "entriesCopied": 0, "message": ""}).to_string()}
        ]),
    };
    serde_json::from_value(json!({
        "metadata": {"name": "baton-n1", "annotations": annotations},
        "status": {"conditions": conditions},
    }))
    .expect("test pod parses")
}

/// Annotations while slot b takes over from slot a (v1 → v2).
fn mid_handover() -> Value {
    json!({"baton.dev/active-slot": "a", "baton.dev/slot-a-version": "v1",
           "baton.dev/slot-b-version": "v2", "baton.dev/handover-started": T0})
}

#[test]
fn env_role_for_every_operator_state() {
    // New pod: slot a active, b parked.
    assert_eq!(info("a", "a", "v1", EMPTY).role(), Role::Active);
    // StartUpgrade put v2 into b.
    assert_eq!(info("b", "a", "v2", "v1").role(), Role::Successor);
    // After FinishUpgrade, b restarted by the kubelet.
    assert_eq!(info("b", "b", "v2", EMPTY).role(), Role::Active);
    // Active restarted mid-handover, or retired restarted before the flip:
    // the environment cannot tell; role_in can.
    assert_eq!(info("a", "a", "v1", "v2").role(), Role::Active);
    // A standby with nothing of its own to take over with.
    assert_eq!(info("b", "a", "v1", "v1").role(), Role::Retired);
    assert_eq!(info("b", "a", "", "v1").role(), Role::Retired);
}

#[test]
fn missing_or_garbled_active_slot_means_slot_a_as_for_the_operator() {
    assert_eq!(info("a", "", "v1", EMPTY).role(), Role::Active);
    assert_eq!(info("b", "x", "v2", "v1").role(), Role::Successor);
    assert_eq!(info("b", "x", "v2", "v1").active_slot, Slot::A);
}

#[test]
fn env_errors_name_the_variable() {
    let env = HashMap::from([("BATON_SLOT", "c"), ("NODE_NAME", "n")]);
    let e = SlotInfo::from_lookup(|k| env.get(k).map(|v| v.to_string()))
        .expect_err("bad slot")
        .to_string();
    assert!(e.contains("BATON_SLOT") && e.contains("\"c\""), "{e}");
    let env = HashMap::from([("BATON_SLOT", "a"), ("POD_NAME", "p")]);
    let e = SlotInfo::from_lookup(|k| env.get(k).map(|v| v.to_string()))
        .expect_err("no node")
        .to_string();
    assert!(e.contains("NODE_NAME"), "{e}");
}

#[test]
fn env_fields_and_defaults() {
    let i = info("b", "a", "v2", "v1");
    assert_eq!(
        (
            i.slot,
            i.active_slot,
            i.node_name.as_str(),
            i.pod_namespace.as_str()
        ),
        (Slot::B, Slot::A, "n1", "baton-system")
    );
    assert_eq!(i.run_dir, PathBuf::from("/run/baton"));
    assert_eq!(
        i.handover_socket(),
        PathBuf::from("/run/baton/handover.sock")
    );
    assert_eq!(Slot::B.version_annotation(), "baton.dev/slot-b-version");
}

#[test]
fn active_slot_agent_steps_aside_once_its_successor_committed() {
    let me = info("a", "a", "v1", "v2");
    let committed = Some(("b", "v2", "Committed", "2026-01-01T00:00:31Z"));
    assert_eq!(me.role_in(&pod(mid_handover(), committed)), Role::Retired);
    // No report yet: the active agent restarted mid-handover keeps serving.
    assert_eq!(me.role_in(&pod(mid_handover(), None)), Role::Active);
    // A failed successor does not retire it.
    let failed = Some(("b", "v2", "Failed", "2026-01-01T00:00:31Z"));
    assert_eq!(me.role_in(&pod(mid_handover(), failed)), Role::Active);
    // A report from before this handover started is stale.
    let stale = Some(("b", "v2", "Committed", "2026-01-01T00:00:10Z"));
    assert_eq!(me.role_in(&pod(mid_handover(), stale)), Role::Active);
    // Same second as the start counts (condition times are whole seconds).
    let same = Some(("b", "v2", "Committed", T0));
    assert_eq!(me.role_in(&pod(mid_handover(), same)), Role::Retired);
    // A commit by another version is about another handover.
    let other = Some(("b", "v9", "Committed", "2026-01-01T00:00:31Z"));
    assert_eq!(me.role_in(&pod(mid_handover(), other)), Role::Active);
}

#[test]
fn successor_takes_over_then_owns_or_retires_by_its_report() {
    let me = info("b", "a", "v2", "v1");
    assert_eq!(me.role_in(&pod(mid_handover(), None)), Role::Successor);
    let at = "2026-01-01T00:00:31Z";
    let committed = Some(("b", "v2", "Committed", at));
    assert_eq!(me.role_in(&pod(mid_handover(), committed)), Role::Active);
    let failed = Some(("b", "v2", "Failed", at));
    assert_eq!(me.role_in(&pod(mid_handover(), failed)), Role::Retired);
    // A report still "running" (another reason) does not decide.
    let running = Some(("b", "v2", "Migrating", at));
    assert_eq!(me.role_in(&pod(mid_handover(), running)), Role::Successor);
}

#[test]
fn parked_or_idle_standby_is_retired() {
    let me = info("b", "a", "v2", "v1");
    // ResetStandby parked slot b: the container is about to be replaced.
    let reset = json!({"baton.dev/active-slot": "a", "baton.dev/slot-a-version": "v1",
                       "baton.dev/slot-b-version": EMPTY});
    assert_eq!(me.role_in(&pod(reset, None)), Role::Retired);
    // Standby at its version but no handover running.
    let idle = json!({"baton.dev/active-slot": "a", "baton.dev/slot-a-version": "v1",
                      "baton.dev/slot-b-version": "v2"});
    assert_eq!(me.role_in(&pod(idle, None)), Role::Retired);
}

#[test]
fn new_active_agent_after_the_flip_owns_the_datapath() {
    let me = info("b", "b", "v2", EMPTY);
    let flipped = json!({"baton.dev/active-slot": "b", "baton.dev/slot-a-version": EMPTY,
                         "baton.dev/slot-b-version": "v2"});
    let own = Some(("b", "v2", "Committed", "2026-01-01T00:00:31Z"));
    assert_eq!(me.role_in(&pod(flipped.clone(), own)), Role::Active);
    assert_eq!(me.role_in(&pod(flipped, None)), Role::Active);
    // The retired slot a, if it still ran, sees its version annotation moved on.
    let old = info("a", "a", "v1", "v2");
    let flipped = json!({"baton.dev/active-slot": "b", "baton.dev/slot-a-version": EMPTY,
                         "baton.dev/slot-b-version": "v2"});
    assert_eq!(old.role_in(&pod(flipped, None)), Role::Retired);
}
