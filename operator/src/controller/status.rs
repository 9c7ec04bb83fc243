//! Turns a plan into the `KmeshUpgrade` status.

use std::collections::HashMap;

use baton_api::pairpod::HandoverOutcome;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{
    CanaryPhase, CanaryStatus, HandoverFigures, KmeshUpgradeStatus, NodePhase, NodePreflight,
    NodeStatus, PreflightProgress, PreflightResult, RolloutPhase,
};
use crate::plan::{FailureCause, Plan, PreflightTally};

/// What this observation saw on the nodes, besides the plan.
pub struct Seen<'a> {
    /// Handover reports by node; older figures are kept from the previous status.
    pub figures: &'a HashMap<String, HandoverFigures>,
    /// Preflight results of the spec's image by node.
    pub preflights: &'a HashMap<String, NodePreflight>,
    /// The spec's image.
    pub desired: &'a str,
}

/// Builds the status for `plan` and what was `seen`; what the pods no
/// longer show (figures, a check pod deleted once it served) is kept from
/// `previous`.
pub fn build_status(
    plan: &Plan,
    seen: &Seen<'_>,
    previous: Option<&KmeshUpgradeStatus>,
    generation: Option<i64>,
    now: Timestamp,
) -> KmeshUpgradeStatus {
    let old_nodes: HashMap<&str, &NodeStatus> = previous
        .into_iter()
        .flat_map(|s| &s.node_statuses)
        .map(|n| (n.node.as_str(), n))
        .collect();
    let mut node_statuses: Vec<NodeStatus> = plan
        .nodes
        .iter()
        .map(|n| {
            let previous = old_nodes
                .get(n.name.as_str())
                .and_then(|o| o.last_handover.as_ref());
            let last_handover = match &n.failure {
                // A failure of this round is the node's last handover, even
                // though the pod still shows the previous success's report.
                Some(reason) => Some(HandoverFigures {
                    message: Some(reason.clone()),
                    result: Some(HandoverOutcome::Failed.reason().into()),
                    at: Some(Time(now)),
                    ..HandoverFigures::default()
                }),
                None => newest(seen.figures.get(&n.name), previous).cloned(),
            };
            // The check of the spec's image, or the last one the node
            // recorded of the image it runs or goes to.
            let preflight = seen.preflights.get(&n.name).cloned().or_else(|| {
                old_nodes
                    .get(n.name.as_str())
                    .and_then(|o| o.preflight.clone())
                    .filter(|p| p.image == seen.desired || Some(&p.image) == n.version.as_ref())
            });
            NodeStatus {
                node: n.name.clone(),
                active_slot: n.active_slot,
                version: n.version.clone(),
                phase: n.phase,
                failed_image: n.failed_image.clone(),
                last_handover,
                message: n.message.clone(),
                preflight,
            }
        })
        .collect();
    let omitted = compact(&mut node_statuses);
    let s = &plan.summary;
    let count = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    let phase = plan.phase;
    let progressing = matches!(phase, RolloutPhase::Progressing | RolloutPhase::RollingBack);
    let degraded = matches!(
        phase,
        RolloutPhase::Failed | RolloutPhase::RollingBack | RolloutPhase::RolledBack
    ) || s.failed > 0;
    let failed_message = plan
        .memory
        .failed_image
        .as_ref()
        .map(|img| format!("{img} failed on {} node(s)", s.failed))
        .unwrap_or_else(|| format!("{} node(s) failed their last handover", s.failed));
    let preflight = match &plan.preflight {
        Some(t) => Some(progress(t)),
        None => previous
            .and_then(|p| p.preflight.clone())
            .filter(|p| p.image == seen.desired),
    };
    let canary = match &plan.canary {
        Some(c) => Some(CanaryStatus {
            image: c.image.clone(),
            phase: c.phase,
            nodes: c.nodes.clone(),
            soaked_seconds: c
                .soaked_seconds
                .map(|v| i64::try_from(v).unwrap_or(i64::MAX)),
            message: c.message.clone(),
        }),
        None => previous
            .and_then(|p| p.canary.clone())
            .filter(|c| c.image == seen.desired),
    };
    let failure = failure_cause(
        plan.memory.failed_image.as_deref(),
        canary.as_ref(),
        &node_statuses,
    );
    let old_conditions = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    let condition = |type_: &str, ok: bool, reason: &str, message: String| {
        make_condition(old_conditions, type_, ok, reason, message, generation, now)
    };
    KmeshUpgradeStatus {
        observed_generation: generation,
        nodes: count(s.nodes),
        updated: count(s.updated),
        ready: count(s.ready),
        failed: count(s.failed),
        phase: Some(phase),
        stable_image: plan.memory.stable_image.clone(),
        failed_image: plan.memory.failed_image.clone(),
        node_statuses,
        preflight,
        canary,
        node_statuses_omitted: (omitted > 0).then(|| i32::try_from(omitted).unwrap_or(i32::MAX)),
        conditions: vec![
            condition(
                "Available",
                s.ready == s.nodes,
                if s.ready == s.nodes {
                    "AgentsReady"
                } else {
                    "AgentsNotReady"
                },
                format!("{} of {} agents ready", s.ready, s.nodes),
            ),
            condition(
                "Progressing",
                progressing,
                &phase.to_string(),
                format!(
                    "{} of {} nodes updated, {} upgrading (maxUnavailable {})",
                    s.updated, s.nodes, s.upgrading, s.max_unavailable
                ),
            ),
            condition(
                "Degraded",
                degraded,
                if degraded {
                    failure.event_reason()
                } else {
                    "AsExpected"
                },
                failed_message,
            ),
        ],
    }
}

