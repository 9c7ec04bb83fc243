//! Reads the planner's view of a node back from its agent pod. The pod's
//! contract with the agent (annotations, conditions, report bodies and the
//! rules to read them) is `baton_api::pairpod`; this is the operator's
//! Kubernetes edge of it.

use std::collections::BTreeMap;

use baton_api::pairpod::{
    self, report_is_fresh, ConditionReport, HandoverOutcome, HandoverReport, Slot, StartedReport,
    ANN_ACTIVE_SLOT, ANN_HANDOVER_STARTED, CONDITION_HANDOVER, CONDITION_STARTED, STATUS_TRUE,
};
use k8s_openapi::api::core::v1::{ContainerStatus, Node, Pod, PodCondition};
use k8s_openapi::jiff::Timestamp;

use baton_api::admin::ProtocolRange;
use baton_api::datapath::DatapathWindow;

use crate::crd::{Disruption, HandoverFigures};
use crate::plan::{KubeletWait, PairView, Reported, Serving, Standby};

/// Waiting reasons of a container that the kubelet holds back: shown in the
/// node status and an event while a handover waits on them.
const HOLD_REASONS: [&str; 8] = [
    "CrashLoopBackOff",
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerError",
    "CreateContainerConfigError",
    "RunContainerError",
];

/// Whether a node carries every label of the selector.
pub fn selects(match_labels: &BTreeMap<String, String>, node: &Node) -> bool {
    let labels = node.metadata.labels.as_ref();
    match_labels
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The status's figures of an agent's report (the CRD's integer types,
/// saturating). `result` and `at` are the condition's, set by the caller.
pub fn figures_of(report: &HandoverReport) -> HandoverFigures {
    HandoverFigures {
        duration_ms: i64::try_from(report.duration_ms).unwrap_or(i64::MAX),
        freeze_ms: i64::try_from(report.freeze_ms).unwrap_or(i64::MAX),
        maps_reused: i32::try_from(report.maps_reused).unwrap_or(i32::MAX),
        maps_migrated: i32::try_from(report.maps_migrated).unwrap_or(i32::MAX),
        entries_copied: i64::try_from(report.entries_copied).unwrap_or(i64::MAX),
        message: (!report.message.is_empty()).then(|| report.message.clone()),
        result: None,
        at: None,
        disruption: report.datapath.as_ref().map(disruption_of),
    }
}

/// The status's form of a report's datapath window.
pub fn disruption_of(w: &DatapathWindow) -> Disruption {
    let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    Disruption {
        connects: int(w.after.to_vip()),
        refused: int(w.after.refused()),
        refused_per_million: w.after.refused_per_million().map(int),
        refused_per_million_before: crate::plan::before_ppm(w).map(int),
        window_ms: int(w.after_ms),
        sync_errors: int(w.sync_errors),
    }
}

/// A pod as the planner sees it, plus the figures of its last handover report.
pub struct Observed {
    /// The planner's view.
    pub view: PairView,
    /// Figures from the agent's condition, when it reported about the current slots.
    pub figures: Option<HandoverFigures>,
    /// The handover protocol versions the serving agent said it speaks.
    pub protocol: Option<ProtocolRange>,
}

/// Slot that the pod's annotation names as active ([`pairpod::active_slot`]:
/// slot a when missing or garbled).
pub fn active_slot(pod: &Pod) -> Slot {
    pairpod::active_slot(annotation(pod, ANN_ACTIVE_SLOT))
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

/// The kubelet's status of a slot's container.
fn container_status(pod: &Pod, slot: Slot) -> Option<&ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == slot.container())
}

fn condition_of<'a>(pod: &'a Pod, type_: &str) -> Option<&'a PodCondition> {
    condition(pod, type_)
}

fn condition<'a>(pod: &'a Pod, type_: &str) -> Option<&'a PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// Whether the agent of `slot` at `image` said it owns the datapath: a
/// Committed handover report, or a Started report, naming that slot and image.
fn serving(pod: &Pod, slot: Slot, image: &str) -> bool {
    let message = |c: &PodCondition| c.message.clone().unwrap_or_default();
    let committed = condition(pod, CONDITION_HANDOVER).is_some_and(|c| {
        HandoverOutcome::from_condition(&c.status, c.reason.as_deref())
            == Some(HandoverOutcome::Committed)
            && HandoverReport::from_message(&message(c)).is_ok_and(|r| r.is_from(slot, image))
    });
    let started = condition(pod, CONDITION_STARTED).is_some_and(|c| {
        c.status == STATUS_TRUE
            && StartedReport::from_message(&message(c)).is_ok_and(|r| r.is_from(slot, image))
    });
    committed || started
}

