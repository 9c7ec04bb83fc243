//! The agent's reports on its pod, as Kubernetes pod conditions: the new
//! agent's handover report ([`CONDITION_HANDOVER`], a [`HandoverReport`]
//! message) and the serving agent's start ([`CONDITION_STARTED`], a
//! [`StartedReport`] message). The contract is `baton_api::pairpod`; the
//! operator reads it with the same types (`operator/src/controller/observe.rs`).

use baton_api::admin::ProtocolRange;
use baton_api::pairpod::{
    ConditionReport, HandoverOutcome, HandoverReport, Slot, StartedReport, CONDITION_HANDOVER,
    CONDITION_STARTED, REASON_STARTED, STATUS_TRUE,
};
use k8s_openapi::api::core::v1::{Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use serde_json::json;

use super::ClusterError;
use crate::handover::msg::{MIN_PROTO, PROTO};

/// The condition for `report`, stamped now (whole seconds, as the API keeps).
pub fn handover_condition(
    outcome: HandoverOutcome,
    report: &HandoverReport,
) -> Result<PodCondition, ClusterError> {
    handover_condition_at(outcome, report, now_in_seconds())
}

/// The condition for `report`, stamped `at` (a soak's rewrites keep the
/// commit's time: the operator compares it with the handover's start).
pub fn handover_condition_at(
    outcome: HandoverOutcome,
    report: &HandoverReport,
    at: Time,
) -> Result<PodCondition, ClusterError> {
    Ok(PodCondition {
        type_: CONDITION_HANDOVER.into(),
        status: outcome.status().into(),
        reason: Some(outcome.reason().into()),
        message: Some(report.to_message().map_err(ClusterError::Encode)?),
        last_transition_time: Some(at),
        ..PodCondition::default()
    })
}

/// Sets the [`CONDITION_HANDOVER`] condition on pod `namespace/pod`. A
/// strategic merge patch of `status.conditions` (merged by `type`, as the
/// kubelet writes its own) leaves every other condition as it is. Needs
/// `patch` on `pods/status`.
pub async fn report_handover(
    client: &Client,
    namespace: &str,
    pod: &str,
    outcome: HandoverOutcome,
    report: &HandoverReport,
) -> Result<(), ClusterError> {
    report_handover_at(client, namespace, pod, outcome, report, now_in_seconds()).await
}

/// [`report_handover`] stamped `at`.
pub async fn report_handover_at(
    client: &Client,
    namespace: &str,
    pod: &str,
    outcome: HandoverOutcome,
    report: &HandoverReport,
    at: Time,
) -> Result<(), ClusterError> {
    let condition = handover_condition_at(outcome, report, at)?;
    let mut conditions = vec![condition];
    if outcome == HandoverOutcome::Committed {
        // The committed agent serves now: say so in the Started condition
        // too, in the same write. The Handover condition is overwritten by
        // the next handover's report, a failed one included, and the
        // operator must still see that this agent is the ready one.
        conditions.push(started_condition(report.slot, &report.version)?);
    }
    patch_conditions(client, namespace, pod, &conditions).await?;
    tracing::info!(pod, ?outcome, version = %report.version, "handover reported on the pod");
    Ok(())
}

/// Rewrites the Committed [`CONDITION_HANDOVER`] condition during a soak
/// with `report`'s updated datapath window, keeping `at` (the commit's
/// time) as its `lastTransitionTime`. The Started condition is left alone.
pub async fn report_soak(
    client: &Client,
    namespace: &str,
    pod: &str,
    report: &HandoverReport,
    at: Time,
) -> Result<(), ClusterError> {
    let c = handover_condition_at(HandoverOutcome::Committed, report, at)?;
    patch_conditions(client, namespace, pod, &[c]).await?;
    tracing::debug!(pod, "soak report written on the pod");
    Ok(())
}

/// The [`CONDITION_STARTED`] condition of the agent of `slot` at `version`,
/// stamped now. The operator counts the node ready only with this or a
/// Committed report naming the active slot and image.
pub fn started_condition(slot: Slot, version: &str) -> Result<PodCondition, ClusterError> {
    let report = StartedReport {
        slot,
        version: version.to_owned(),
        // The operator's preflight compares a new build's range with it.
        handover_protocol: Some(ProtocolRange {
            min: MIN_PROTO,
            max: PROTO,
        }),
    };
    Ok(PodCondition {
        type_: CONDITION_STARTED.into(),
        status: STATUS_TRUE.into(),
        reason: Some(REASON_STARTED.into()),
        message: Some(report.to_message().map_err(ClusterError::Encode)?),
        last_transition_time: Some(now_in_seconds()),
        ..PodCondition::default()
    })
}

/// Sets [`CONDITION_STARTED`] on pod `namespace/pod`, as [`report_handover`]
/// does its condition.
pub async fn report_started(
    client: &Client,
    namespace: &str,
    pod: &str,
    slot: Slot,
    version: &str,
) -> Result<(), ClusterError> {
    patch_conditions(client, namespace, pod, &[started_condition(slot, version)?]).await?;
    tracing::info!(pod, %slot, version, "start reported on the pod");
    Ok(())
}

/// Now, in whole seconds (how the API server stores condition times).
pub fn now_in_seconds() -> Time {
    Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now()))
}