/// Which gate failed the failed image, for the Degraded condition: its
/// canary, its preflight on a node, or (by default) a handover.
fn failure_cause(
    failed_image: Option<&str>,
    canary: Option<&CanaryStatus>,
    nodes: &[NodeStatus],
) -> FailureCause {
    let Some(image) = failed_image else {
        return FailureCause::Handover;
    };
    if canary.is_some_and(|c| c.image == image && c.phase == CanaryPhase::Failed) {
        FailureCause::Canary
    } else if nodes.iter().any(|n| {
        n.preflight
            .as_ref()
            .is_some_and(|p| p.image == image && p.result == PreflightResult::Failed)
    }) {
        FailureCause::Preflight
    } else {
        FailureCause::Handover
    }
}

/// The status's preflight progress, with its one-line summary.
fn progress(t: &PreflightTally) -> PreflightProgress {
    let count = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    let total = t.passed + t.failed + t.running + t.pending;
    let mut summary = format!("{}/{total} passed", t.passed);
    for (n, what) in [(t.failed, "failed"), (t.running, "running")] {
        if n > 0 {
            summary.push_str(&format!(", {n} {what}"));
        }
    }
    PreflightProgress {
        image: t.image.clone(),
        passed: count(t.passed),
        failed: count(t.failed),
        running: count(t.running),
        pending: count(t.pending),
        summary,
    }
}

/// The later of the observed report and the recorded last handover: the pod
/// keeps the last Committed report after a failure, which must not replace
/// the failure recorded since. Without times the observation wins.
fn newest<'a>(
    observed: Option<&'a HandoverFigures>,
    recorded: Option<&'a HandoverFigures>,
) -> Option<&'a HandoverFigures> {
    match (observed, recorded) {
        (Some(o), Some(r)) => match (&o.at, &r.at) {
            (Some(o_at), Some(r_at)) if r_at.0 > o_at.0 => Some(r),
            _ => Some(o),
        },
        (o, r) => o.or(r),
    }
}

/// Fleets up to this size list every node in `nodeStatuses`.
const FULL_LIST_UP_TO: usize = 1000;
/// Larger fleets list at most this many nodes (plus every failed one).
const LISTED_AT_MOST: usize = 1000;

