//! The `KmeshUpgrade` controller: observes nodes and agent pods, asks the
//! planner what to do, does it, and writes the status.

mod execute;
mod expect;
mod fleet;
pub mod observe;
pub mod podspec;
pub mod preflight;
mod status;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use baton_api::pairpod::{APP_NAME, LABEL_APP_NAME};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action as Requeue, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::crd::KmeshUpgrade;
use crate::metrics::{ActionLabels, Metrics, UpgradeLabels};
use crate::plan::{plan, Memory, PlanError};
use execute::{ExecuteError, Executor};
use expect::Expectations;
use podspec::PodTarget;

/// Field manager of the operator's status writes.
pub const FIELD_MANAGER: &str = "baton-operator";

/// Operator settings that are not part of any `KmeshUpgrade`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Service account the agent pods run as (must exist in each upgrade's namespace).
    pub agent_service_account: String,
    /// Identity in events (usually the operator pod's name).
    pub instance: String,
    /// Re-plan this often while handovers run, to notice timeouts.
    pub in_flight_poll: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            agent_service_account: "baton-agent".into(),
            instance: "baton-operator".into(),
            in_flight_poll: Duration::from_secs(2),
        }
    }
}

/// Why the controller could not run.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The CRD is not installed (or not readable with our RBAC).
    #[error("cannot list KmeshUpgrades; is crds/kmeshupgrade.yaml installed? {0}")]
    CrdNotServed(#[source] kube::Error),
}

/// Why one reconcile failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The object has no namespace (the CRD is namespaced, so a bug elsewhere).
    #[error("KmeshUpgrade {0} has no namespace")]
    NoNamespace(String),
    /// The object has no uid yet, so pods cannot name it as their owner.
    #[error("KmeshUpgrade {0} has no uid")]
    NoUid(String),
    /// The planner refused the input.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// An action failed.
    #[error(transparent)]
    Execute(#[from] ExecuteError),
    /// Writing the status failed.
    #[error("writing status: {0}")]
    Status(#[source] kube::Error),
}

struct Context {
    client: Client,
    nodes: Store<Node>,
    pods: Store<Pod>,
    settings: Settings,
    reporter: Reporter,
    metrics: Arc<Metrics>,
    expectations: Expectations,
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), ControllerError> {
    let upgrades: Api<KmeshUpgrade> = Api::all(client.clone());
    upgrades
        .list(&ListParams::default().limit(1))
        .await
        .map_err(ControllerError::CrdNotServed)?;
    let pod_api: Api<Pod> = Api::all(client.clone());
    let node_api: Api<Node> = Api::all(client.clone());
    let pod_watch = watcher::Config::default().labels(&format!("{LABEL_APP_NAME}={APP_NAME}"));

    // Caches the planner reads; the controller's own watches only trigger.
    let (pods, pod_writer) = reflector::store();
    let (nodes, node_writer) = reflector::store();
    let pod_cache = reflector::reflector(pod_writer, watcher(pod_api.clone(), pod_watch.clone()))
        .default_backoff()
        .for_each(|_| std::future::ready(()));
    let node_cache = reflector::reflector(
        node_writer,
        watcher(node_api.clone(), watcher::Config::default()),
    )
    .default_backoff()
    .for_each(|_| std::future::ready(()));

    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: Some(settings.instance.clone()),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        nodes: nodes.clone(),
        pods: pods.clone(),
        settings,
        reporter,
        metrics,
        expectations: Expectations::default(),
    });

    let controller = Controller::new(upgrades, watcher::Config::default())
        .with_config(controller::Config::default().debounce(Duration::from_millis(300)));
    let all_upgrades = controller.store();
    let controller = controller
        .owns(pod_api, pod_watch)
        // Any node change may change the selection of any upgrade.
        .watches(node_api, watcher::Config::default(), move |_node| {
            all_upgrades
                .state()
                .into_iter()
                .map(|u| ObjectRef::from_obj(&*u))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown);

    let stores_ready = async {
        // Planning on half-filled caches would create pods that exist already.
        let _ = futures::join!(pods.wait_until_ready(), nodes.wait_until_ready());
    };
    let run = async move {
        stores_ready.await;
        controller
            .run(reconcile, error_policy, ctx)
            .for_each(|result| async move {
                match result {
                    Ok((obj, _)) => tracing::debug!(upgrade = %obj, "reconciled"),
                    Err(e) => tracing::warn!(error = %e, "reconcile failed"),
                }
            })
            .await;
    };
    tokio::select! {
        _ = run => {}
        _ = pod_cache => tracing::error!("pod watch ended"),
        _ = node_cache => tracing::error!("node watch ended"),
    }
    Ok(())
}

