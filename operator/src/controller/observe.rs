//! Reads the planner's view of a node back from its agent pod.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;

use super::names::{ANN_ACTIVE_SLOT, ANN_HANDOVER_STARTED, CONDITION_HANDOVER};
use crate::crd::{HandoverFigures, Slot};
use crate::plan::{HandoverReport, PairView, Standby};

/// Whether a node carries every label of the selector.
pub fn selects(match_labels: &BTreeMap<String, String>, node: &Node) -> bool {
    let labels = node.metadata.labels.as_ref();
    match_labels
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The JSON body of the agent's `baton.dev/Handover` condition message.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HandoverConditionBody {
    /// Slot of the reporting (new) agent.
    pub slot: Option<Slot>,
    /// Version (image) of the reporting agent.
    pub version: Option<String>,
    /// The figures themselves.
    #[serde(flatten)]
    pub figures: HandoverFigures,
}

/// A pod as the planner sees it, plus the figures of its last handover report.
pub struct Observed {
    /// The planner's view.
    pub view: PairView,
    /// Figures from the agent's condition, when it reported about the current slots.
    pub figures: Option<HandoverFigures>,
}

/// Slot that the pod's annotation names as active (slot a when missing or garbled).
pub fn active_slot(pod: &Pod) -> Slot {
    match annotation(pod, ANN_ACTIVE_SLOT) {
        Some("b") => Slot::B,
        _ => Slot::A,
    }
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// Image of a slot's container in the pod spec.
pub fn slot_image(pod: &Pod, slot: Slot) -> Option<&str> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == slot.container())?
        .image
        .as_deref()
}