/// What the kubelet does with the new agent's container of a handover that
/// started at `started` (whole seconds).
fn kubelet_wait(pod: &Pod, slot: Slot, started: Option<Timestamp>, now: Timestamp) -> KubeletWait {
    let Some(cs) = container_status(pod, slot) else {
        return KubeletWait::default();
    };
    let state = cs.state.as_ref();
    let waiting = state.and_then(|s| s.waiting.as_ref());
    let reason = waiting
        .and_then(|w| w.reason.as_deref())
        .unwrap_or_default();
    let kubelet_text = waiting
        .and_then(|w| w.message.as_deref())
        .unwrap_or_default();
    // An instance that started after the handover did and exited is the new
    // agent itself crashing: its back-off is the agent's fault and counts.
    let previous = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref());
    let new_agent_exited = match (started, previous.and_then(|t| t.started_at.as_ref())) {
        (Some(start), Some(at)) => at.0.as_second() >= start.as_second(),
        _ => false,
    };
    let since = |t: Timestamp| u64::try_from(t.as_second() - started?.as_second()).ok();
    let backoff_seconds = if new_agent_exited {
        0
    } else if reason == "CrashLoopBackOff" {
        // Still held back by the back-off of an earlier container of this
        // name and image (an image swap counts as a restart to the kubelet).
        since(now).unwrap_or(0)
    } else {
        // Started late: the time before the container ran was the kubelet's.
        state
            .and_then(|s| s.running.as_ref()?.started_at.as_ref())
            .and_then(|t| since(t.0))
            .unwrap_or(0)
    };
    let message = HOLD_REASONS.contains(&reason).then(|| {
        let container = slot.container();
        match backoff_of(kubelet_text) {
            Some(delay) if reason == "CrashLoopBackOff" && new_agent_exited => {
                let code = previous.map(|t| t.exit_code).unwrap_or_default();
                format!("kubelet back-off {delay} restarting {container}: the new agent exited with code {code}")
            }
            Some(delay) if reason == "CrashLoopBackOff" => {
                format!("kubelet back-off {delay} before starting {container} ({kubelet_text})")
            }
            _ if kubelet_text.is_empty() => format!("kubelet: {container} waiting ({reason})"),
            _ => format!("kubelet: {container} waiting ({reason}): {kubelet_text}"),
        }
    });
    KubeletWait {
        message,
        backoff_seconds,
    }
}

/// `40s` from the kubelet's "back-off 40s restarting failed container=...".
fn backoff_of(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("back-off ")?;
    rest.split_whitespace().next()
}

