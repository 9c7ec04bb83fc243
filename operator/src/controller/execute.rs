//! Carries out planner actions against the API server.

use baton_api::pairpod::{Slot, ANN_ACTIVE_SLOT, ANN_HANDOVER_STARTED, ANN_SOAK_SECONDS};
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder};
use serde_json::{json, Value};

use super::expect::{Expectation, PodExpectation};
use super::podspec::{build_pod, pod_name, PodTarget};
use super::preflight::{preflight_pod, preflight_pod_name};
use crate::crd::KmeshUpgradeSpec;
use crate::plan::{Action, FailureCause};

/// A failed API call of one action.
#[derive(Debug, thiserror::Error)]
#[error("{action} on node {node}: {source}")]
pub struct ExecuteError {
    /// The action's kind.
    pub action: &'static str,
    /// The node it concerned.
    pub node: String,
    /// The API error.
    #[source]
    pub source: kube::Error,
}

/// What one executor needs to act for one `KmeshUpgrade`.
pub struct Executor<'a> {
    /// Pods in the upgrade's namespace.
    pub pods: Api<Pod>,
    /// The upgrade's spec.
    pub spec: &'a KmeshUpgradeSpec,
    /// Identity for new pods.
    pub target: PodTarget<'a>,
    /// Event sink.
    pub recorder: &'a Recorder,
    /// The upgrade, as events' subject.
    pub reference: ObjectReference,
}

/// Short stable name of an action kind (metrics label, error context).
pub fn kind(action: &Action) -> &'static str {
    match action {
        Action::CreatePod { .. } => "create_pod",
        Action::DeletePod { .. } => "delete_pod",
        Action::StartUpgrade { .. } => "start_upgrade",
        Action::StartRollback { .. } => "start_rollback",
        Action::FinishUpgrade { .. } => "finish_upgrade",
        Action::MarkFailed { .. } => "mark_failed",
        Action::ResetStandby { .. } => "reset_standby",
        Action::RunPreflight { .. } => "run_preflight",
        Action::DeletePreflight { .. } => "delete_preflight",
    }
}

/// Logs an action at info level: what the operator does to which node, slot and image.
fn log(action: &Action, pod: &str) {
    match action {
        Action::CreatePod { node, image } => {
            tracing::info!(node, pod, image, "creating the agent pod")
        }
        Action::DeletePod { node } => {
            tracing::info!(node, pod, "deleting the agent pod: node not selected")
        }
        Action::StartUpgrade {
            node,
            slot,
            image,
            warm,
            ..
        }
        | Action::StartRollback {
            node,
            slot,
            image,
            warm,
        } => tracing::info!(
            node,
            pod,
            slot = %slot,
            image,
            warm,
            rollback = matches!(action, Action::StartRollback { .. }),
            "starting a handover ({})",
            if *warm {
                "waking the warm standby: annotations only"
            } else {
                "patching the slot's image"
            }
        ),
        Action::FinishUpgrade {
            node,
            active,
            retired,
        } => tracing::info!(node, pod, active = %active, standby = %retired,
            "handover committed: flipping the active slot"),
        Action::MarkFailed {
            node,
            image,
            reason,
            cause,
        } => tracing::info!(
            node,
            pod,
            image,
            reason,
            ?cause,
            "recording a failure of the image"
        ),
        Action::ResetStandby { node, slot } => {
            tracing::info!(node, pod, slot = %slot, "parking the failed slot on the empty image")
        }
        Action::RunPreflight { node, image } => {
            tracing::info!(node, image, "starting a preflight check pod")
        }
        Action::DeletePreflight { node, pod } => {
            tracing::info!(node, pod, "deleting a preflight check pod")
        }
    }
}