/// Builds the planner's view of `pod` at time `now`.
pub fn observe(pod: &Pod, now: Timestamp) -> Observed {
    let active = active_slot(pod);
    let standby_slot = active.other();
    let status = pod.status.as_ref();
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let ready = !terminating
        && status
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.name == active.container() && c.ready);
    let standby_image = slot_image(pod, standby_slot).unwrap_or_default().to_owned();

    let condition = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == CONDITION_HANDOVER);
    // Only a report from the agent now in the standby slot, at its version,
    // speaks about the running handover; anything else is an old report.
    let started = annotation(pod, ANN_HANDOVER_STARTED);
    let started_at = started.and_then(|s| s.parse::<Timestamp>().ok());
    let body = condition.and_then(|c| {
        let body: HandoverConditionBody = serde_json::from_str(c.message.as_deref()?).ok()?;
        // A retry of the same version into the same slot must not pick up the
        // previous attempt's report: it has to be newer than this start.
        let fresh = match (started_at, c.last_transition_time.as_ref()) {
            // Condition times have whole seconds only.
            (Some(start), Some(at)) => at.0.as_second() >= start.as_second(),
            _ => true,
        };
        (fresh
            && body.slot == Some(standby_slot)
            && body.version.as_deref() == Some(&standby_image))
        .then_some((c, body))
    });
    let report = body
        .as_ref()
        .and_then(|(c, body)| match c.reason.as_deref() {
            Some("Committed") if c.status == "True" => Some(HandoverReport::Committed),
            Some("Failed") => Some(HandoverReport::Failed {
                message: body
                    .figures
                    .message
                    .clone()
                    .unwrap_or_else(|| "the new agent reported a failed handover".into()),
            }),
            _ => None,
        });

    let standby = match started {
        None => Standby::Empty,
        Some(_) => Standby::Upgrading {
            image: standby_image,
            // An unreadable start time counts as timed out: resetting the
            // standby is the safe side, the old agent keeps serving.
            elapsed_seconds: started_at
                .map(|t| u64::try_from(now.as_second() - t.as_second()).unwrap_or(0))
                .unwrap_or(u64::MAX),
            report,
        },
    };
    let active_image = slot_image(pod, active).unwrap_or_default().to_owned();
    let figures = match body {
        Some((_, b)) => Some(b.figures),
        // No running handover reported: the Committed report of the agent
        // now active, at its image, holds the figures of the handover that
        // put it there. An operator that finished that handover and died
        // before writing the status (or any later one) finds them here.
        None => condition.and_then(|c| {
            let body: HandoverConditionBody = serde_json::from_str(c.message.as_deref()?).ok()?;
            (c.reason.as_deref() == Some("Committed")
                && c.status == "True"
                && body.slot == Some(active)
                && body.version.as_deref() == Some(&active_image))
            .then_some(body.figures)
        }),
    };
    Observed {
        view: PairView {
            active,
            active_image,
            ready,
            standby,
        },
        figures,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(annotations: serde_json::Value, conditions: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "annotations": annotations},
            "spec": {"containers": [
                {"name": "slot-a", "image": "agent:v1"},
                {"name": "slot-b", "image": "agent:v2"}
            ]},
            "status": {
                "containerStatuses": [
                    {"name": "slot-a", "ready": true, "image": "", "imageID": "", "restartCount": 0},
                    {"name": "slot-b", "ready": false, "image": "", "imageID": "", "restartCount": 0}
                ],
                "conditions": conditions
            }
        }))
        .expect("pod parses")
    }

    fn now() -> Timestamp {
        "2026-01-01T00:01:00Z".parse().expect("timestamp")
    }

    fn committed(slot: &str, version: &str) -> serde_json::Value {
        json!([{"type": "baton.dev/Handover", "status": "True", "reason": "Committed",
                "message": json!({"slot": slot, "version": version, "durationMs": 40,
                                  "freezeMs": 3, "mapsReused": 4, "mapsMigrated": 1,
                                  "entriesCopied": 100000}).to_string()}])
    }

    #[test]
    fn idle_pod_reads_active_slot_image_and_readiness() {
        let o = observe(
            &pod(json!({"baton.dev/active-slot": "a"}), json!([])),
            now(),
        );
        assert_eq!(o.view.active, Slot::A);
        assert_eq!(o.view.active_image, "agent:v1");
        assert!(o.view.ready);
        assert_eq!(o.view.standby, Standby::Empty);
        assert!(o.figures.is_none());
    }

    #[test]
    fn running_handover_reads_elapsed_time_and_the_matching_report() {
        let ann = json!({"baton.dev/active-slot": "a",
                         "baton.dev/handover-started": "2026-01-01T00:00:00Z"});
        let o = observe(&pod(ann.clone(), committed("b", "agent:v2")), now());
        assert_eq!(
            o.view.standby,
            Standby::Upgrading {
                image: "agent:v2".into(),
                elapsed_seconds: 60,
                report: Some(HandoverReport::Committed)
            }
        );
        let figures = o.figures.expect("figures");
        assert_eq!((figures.duration_ms, figures.entries_copied), (40, 100_000));

        let stale = observe(&pod(ann, committed("b", "agent:v1")), now());
        assert!(
            matches!(stale.view.standby, Standby::Upgrading { report: None, .. }),
            "a report about another version is not about this handover"
        );
    }

    #[test]
    fn a_finished_handover_keeps_its_figures_on_the_pod() {
        // Slot b committed v2 and is active; slot a is parked (v1 here).
        let ann = json!({"baton.dev/active-slot": "b"});
        let o = observe(&pod(ann.clone(), committed("b", "agent:v2")), now());
        assert_eq!(o.view.standby, Standby::Empty);
        let figures = o.figures.expect("the active agent's own report");
        assert_eq!((figures.duration_ms, figures.maps_migrated), (40, 1));
        // A report about another version is not this agent's.
        let other = observe(&pod(ann.clone(), committed("b", "agent:v3")), now());
        assert!(other.figures.is_none());
        let mut failed = committed("b", "agent:v2");
        failed[0]["status"] = json!("False");
        failed[0]["reason"] = json!("Failed");
        assert!(observe(&pod(ann, failed), now()).figures.is_none());
    }

    #[test]
    fn a_report_older_than_the_handover_start_is_ignored() {
        let ann = json!({"baton.dev/handover-started": "2026-01-01T00:00:30Z"});
        let mut cond = committed("b", "agent:v2");
        cond[0]["lastTransitionTime"] = json!("2026-01-01T00:00:10Z");
        let o = observe(&pod(ann.clone(), cond.clone()), now());
        assert!(matches!(
            o.view.standby,
            Standby::Upgrading { report: None, .. }
        ));
        // Same second as the start: condition times have no fractions, so it counts.
        let ann = json!({"baton.dev/handover-started": "2026-01-01T00:00:31.5Z"});
        cond[0]["lastTransitionTime"] = json!("2026-01-01T00:00:31Z");
        let o = observe(&pod(ann, cond), now());
        assert!(matches!(
            o.view.standby,
            Standby::Upgrading {
                report: Some(HandoverReport::Committed),
                ..
            }
        ));
    }

    #[test]
    fn failure_report_carries_the_agents_message() {
        let ann = json!({"baton.dev/handover-started": "2026-01-01T00:00:30Z"});
        let cond = json!([{"type": "baton.dev/Handover", "status": "False", "reason": "Failed",
                           "message": json!({"slot": "b", "version": "agent:v2",
                                             "message": "map frontend: key size changed"}).to_string()}]);
        let o = observe(&pod(ann, cond), now());
        assert_eq!(
            o.view.standby,
            Standby::Upgrading {
                image: "agent:v2".into(),
                elapsed_seconds: 30,
                report: Some(HandoverReport::Failed {
                    message: "map frontend: key size changed".into()
                })
            }
        );
    }

    #[test]
    fn garbled_start_time_counts_as_timed_out() {
        let o = observe(
            &pod(
                json!({"baton.dev/handover-started": "yesterday"}),
                json!([]),
            ),
            now(),
        );
        assert!(matches!(
            o.view.standby,
            Standby::Upgrading {
                elapsed_seconds: u64::MAX,
                ..
            }
        ));
    }

    #[test]
    fn node_selection_needs_every_label() {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "n",
            "labels": {"a": "1", "b": "2"}}}))
        .expect("node");
        let sel = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(selects(&sel(&[]), &node));
        assert!(selects(&sel(&[("a", "1")]), &node));
        assert!(!selects(&sel(&[("a", "1"), ("c", "3")]), &node));
        assert!(!selects(&sel(&[("a", "2")]), &node));
    }
}