/// Builds the planner's view of `pod` at time `now`; `empty_image` is the
/// spec's parking image (a slot holding it is no warm standby).
pub fn observe(pod: &Pod, empty_image: &str, now: Timestamp) -> Observed {
    let active = active_slot(pod);
    let standby_slot = active.other();
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let active_image = slot_image(pod, active).unwrap_or_default().to_owned();
    // Ready: the container is, and its agent said it owns the datapath (a
    // running container alone proves nothing: no probes, and the agent may
    // still be failing to attach).
    let ready = !terminating
        && container_status(pod, active).is_some_and(|c| c.ready)
        && serving(pod, active, &active_image);
    let standby_image = slot_image(pod, standby_slot).unwrap_or_default().to_owned();

    let condition = condition(pod, CONDITION_HANDOVER);
    // Only a report from the agent now in the standby slot, at its version,
    // speaks about the running handover; anything else is an old report.
    let started = annotation(pod, ANN_HANDOVER_STARTED);
    let started_at = started.and_then(|s| s.parse::<Timestamp>().ok());
    let report_of = |c: &PodCondition| HandoverReport::from_message(c.message.as_deref()?).ok();
    let body = condition.and_then(|c| {
        let body = report_of(c)?;
        let at = c.last_transition_time.as_ref().map(|t| t.0.as_second());
        (report_is_fresh(started_at.map(|t| t.as_second()), at)
            && body.is_from(standby_slot, &standby_image))
        .then_some((c, body))
    });
    let report = body.as_ref().and_then(|(c, body)| {
        match HandoverOutcome::from_condition(&c.status, c.reason.as_deref())? {
            HandoverOutcome::Committed => Some(Reported::Committed),
            HandoverOutcome::Failed => Some(Reported::Failed {
                message: if body.message.is_empty() {
                    "the new agent reported a failed handover".into()
                } else {
                    body.message.clone()
                },
            }),
        }
    });

    let standby_container = container_status(pod, standby_slot);
    let standby = match started {
        None if standby_image.is_empty() || standby_image == empty_image => Standby::Empty,
        // The agent retired at the last commit: a warm standby if its
        // container runs what the annotation (its downward API) says.
        None => Standby::Warm {
            running: standby_container
                .is_some_and(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
                && annotation(pod, &standby_slot.version_annotation())
                    == Some(standby_image.as_str()),
            image: standby_image,
        },
        Some(_) => Standby::Upgrading {
            kubelet: kubelet_wait(pod, standby_slot, started_at, now),
            ready: standby_container.is_some_and(|c| c.ready),
            image: standby_image,
            // An unreadable start time counts as timed out: resetting the
            // standby is the safe side, the old agent keeps serving.
            elapsed_seconds: started_at
                .map(|t| u64::try_from(now.as_second() - t.as_second()).unwrap_or(0))
                .unwrap_or(u64::MAX),
            report,
        },
    };
    // The report's outcome and time go with its figures, so the status can
    // tell an old success from a newer failure.
    let stamp = |report: &HandoverReport, c: &PodCondition| HandoverFigures {
        result: c.reason.clone(),
        at: c.last_transition_time.clone(),
        ..figures_of(report)
    };
    let figures = match body {
        Some((c, b)) => Some(stamp(&b, c)),
        // No running handover reported: the Committed report of the agent
        // now active, at its image, holds the figures of the handover that
        // put it there. An operator that finished that handover and died
        // before writing the status (or any later one) finds them here.
        None => condition.and_then(|c| {
            let body = report_of(c)?;
            (HandoverOutcome::from_condition(&c.status, c.reason.as_deref())
                == Some(HandoverOutcome::Committed)
                && body.is_from(active, &active_image))
            .then(|| stamp(&body, c))
        }),
    };
    // The active agent since the handover that put it in charge: what a
    // canary is judged by.
    let serving = condition.and_then(|c| {
        let body = report_of(c)?;
        let at = c.last_transition_time.as_ref()?.0.as_second();
        (HandoverOutcome::from_condition(&c.status, c.reason.as_deref())
            == Some(HandoverOutcome::Committed)
            && body.is_from(active, &active_image))
        .then(|| {
            let cs = container_status(pod, active);
            let running_since = cs
                .and_then(|c| c.state.as_ref()?.running.as_ref()?.started_at.as_ref())
                .map(|t| t.0.as_second());
            Serving {
                committed_seconds_ago: u64::try_from(now.as_second() - at).unwrap_or(0),
                datapath: body.datapath,
                // Its container started after it committed, or is not running.
                restarted: running_since.is_none_or(|since| since > at),
            }
        })
    });
    let protocol = condition_of(pod, CONDITION_STARTED)
        .filter(|c| c.status == STATUS_TRUE)
        .and_then(|c| StartedReport::from_message(c.message.as_deref()?).ok())
        .filter(|r| r.is_from(active, &active_image))
        .and_then(|r| r.handover_protocol);
    Observed {
        view: PairView {
            active,
            active_image,
            ready,
            standby,
            serving,
        },
        figures,
        protocol,
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

    const EMPTY: &str = "empty:1";

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
            &pod(
                json!({"baton.dev/active-slot": "a"}),
                started("a", "agent:v1"),
            ),
            EMPTY,
            now(),
        );
        assert_eq!(o.view.active, Slot::A);
        assert_eq!(o.view.active_image, "agent:v1");
        assert!(o.view.ready);
        // Slot b holds an agent, not the empty image: a standby (not running).
        assert_eq!(
            o.view.standby,
            Standby::Warm {
                image: "agent:v2".into(),
                running: false
            }
        );
        assert!(o.figures.is_none());
    }

    #[test]
    fn running_handover_reads_elapsed_time_and_the_matching_report() {
        let ann = json!({"baton.dev/active-slot": "a",
                         "baton.dev/handover-started": "2026-01-01T00:00:00Z"});
        let o = observe(&pod(ann.clone(), committed("b", "agent:v2")), EMPTY, now());
        assert_eq!(
            o.view.standby,
            Standby::Upgrading {
                image: "agent:v2".into(),
                elapsed_seconds: 60,
                report: Some(Reported::Committed),
                ready: false,
                kubelet: KubeletWait::default(),
            }
        );
        let figures = o.figures.expect("figures");
        assert_eq!((figures.duration_ms, figures.entries_copied), (40, 100_000));

        let stale = observe(&pod(ann, committed("b", "agent:v1")), EMPTY, now());
        assert!(
            matches!(stale.view.standby, Standby::Upgrading { report: None, .. }),
            "a report about another version is not about this handover"
        );
    }

    #[test]
    fn a_finished_handover_keeps_its_figures_on_the_pod() {
        // Slot b committed v2 and is active; slot a keeps v1 as the standby.
        let ann = json!({"baton.dev/active-slot": "b"});
        let o = observe(&pod(ann.clone(), committed("b", "agent:v2")), EMPTY, now());
        assert_eq!(
            o.view.standby,
            Standby::Warm {
                image: "agent:v1".into(),
                running: false
            }
        );
        let figures = o.figures.expect("the active agent's own report");
        assert_eq!((figures.duration_ms, figures.maps_migrated), (40, 1));
        // A report about another version is not this agent's.
        let other = observe(&pod(ann.clone(), committed("b", "agent:v3")), EMPTY, now());
        assert!(other.figures.is_none());
        let mut failed = committed("b", "agent:v2");
        failed[0]["status"] = json!("False");
        failed[0]["reason"] = json!("Failed");
        assert!(observe(&pod(ann, failed), EMPTY, now()).figures.is_none());
    }

    #[test]
    fn a_report_older_than_the_handover_start_is_ignored() {
        let ann = json!({"baton.dev/handover-started": "2026-01-01T00:00:30Z"});
        let mut cond = committed("b", "agent:v2");
        cond[0]["lastTransitionTime"] = json!("2026-01-01T00:00:10Z");
        let o = observe(&pod(ann.clone(), cond.clone()), EMPTY, now());
        assert!(matches!(
            o.view.standby,
            Standby::Upgrading { report: None, .. }
        ));
        // Same second as the start: condition times have no fractions, so it counts.
        let ann = json!({"baton.dev/handover-started": "2026-01-01T00:00:31.5Z"});
        cond[0]["lastTransitionTime"] = json!("2026-01-01T00:00:31Z");
        let o = observe(&pod(ann, cond), EMPTY, now());
        assert!(matches!(
            o.view.standby,
            Standby::Upgrading {
                report: Some(Reported::Committed),
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
        let o = observe(&pod(ann, cond), EMPTY, now());
        assert_eq!(
            o.view.standby,
            Standby::Upgrading {
                image: "agent:v2".into(),
                elapsed_seconds: 30,
                report: Some(Reported::Failed {
                    message: "map frontend: key size changed".into()
                }),
                ready: false,
                kubelet: KubeletWait::default(),
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
            EMPTY,
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

    fn started(slot: &str, version: &str) -> serde_json::Value {
        json!([{"type": "baton.dev/Started", "status": "True", "reason": "Started",
                "message": json!({"slot": slot, "version": version}).to_string()}])
    }

    #[test]
    fn a_ready_container_is_not_a_ready_agent_without_its_report() {
        let ann = json!({"baton.dev/active-slot": "a"});
        let ready = |c: serde_json::Value| observe(&pod(ann.clone(), c), EMPTY, now()).view.ready;
        assert!(!ready(json!([])));
        // A report of another slot or image is not this agent's.
        assert!(!ready(started("b", "agent:v1")));
        assert!(!ready(started("a", "agent:v0")));
        assert!(ready(committed("a", "agent:v1")));
        let mut p = pod(ann.clone(), started("a", "agent:v1"));
        if let Some(cs) = p
            .status
            .as_mut()
            .and_then(|s| s.container_statuses.as_mut())
        {
            cs[0].ready = false;
        }
        assert!(
            !observe(&p, EMPTY, now()).view.ready,
            "and its container must be ready"
        );
    }

    fn with_slot_b(mut p: Pod, image: &str, status: serde_json::Value) -> Pod {
        if let Some(c) = p.spec.as_mut().and_then(|s| s.containers.get_mut(1)) {
            c.image = Some(image.into());
        }
        if let Some(cs) = p
            .status
            .as_mut()
            .and_then(|s| s.container_statuses.as_mut())
        {
            let mut merged = serde_json::to_value(&cs[1]).expect("status");
            for (k, v) in status.as_object().cloned().unwrap_or_default() {
                merged[k] = v;
            }
            cs[1] = serde_json::from_value(merged).expect("container status");
        }
        p
    }

    #[test]
    fn a_running_retired_agent_is_a_warm_standby_and_the_empty_image_is_not() {
        let running = json!({"state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}});
        let ann = json!({"baton.dev/active-slot": "a", "baton.dev/slot-b-version": "agent:v2"});
        let view = |ann: &serde_json::Value, image: &str| {
            observe(
                &with_slot_b(pod(ann.clone(), json!([])), image, running.clone()),
                EMPTY,
                now(),
            )
            .view
            .standby
        };
        assert_eq!(
            view(&ann, "agent:v2"),
            Standby::Warm {
                image: "agent:v2".into(),
                running: true
            }
        );
        // Its version annotation disagrees: its downward API would lie.
        let other = json!({"baton.dev/active-slot": "a", "baton.dev/slot-b-version": "agent:v3"});
        assert_eq!(
            view(&other, "agent:v2"),
            Standby::Warm {
                image: "agent:v2".into(),
                running: false
            }
        );
        assert_eq!(view(&ann, EMPTY), Standby::Empty);
    }

    fn kubelet_of(o: &Observed) -> KubeletWait {
        match &o.view.standby {
            Standby::Upgrading { kubelet, .. } => kubelet.clone(),
            other => panic!("not upgrading: {other:?}"),
        }
    }

    #[test]
    fn the_kubelets_back_off_of_the_swapped_slot_is_read_and_not_counted() {
        let ann = json!({"baton.dev/active-slot": "a",
                         "baton.dev/handover-started": "2026-01-01T00:00:00Z"});
        let wait = |status: serde_json::Value| {
            kubelet_of(&observe(
                &with_slot_b(pod(ann.clone(), json!([])), "agent:v2", status),
                EMPTY,
                now(),
            ))
        };
        // The swap killed the old container (started before the handover):
        // the kubelet's back-off holds the new image.
        let k = wait(json!({
            "state": {"waiting": {"reason": "CrashLoopBackOff",
                "message": "back-off 40s restarting failed container=slot-b pod=p_ns(uid)"}},
            "lastState": {"terminated": {"exitCode": 0, "startedAt": "2025-12-31T23:00:00Z",
                "finishedAt": "2026-01-01T00:00:01Z"}}}));
        assert_eq!(
            k.backoff_seconds, 60,
            "the whole minute so far was the kubelet's"
        );
        assert_eq!(
            k.message.as_deref(),
            Some("kubelet back-off 40s before starting slot-b (back-off 40s restarting failed container=slot-b pod=p_ns(uid))")
        );
        // Started 45 s after the handover did: those 45 s do not count.
        let k = wait(
            json!({"state": {"running": {"startedAt": "2026-01-01T00:00:45Z"}},
            "lastState": {"terminated": {"exitCode": 0, "startedAt": "2025-12-31T23:00:00Z",
                "finishedAt": "2026-01-01T00:00:01Z"}}}),
        );
        assert_eq!((k.backoff_seconds, k.message), (45, None));
        // The new agent itself crashed during this handover: its back-off counts.
        let k = wait(json!({
            "state": {"waiting": {"reason": "CrashLoopBackOff",
                "message": "back-off 10s restarting failed container=slot-b pod=p_ns(uid)"}},
            "lastState": {"terminated": {"exitCode": 1, "startedAt": "2026-01-01T00:00:02Z",
                "finishedAt": "2026-01-01T00:00:03Z"}}}));
        assert_eq!(k.backoff_seconds, 0);
        assert_eq!(
            k.message.as_deref(),
            Some("kubelet back-off 10s restarting slot-b: the new agent exited with code 1")
        );
        // An image error is shown, and its time counts.
        let k =
            wait(json!({"state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}));
        assert_eq!(k.backoff_seconds, 0);
        assert_eq!(
            k.message.as_deref(),
            Some("kubelet: slot-b waiting (ErrImagePull): not found")
        );
        // A warm start: the standby has run since before the handover.
        let k = wait(json!({"state": {"running": {"startedAt": "2025-12-31T00:00:00Z"}}}));
        assert_eq!(k, KubeletWait::default());
    }
}