/// Events for preflight and canary news: a node's check of the spec's image
/// passed, the canary started soaking or passed (failures have their own
/// event with the failure). Compared with the previous status, so each is
/// published once.
async fn gate_events(
    executor: &Executor<'_>,
    plan: &crate::plan::Plan,
    checks: &std::collections::HashMap<String, crate::crd::NodePreflight>,
    previous: Option<&crate::crd::KmeshUpgradeStatus>,
) {
    use crate::crd::{CanaryPhase, PreflightResult};
    let old_nodes = previous.into_iter().flat_map(|s| &s.node_statuses);
    let old_check = |node: &str| {
        old_nodes
            .clone()
            .find(|n| n.node == node)
            .and_then(|n| n.preflight.as_ref())
            .map(|p| (p.image.as_str(), p.result))
    };
    for (node, check) in checks {
        if check.result == PreflightResult::Passed
            && old_check(node) != Some((check.image.as_str(), PreflightResult::Passed))
        {
            let note = format!(
                "{node}: {} passed preflight ({} maps reused, {} migrated, {} entries to copy, ~{} ms)",
                check.image,
                check.maps_reused,
                check.maps_migrated,
                check.entries_to_copy,
                check.estimated_copy_ms
            );
            executor
                .gate_event(node, false, "PreflightPassed", note)
                .await;
        }
    }
    let Some(c) = &plan.canary else { return };
    let before = previous
        .and_then(|s| s.canary.as_ref())
        .filter(|o| o.image == c.image)
        .map(|o| o.phase);
    let node = c.nodes.first().map(String::as_str).unwrap_or_default();
    let (reason, note) = match c.phase {
        CanaryPhase::Soaking => (
            "CanarySoaking",
            format!("{} soaks on {}", c.image, c.nodes.join(", ")),
        ),
        CanaryPhase::Passed => (
            "CanaryPassed",
            format!("{} passed its canary on {}", c.image, c.nodes.join(", ")),
        ),
        CanaryPhase::Upgrading | CanaryPhase::Failed => return,
    };
    if before != Some(c.phase) {
        executor.gate_event(node, false, reason, note).await;
    }
}

fn error_policy(upgrade: Arc<KmeshUpgrade>, error: &ReconcileError, ctx: Arc<Context>) -> Requeue {
    ctx.metrics.reconcile_errors.inc();
    tracing::warn!(upgrade = %upgrade.name_any(), %error, "reconcile failed; retrying");
    Requeue::requeue(Duration::from_secs(5))
}