impl Executor<'_> {
    /// Runs one action; returns what the pod store must show before the next plan.
    pub async fn run(&self, action: &Action) -> Result<Option<PodExpectation>, ExecuteError> {
        let node = action.node();
        let pod = pod_name(self.target.upgrade, node);
        let fail = |source: kube::Error| {
            tracing::warn!(action = kind(action), node, pod = %pod, error = %source, "action failed");
            ExecuteError {
                action: kind(action),
                node: node.to_owned(),
                source,
            }
        };
        log(action, &pod);
        let expectation = match action {
            Action::CreatePod { image, .. } => {
                let body = build_pod(&self.target, node, self.spec, image);
                match self.pods.create(&PostParams::default(), &body).await {
                    Ok(_) => {}
                    // Created by a previous round whose watch event is still on its way.
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => return Err(fail(e)),
                }
                self.event(
                    &pod,
                    EventType::Normal,
                    "PodCreated",
                    "Create",
                    format!("agent pod {pod} on {node} with {image}"),
                )
                .await;
                Some(Expectation::Exists)
            }
            Action::DeletePod { .. } => {
                match self.pods.delete(&pod, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(fail(e)),
                }
                self.event(
                    &pod,
                    EventType::Normal,
                    "PodDeleted",
                    "Delete",
                    format!("node {node} is no longer selected"),
                )
                .await;
                Some(Expectation::Gone)
            }
            Action::StartUpgrade {
                slot, image, warm, ..
            }
            | Action::StartRollback {
                slot, image, warm, ..
            } => {
                // Whole seconds, like the condition times it is compared with.
                let started = Timestamp::from_second(Timestamp::now().as_second())
                    .map(|t| t.to_string())
                    .unwrap_or_else(|_| Timestamp::now().to_string());
                let soak = match action {
                    Action::StartUpgrade { soak_seconds, .. } => *soak_seconds,
                    _ => 0,
                };
                // The new agent reads it at its start: only a canary soaks.
                let annotations =
                    json!({ANN_HANDOVER_STARTED: started, ANN_SOAK_SECONDS: soak.to_string()});
                let rv = if *warm {
                    // The standby runs `image` already: annotations only, the
                    // container is not restarted (no kubelet back-off).
                    self.annotate(&pod, *slot, image, annotations).await
                } else {
                    self.patch(&pod, *slot, image, annotations).await
                }
                .map_err(fail)?;
                // A rollback is news; a routine start is not: the status
                // shows the node upgrading, and `HandoverCommitted` follows.
                // One event per node upgrade keeps it at 3 API writes.
                if matches!(action, Action::StartRollback { .. }) {
                    self.event(
                        &pod,
                        EventType::Normal,
                        "RollbackStarted",
                        "Rollback",
                        format!("{node}: slot {slot} takes over with {image}"),
                    )
                    .await;
                }
                Some(rv)
            }
            Action::FinishUpgrade {
                active, retired, ..
            } => {
                // The retired slot keeps its image and annotation: its agent
                // stays as a warm standby. Parking it on the empty image would
                // restart its container, and the kubelet's crash-loop back-off
                // (keyed by container name and image) would then delay the
                // next handover back to that image by 10 s, 20 s, ... 5 min.
                let body = json!({"metadata": {"annotations": {
                    ANN_ACTIVE_SLOT: active.to_string(),
                    ANN_HANDOVER_STARTED: null,
                }}});
                let rv = self.apply(&pod, &body).await.map_err(fail)?;
                self.event(
                    &pod,
                    EventType::Normal,
                    "HandoverCommitted",
                    "Commit",
                    format!(
                        "{node}: slot {active} is active, slot {retired} stays as warm standby"
                    ),
                )
                .await;
                Some(rv)
            }
            Action::ResetStandby { slot, .. } => {
                let rv = self
                    .patch(
                        &pod,
                        *slot,
                        &self.spec.empty_image,
                        json!({ANN_HANDOVER_STARTED: null}),
                    )
                    .await
                    .map_err(fail)?;
                self.event(
                    &pod,
                    EventType::Normal,
                    "StandbyReset",
                    "Reset",
                    format!("{node}: slot {slot} parked again"),
                )
                .await;
                Some(rv)
            }
            Action::RunPreflight { image, .. } => {
                let body = preflight_pod(&self.target, node, self.spec, image);
                let name = preflight_pod_name(self.target.upgrade, node, image);
                match self.pods.create(&PostParams::default(), &body).await {
                    Ok(_) => {}
                    // Created by a previous round whose watch event is still on its way.
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => return Err(fail(e)),
                }
                return Ok(Some((name, Expectation::Exists)));
            }
            Action::DeletePreflight { pod: check, .. } => {
                match self.pods.delete(check, &DeleteParams::background()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(fail(e)),
                }
                return Ok(Some((check.clone(), Expectation::Gone)));
            }
            Action::MarkFailed {
                image,
                reason,
                cause,
                ..
            } => {
                tracing::warn!(node, pod = %pod, image = %image, %reason, ?cause, "image failed");
                let note = match cause {
                    FailureCause::Handover => {
                        format!("{node}: handover to {image} failed: {reason}")
                    }
                    _ => format!("{node}: {reason}"),
                };
                self.event(
                    &pod,
                    EventType::Warning,
                    cause.event_reason(),
                    "Upgrade",
                    note,
                )
                .await;
                None
            }
        };
        Ok(expectation.map(|e| (pod, e)))
    }

    /// Puts `image` into `slot` and records it in the slot's version annotation,
    /// in one request so the downward API never disagrees with the image.
    async fn patch(
        &self,
        pod: &str,
        slot: Slot,
        image: &str,
        mut annotations: Value,
    ) -> Result<Expectation, kube::Error> {
        annotations[slot.version_annotation()] = json!(image);
        let body = json!({
            "metadata": {"annotations": annotations},
            "spec": {"containers": [{"name": slot.container(), "image": image}]},
        });
        self.apply(pod, &body).await
    }

    /// Writes `annotations` and the slot's version annotation (`image`, which
    /// the slot already runs) without touching the container.
    async fn annotate(
        &self,
        pod: &str,
        slot: Slot,
        image: &str,
        mut annotations: Value,
    ) -> Result<Expectation, kube::Error> {
        annotations[slot.version_annotation()] = json!(image);
        self.apply(pod, &json!({"metadata": {"annotations": annotations}}))
            .await
    }

    /// One strategic-merge patch of the pod.
    async fn apply(&self, pod: &str, body: &Value) -> Result<Expectation, kube::Error> {
        let patched = self
            .pods
            .patch(pod, &PatchParams::default(), &Patch::Strategic(body))
            .await?;
        Ok(Expectation::from_resource_version(
            patched.metadata.resource_version.as_deref(),
        ))
    }

    /// Tells that the kubelet holds node `node`'s new slot back (a Warning
    /// event; the node status carries the same text). The caller publishes
    /// only when the text changed, so one back-off is one event.
    pub async fn kubelet_wait(&self, node: &str, message: &str) {
        let pod = pod_name(self.target.upgrade, node);
        tracing::warn!(node, pod = %pod, message, "kubelet holds the new agent back");
        self.event(
            &pod,
            EventType::Warning,
            "KubeletWaiting",
            "Upgrade",
            format!("{node}: {message}"),
        )
        .await;
    }

    /// Publishes a preflight or canary result of `node` (an event naming
    /// the node's agent pod).
    pub async fn gate_event(&self, node: &str, warning: bool, reason: &str, note: String) {
        let pod = pod_name(self.target.upgrade, node);
        let type_ = if warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        self.event(&pod, type_, reason, "Upgrade", note).await;
    }

    /// Publishes an event about the upgrade with the node's agent `pod` as its
    /// related object. The recorder folds events with the same key (type,
    /// reason, action, regarding, related) into one series that keeps the
    /// first note; without the pod in the key, every node's
    /// `HandoverCommitted` or `HandoverFailed` of a round became one event
    /// naming the first node (the controller also uses a recorder per round,
    /// see `reconcile`).
    async fn event(&self, pod: &str, type_: EventType, reason: &str, action: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.to_owned()),
                namespace: self.reference.namespace.clone(),
                ..ObjectReference::default()
            }),
        };
        // Events are best effort: a lost event must not fail the rollout.
        if let Err(e) = self.recorder.publish(&event, &self.reference).await {
            tracing::warn!(reason, error = %e, "publishing event failed");
        }
    }
}