/// Keeps the status well under etcd's object size limit on large fleets:
/// past [`FULL_LIST_UP_TO`] nodes, steady nodes (Running, nothing failed) are
/// left out, and of the rest at most [`LISTED_AT_MOST`] stay, failed ones
/// always (their `failedImage` is what stops a retry on that node). Returns
/// how many entries were left out.
fn compact(nodes: &mut Vec<NodeStatus>) -> usize {
    if nodes.len() <= FULL_LIST_UP_TO {
        return 0;
    }
    let before = nodes.len();
    let mut room =
        LISTED_AT_MOST.saturating_sub(nodes.iter().filter(|n| n.failed_image.is_some()).count());
    nodes.retain(|n| {
        if n.failed_image.is_some() {
            return true;
        }
        let keep = n.phase != NodePhase::Running && room > 0;
        room -= usize::from(keep);
        keep
    });
    before - nodes.len()
}

/// A condition that keeps its transition time while its status stays the same.
fn make_condition(
    old: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Memory, NodeOutcome, Summary};
    use baton_api::pairpod::Slot;

    fn plan(phase: RolloutPhase, failed: u32) -> Plan {
        Plan {
            actions: vec![],
            summary: Summary {
                nodes: 2,
                updated: 1,
                ready: 2,
                failed,
                upgrading: 1,
                max_unavailable: 1,
            },
            phase,
            memory: Memory {
                stable_image: Some("v1".into()),
                failed_image: (failed > 0).then(|| "v2".into()),
                canary_passed: None,
            },
            nodes: vec![NodeOutcome {
                name: "n1".into(),
                phase: NodePhase::Running,
                active_slot: Some(Slot::B),
                version: Some("v2".into()),
                failed_image: None,
                message: None,
                failure: None,
            }],
            preflight: None,
            canary: None,
            waiting: false,
        }
    }

    /// What the tests saw: `figures`, no checks, v2 desired.
    fn seen(figures: &HashMap<String, HandoverFigures>) -> Seen<'_> {
        Seen {
            figures,
            preflights: Box::leak(Box::default()),
            desired: "v2",
        }
    }

    fn t(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn degraded_names_the_gate_that_failed_the_image() {
        let figures = HashMap::new();
        let reason = |p: &Plan, seen: &Seen<'_>| {
            let s = build_status(p, seen, None, None, t("2026-01-01T00:00:00Z"));
            let c = s.conditions.iter().find(|c| c.type_ == "Degraded");
            c.map(|c| (c.status.clone(), c.reason.clone()))
        };
        let failed = plan(RolloutPhase::Failed, 1);
        assert_eq!(
            reason(&failed, &seen(&figures)),
            Some(("True".into(), "HandoverFailed".into()))
        );
        // Its canary tripped.
        let mut canary = plan(RolloutPhase::RolledBack, 1);
        canary.canary = Some(crate::plan::CanaryOutcome {
            image: "v2".into(),
            phase: CanaryPhase::Failed,
            nodes: vec!["n1".into()],
            soaked_seconds: Some(5),
            message: Some("canary n1: 3 of 100 connects refused".into()),
        });
        assert_eq!(
            reason(&canary, &seen(&figures)),
            Some(("True".into(), "CanaryFailed".into()))
        );
        // Its check failed on a node (a passed one, or another image's
        // failed one, would not say so).
        let check = |image: &str, result| NodePreflight::new(image.into(), result);
        for (pf, want) in [
            (check("v2", PreflightResult::Failed), "PreflightFailed"),
            (check("v2", PreflightResult::Passed), "HandoverFailed"),
            (check("v3", PreflightResult::Failed), "HandoverFailed"),
        ] {
            let preflights = HashMap::from([("n1".to_string(), pf)]);
            let seen = Seen {
                figures: &figures,
                preflights: &preflights,
                desired: "v2",
            };
            assert_eq!(reason(&failed, &seen), Some(("True".into(), want.into())));
        }
        assert_eq!(
            reason(&plan(RolloutPhase::Complete, 0), &seen(&figures)),
            Some(("False".into(), "AsExpected".into()))
        );
    }

    #[test]
    fn counts_phase_and_nodes_come_from_the_plan() {
        let figures = HashMap::from([(
            "n1".to_string(),
            HandoverFigures {
                duration_ms: 12,
                ..HandoverFigures::default()
            },
        )]);
        let s = build_status(
            &plan(RolloutPhase::Progressing, 0),
            &seen(&figures),
            None,
            Some(4),
            t("2026-01-01T00:00:00Z"),
        );
        assert_eq!((s.nodes, s.updated, s.ready, s.failed), (2, 1, 2, 0));
        assert_eq!(s.phase, Some(RolloutPhase::Progressing));
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(
            s.node_statuses[0]
                .last_handover
                .as_ref()
                .map(|f| f.duration_ms),
            Some(12)
        );
        let cond = |ty: &str| {
            s.conditions
                .iter()
                .find(|c| c.type_ == ty)
                .map(|c| c.status.as_str())
        };
        assert_eq!(cond("Available"), Some("True"));
        assert_eq!(cond("Progressing"), Some("True"));
        assert_eq!(cond("Degraded"), Some("False"));
    }

    #[test]
    fn transition_times_move_only_when_a_condition_flips_and_figures_are_kept() {
        let first = build_status(
            &plan(RolloutPhase::Progressing, 0),
            &seen(&HashMap::from([(
                "n1".to_string(),
                HandoverFigures::default(),
            )])),
            None,
            Some(1),
            t("2026-01-01T00:00:00Z"),
        );
        let later = t("2026-01-01T01:00:00Z");
        let second = build_status(
            &plan(RolloutPhase::Failed, 1),
            &seen(&HashMap::new()),
            Some(&first),
            Some(1),
            later,
        );
        let time = |s: &KmeshUpgradeStatus, ty: &str| {
            s.conditions
                .iter()
                .find(|c| c.type_ == ty)
                .map(|c| c.last_transition_time.0)
        };
        assert_eq!(time(&second, "Available"), time(&first, "Available"));
        assert_eq!(time(&second, "Degraded"), Some(later));
        assert_eq!(time(&second, "Progressing"), Some(later));
        assert!(
            second.node_statuses[0].last_handover.is_some(),
            "old figures kept"
        );
        let again = build_status(
            &plan(RolloutPhase::Failed, 1),
            &seen(&HashMap::new()),
            Some(&second),
            Some(1),
            t("2026-01-01T02:00:00Z"),
        );
        assert_eq!(
            again, second,
            "an unchanged plan gives an identical status: no write needed"
        );
    }

    fn outcome(i: usize, phase: NodePhase, failed: bool) -> NodeOutcome {
        NodeOutcome {
            // Realistic cloud node names and image references.
            name: format!(
                "ip-10-{}-{}-{}.eu-west-1.compute.internal",
                i / 65536,
                (i / 256) % 256,
                i % 256
            ),
            phase,
            active_slot: Some(Slot::A),
            version: Some("registry.example.com/baton/baton-agent:v0.2.0-rc.1".into()),
            failed_image: failed.then(|| "registry.example.com/baton/baton-agent:v0.3.0".into()),
            message: None,
            failure: None,
        }
    }

    fn big_status(nodes: Vec<NodeOutcome>) -> KmeshUpgradeStatus {
        let mut p = plan(RolloutPhase::Progressing, 0);
        let figures: HashMap<String, HandoverFigures> = nodes
            .iter()
            .map(|n| {
                let f = HandoverFigures {
                    duration_ms: 41,
                    freeze_ms: 3,
                    maps_reused: 5,
                    maps_migrated: 1,
                    entries_copied: 105_000,
                    message: Some("committed".into()),
                    ..HandoverFigures::default()
                };
                (n.name.clone(), f)
            })
            .collect();
        p.nodes = nodes;
        build_status(
            &p,
            &seen(&figures),
            None,
            Some(1),
            t("2026-01-01T00:00:00Z"),
        )
    }

    #[test]
    fn small_fleets_list_every_node() {
        let s = big_status(
            (0..1000)
                .map(|i| outcome(i, NodePhase::Running, false))
                .collect(),
        );
        assert_eq!(s.node_statuses.len(), 1000);
        assert_eq!(s.node_statuses_omitted, None);
    }

    #[test]
    fn five_thousand_nodes_fit_well_inside_etcds_limit() {
        // Worst case: every node mid-upgrade and 300 failed.
        let nodes = (0..5000)
            .map(|i| {
                outcome(
                    i,
                    if i < 300 {
                        NodePhase::Failed
                    } else {
                        NodePhase::Upgrading
                    },
                    i < 300,
                )
            })
            .collect();
        let s = big_status(nodes);
        assert_eq!(s.node_statuses.len(), 1000);
        assert_eq!(
            s.node_statuses
                .iter()
                .filter(|n| n.failed_image.is_some())
                .count(),
            300
        );
        assert_eq!(s.node_statuses_omitted, Some(4000));
        let bytes = serde_json::to_vec(&s).expect("serializes").len();
        assert!(bytes < 512 * 1024, "status of {bytes} bytes");

        // Steady fleet: only what needs attention is listed.
        let nodes = (0..5000)
            .map(|i| {
                outcome(
                    i,
                    if i % 1000 == 7 {
                        NodePhase::Pending
                    } else {
                        NodePhase::Running
                    },
                    false,
                )
            })
            .collect();
        let s = big_status(nodes);
        assert_eq!(s.node_statuses.len(), 5);
        assert_eq!(s.node_statuses_omitted, Some(4995));
    }

    #[test]
    fn failed_nodes_are_never_left_out() {
        let nodes = (0..3000)
            .map(|i| outcome(i, NodePhase::Failed, i % 2 == 0))
            .collect();
        let s = big_status(nodes);
        assert_eq!(
            s.node_statuses
                .iter()
                .filter(|n| n.failed_image.is_some())
                .count(),
            1500
        );
        assert_eq!(s.node_statuses.len(), 1500, "no room left for the others");
    }

    #[test]
    fn a_failure_replaces_the_last_success_and_outlives_its_stale_report() {
        let committed = HandoverFigures {
            duration_ms: 12,
            result: Some("Committed".into()),
            at: Some(Time(t("2026-01-01T00:00:00Z"))),
            ..HandoverFigures::default()
        };
        let ok = build_status(
            &plan(RolloutPhase::Progressing, 0),
            &seen(&HashMap::from([("n1".to_string(), committed.clone())])),
            None,
            Some(1),
            t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(ok.node_statuses[0].last_handover.as_ref(), Some(&committed));
        // A timeout: the pod still shows the old Committed report.
        let mut failing = plan(RolloutPhase::Failed, 1);
        failing.nodes[0].failure = Some("handover did not commit within 120s".into());
        failing.nodes[0].message = failing.nodes[0].failure.clone();
        let failed_at = t("2026-01-01T00:10:00Z");
        let failed = build_status(
            &failing,
            &seen(&HashMap::from([("n1".to_string(), committed.clone())])),
            Some(&ok),
            Some(1),
            failed_at,
        );
        let last = failed.node_statuses[0]
            .last_handover
            .clone()
            .expect("recorded");
        assert_eq!(last.result.as_deref(), Some("Failed"));
        assert_eq!(
            last.message.as_deref(),
            Some("handover did not commit within 120s")
        );
        assert_eq!(last.at, Some(Time(failed_at)));
        assert_eq!(failed.node_statuses[0].message, last.message);
        // Next rounds keep the failure: the old report is older.
        let later = build_status(
            &plan(RolloutPhase::Failed, 1),
            &seen(&HashMap::from([("n1".to_string(), committed.clone())])),
            Some(&failed),
            Some(1),
            t("2026-01-01T00:10:02Z"),
        );
        assert_eq!(later.node_statuses[0].last_handover, Some(last));
        // A newer success replaces it.
        let newer = HandoverFigures {
            at: Some(Time(t("2026-01-01T00:20:00Z"))),
            ..committed
        };
        let again = build_status(
            &plan(RolloutPhase::Progressing, 0),
            &seen(&HashMap::from([("n1".to_string(), newer.clone())])),
            Some(&later),
            Some(1),
            t("2026-01-01T00:20:01Z"),
        );
        assert_eq!(again.node_statuses[0].last_handover, Some(newer));
    }
}