/// Strategic merge patch of `conditions` into the pod's status: merged by
/// `type`, so the kubelet's and the other agent's conditions stay.
async fn patch_conditions(
    client: &Client,
    namespace: &str,
    pod: &str,
    conditions: &[PodCondition],
) -> Result<(), ClusterError> {
    let body = json!({"status": {"conditions": conditions}});
    Api::<Pod>::namespaced(client.clone(), namespace)
        .patch_status(pod, &PatchParams::default(), &Patch::Strategic(&body))
        .await
        .map_err(|source| ClusterError::Api {
            what: format!("patching the status of pod {namespace}/{pod}"),
            source,
        })?;
    Ok(())
}

/// The handover condition of `pod`, its outcome (`None` while neither
/// Committed nor Failed) and its parsed message (`None` if unreadable).
pub fn read_report(
    pod: &Pod,
) -> Option<(
    &PodCondition,
    Option<HandoverOutcome>,
    Option<HandoverReport>,
)> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == CONDITION_HANDOVER)?;
    let outcome = HandoverOutcome::from_condition(&c.status, c.reason.as_deref());
    let report = c
        .message
        .as_deref()
        .and_then(|m| HandoverReport::from_message(m).ok());
    Some((c, outcome, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> HandoverReport {
        HandoverReport {
            slot: Slot::B,
            version: "agent:v2".into(),
            duration_ms: 41,
            freeze_ms: 3,
            maps_reused: 5,
            maps_migrated: 1,
            entries_copied: 100_000,
            message: "ok".into(),
            datapath: None,
        }
    }

    #[test]
    fn message_has_exactly_the_documented_keys() {
        let c = handover_condition(HandoverOutcome::Committed, &report()).expect("condition");
        let msg: serde_json::Value =
            serde_json::from_str(c.message.as_deref().expect("message")).expect("JSON");
        assert_eq!(
            msg,
            json!({"slot": "b", "version": "agent:v2", "durationMs": 41, "freezeMs": 3,
                   "mapsReused": 5, "mapsMigrated": 1, "entriesCopied": 100000,
                   "message": "ok"})
        );
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref()),
            ("True", Some("Committed"))
        );
        let at = c.last_transition_time.expect("time").0;
        assert_eq!(at.subsec_nanosecond(), 0, "whole seconds");
    }

    #[test]
    fn started_says_the_protocol_range_and_a_soak_keeps_the_commit_time() {
        let c = started_condition(Slot::A, "agent:v1").expect("condition");
        let s = StartedReport::from_message(c.message.as_deref().expect("message"))
            .expect("a start report");
        assert_eq!(
            s.handover_protocol,
            Some(ProtocolRange {
                min: MIN_PROTO,
                max: PROTO
            })
        );
        let at = Time(Timestamp::from_second(1_700_000_000).expect("time"));
        let c = handover_condition_at(HandoverOutcome::Committed, &report(), at.clone())
            .expect("condition");
        assert_eq!(c.last_transition_time, Some(at));
    }

    #[test]
    fn failure_reads_back() {
        let c = handover_condition(HandoverOutcome::Failed, &report()).expect("condition");
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref()),
            ("False", Some("Failed"))
        );
        let pod: Pod = serde_json::from_value(json!({"status": {"conditions": [
            {"type": "Ready", "status": "True"}, c]}}))
        .expect("pod");
        let (_, outcome, parsed) = read_report(&pod).expect("condition present");
        assert_eq!(outcome, Some(HandoverOutcome::Failed));
        assert_eq!(parsed, Some(report()));
    }
}