async fn reconcile(
    upgrade: Arc<KmeshUpgrade>,
    ctx: Arc<Context>,
) -> Result<Requeue, ReconcileError> {
    let name = upgrade.name_any();
    let namespace = upgrade
        .namespace()
        .ok_or_else(|| ReconcileError::NoNamespace(name.clone()))?;
    let key = format!("{namespace}/{name}");
    if upgrade.metadata.deletion_timestamp.is_some() {
        // Being deleted (the chart's pre-delete hook uses foreground
        // propagation): the garbage collector removes the pods, and their
        // agents tear the datapath down on SIGTERM because their owner is
        // going. Creating pods now would bring up a datapath nobody removes.
        tracing::info!(upgrade = %key, "KmeshUpgrade is being deleted; not acting on it");
        return Ok(Requeue::await_change());
    }
    let find_pod = |pod: &str| ctx.pods.get(&ObjectRef::new(pod).within(&namespace));
    if !ctx.expectations.satisfied(&key, find_pod) {
        return Ok(Requeue::requeue(Duration::from_millis(200)));
    }

    let now = Timestamp::now();
    let fleet = fleet::observe_fleet(
        &upgrade,
        &namespace,
        &ctx.nodes.state(),
        &ctx.pods.state(),
        now,
    );
    let status = upgrade.status.as_ref();
    let memory = Memory {
        stable_image: status.and_then(|s| s.stable_image.clone()),
        failed_image: status.and_then(|s| s.failed_image.clone()),
        canary_passed: status
            .and_then(|s| s.canary.as_ref())
            .filter(|c| c.phase == crate::crd::CanaryPhase::Passed)
            .map(|c| c.image.clone()),
    };
    let plan = plan(&upgrade.spec, &memory, &fleet.views)?;
    // A recorder per round: kube's recorder folds events with the same key
    // (reason, action, regarding, related; not the note) into one series that
    // keeps the first note for 6 minutes, so a later failure of another image
    // on the same node would read as the earlier one. Within a round every
    // event names its own node's pod, so nothing folds.
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());

    let executor = Executor {
        pods: Api::namespaced(ctx.client.clone(), &namespace),
        spec: &upgrade.spec,
        target: PodTarget {
            namespace: &namespace,
            upgrade: &name,
            // Pods go when their KmeshUpgrade goes. No blockOwnerDeletion, so
            // no RBAC on kmeshupgrades/finalizers is needed.
            owner: upgrade
                .controller_owner_ref(&())
                .ok_or_else(|| ReconcileError::NoUid(key.clone()))?,
            service_account: &ctx.settings.agent_service_account,
        },
        recorder: &recorder,
        reference: upgrade.object_ref(&()),
    };
    let mut expected = Vec::new();
    let mut result = Ok(());
    for action in &plan.actions {
        match executor.run(action).await {
            Ok(e) => expected.extend(e),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        ctx.metrics
            .actions
            .get_or_create(&ActionLabels {
                action: execute::kind(action).into(),
            })
            .inc();
        if let crate::plan::Action::FinishUpgrade { node, .. } = action {
            if let Some(f) = fleet.figures.get(node) {
                ctx.metrics
                    .handover_seconds
                    .observe(f.duration_ms as f64 / 1000.0);
            }
        }
    }
    // Even after a failed action, wait for what did happen to show in the cache.
    ctx.expectations.expect(&key, expected);
    result?;

    // The kubelet holding a new agent back (crash-loop back-off, image
    // errors): one event per new text, as the status shows it.
    for outcome in &plan.nodes {
        let Some(message) = outcome.message.as_deref() else {
            continue;
        };
        let before = status
            .into_iter()
            .flat_map(|s| &s.node_statuses)
            .find(|n| n.node == outcome.name)
            .and_then(|n| n.message.as_deref());
        if outcome.phase == crate::crd::NodePhase::Upgrading && before != Some(message) {
            executor.kubelet_wait(&outcome.name, message).await;
        }
    }

    gate_events(&executor, &plan, &fleet.preflights, status).await;
    let new_status = status::build_status(
        &plan,
        &status::Seen {
            figures: &fleet.figures,
            preflights: &fleet.preflights,
            desired: &upgrade.spec.agent_image,
        },
        status,
        upgrade.metadata.generation,
        now,
    );
    if status != Some(&new_status) {
        let api: Api<KmeshUpgrade> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = json!({
            "apiVersion": "baton.dev/v1alpha1",
            "kind": "KmeshUpgrade",
            "status": new_status,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(ReconcileError::Status)?;
    }
    let labels = UpgradeLabels { namespace, name };
    let gauge = |v: u32| i64::from(v);
    ctx.metrics
        .nodes
        .get_or_create(&labels)
        .set(gauge(plan.summary.nodes));
    ctx.metrics
        .updated
        .get_or_create(&labels)
        .set(gauge(plan.summary.updated));
    ctx.metrics
        .failed
        .get_or_create(&labels)
        .set(gauge(plan.summary.failed));
    ctx.metrics
        .upgrading
        .get_or_create(&labels)
        .set(gauge(plan.summary.upgrading));

    Ok(if plan.waiting {
        Requeue::requeue(ctx.settings.in_flight_poll)
    } else {
        Requeue::requeue(Duration::from_secs(300))
    })
}
