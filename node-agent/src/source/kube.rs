//! The Kubernetes source: Services and EndpointSlices (discovery.k8s.io/v1),
//! cluster-wide or in one namespace, cached by reflectors on a tokio runtime
//! in a background thread. `poll` (synchronous, from the agent's loop) builds
//! the desired state from the caches when they changed and returns it only
//! when it differs from the last. The watches wake the agent's source thread
//! on the first change after a build ([`Notify`]); the build waits `coalesce`
//! after that change (so a burst is one build). Builds are rate-limited by a
//! token bucket: a few at once after a quiet time, then one per
//! `min_build_interval` while the cluster churns, or fewer when builds are
//! costly (see [`KubeOptions::build_cost_factor`]).
//! Builds are incremental: only the Services the watches saw change are
//! rebuilt (`incremental.rs`).
//! Mapping rules: `build.rs` and docs/kubernetes-source.md.

mod build;
mod incremental;
mod topology;
mod watch;

pub use build::{build, Built, SERVICE_NAME_LABEL};
pub use incremental::{Changes, Dirty, Incremental, Tracker};
pub use topology::{Locality, Preference};

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use tokio::sync::oneshot;

use super::{Notify, SourceError};
use crate::cluster::{connect, ClusterError};
use crate::model::{Capacity, DesiredState, Invalid, Validator};
use watch::{Progress, Writers};

/// Settings of the Kubernetes source.
#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// API server access; `None` infers it (the pod's service account in a
    /// cluster, else `KUBECONFIG` / `~/.kube/config`).
    pub config: Option<kube::Config>,
    /// Watch only this namespace; `None` watches every namespace.
    pub namespace: Option<String>,
    /// Where the agent runs (node from `NODE_NAME`), for topology-aware Services.
    pub locality: Locality,
    /// How long a build waits after the first change since the last one,
    /// so that the changes of one update (a Service and its slices, a
    /// rollout step) make one build.
    pub coalesce: Duration,
    /// Time between two builds while the cluster churns (after a quiet
    /// time, up to [`BUILD_BURST`] builds go at once).
    pub min_build_interval: Duration,
    /// While the cluster churns, builds are also at least this many times
    /// the last build's duration apart: the source spends at most about
    /// 1/factor of a CPU building, however large the cluster.
    pub build_cost_factor: u32,
    /// The cost-based spacing never exceeds this (a build's wall time
    /// includes waiting for a busy CPU, which would otherwise feed back).
    pub max_build_interval: Duration,
}

impl Default for KubeOptions {
    fn default() -> Self {
        Self {
            config: None,
            namespace: None,
            locality: Locality::default(),
            coalesce: Duration::from_millis(10),
            min_build_interval: Duration::from_millis(80),
            build_cost_factor: 8,
            max_build_interval: Duration::from_millis(250),
        }
    }
}

/// Builds that may follow each other without spacing after a quiet time
/// (the token bucket's size).
pub const BUILD_BURST: f64 = 4.0;

/// Desired state from the cluster's Services and EndpointSlices.
pub struct KubeSource {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    progress: Arc<Progress>,
    options: KubeOptions,
    seen: Seen,
    /// Every Service's part of the state, rebuilt only for the Services that changed.
    incremental: Incremental,
    /// Checks only the services that changed on their own.
    validator: Validator,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// What `poll` last looked at and returned.
#[derive(Default)]
struct Seen {
    /// `Progress::changes` at the last build.
    changes: Option<u64>,
    /// `Progress::error` count already reported.
    errors: u64,
    at: Option<Instant>,
    /// Builds allowed now (token bucket, refilled one per spacing since `at`).
    tokens: f64,
    /// How long the last build took (the state's build and check).
    cost: Duration,
    /// A change waits until then (coalescing, spacing): poll again at that time.
    retry: Option<Instant>,
    /// The capacity the last state returned (valid or not) was checked against; `None`
    /// before the first. The state itself is not kept: the incremental build says whether
    /// it changed, which at 10 000 Services is much cheaper than comparing two states.
    last: Option<Capacity>,
    notes: Vec<String>,
    /// Return the next build even if unchanged: an error was reported since.
    force: bool,
}

impl KubeSource {
    /// Connects (see [`KubeOptions::config`]) and starts watching in a
    /// background thread. Fails when there is no usable configuration; API
    /// errors after that (unreachable, forbidden) come back from `poll`.
    pub fn start(options: KubeOptions) -> Result<Self, ClusterError> {
        let (services, services_writer) = reflector::store();
        let (slices, slices_writer) = reflector::store();
        let writers = Writers {
            services: services_writer,
            slices: slices_writer,
        };
        let progress = Arc::new(Progress::default());
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = oneshot::channel();
        let (config, namespace) = (options.config.clone(), options.namespace.clone());
        let p = Arc::clone(&progress);
        let thread = std::thread::Builder::new()
            .name("baton-kube".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = started_tx.send(Err(ClusterError::Runtime(e)));
                        return;
                    }
                };
                rt.block_on(async {
                    let client = match connect(config).await {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = started_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = started_tx.send(Ok(()));
                    watch::run(client, namespace, writers, &p, stop_rx).await;
                });
                p.fail("the kubernetes watch thread stopped".into());
            })
            .map_err(ClusterError::Runtime)?;
        let started = started_rx.recv().unwrap_or_else(|_| {
            Err(ClusterError::Runtime(std::io::Error::other(
                "the kubernetes watch thread ended during startup",
            )))
        });
        if let Err(e) = started {
            let _ = thread.join();
            return Err(e);
        }
        tracing::info!(namespace = ?options.namespace, node = ?options.locality.node,
                       "watching kubernetes services and endpoint slices");
        Ok(Self {
            services,
            slices,
            progress,
            options,
            seen: Seen::default(),
            incremental: Incremental::default(),
            validator: Validator::new(),
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Whether both caches hold a complete first listing.
    pub fn synced(&self) -> bool {
        self.progress.ready()
    }

    /// The new desired state when the cluster changed it since the last call
    /// (the first once both caches are listed); `None` when unchanged, not yet
    /// listed, or still waiting (see [`KubeSource::poll_again_in`]). A watch error
    /// is returned once per error; the state is returned again after recovery.
    pub fn poll(&mut self, cap: &Capacity) -> Option<Result<DesiredState, SourceError>> {
        self.seen.retry = None;
        let (errors, error) = self.progress.error();
        if errors != self.seen.errors {
            self.seen.errors = errors;
            if let Some(message) = error {
                self.seen.force = true;
                return Some(Err(SourceError::Cluster { message }));
            }
        }
        if !self.progress.ready() {
            // The listing that completes it notifies.
            self.progress.clear_pending();
            if !self.progress.ready() {
                return None;
            }
        }
        if self.seen.changes == Some(self.progress.changes()) && !self.capacity_changed(cap) {
            // Nothing new: the next change notifies. Cleared before the
            // second look, so a change between the two is seen or notifies.
            self.progress.clear_pending();
            if self.seen.changes == Some(self.progress.changes()) {
                return None;
            }
        }
        let now = Instant::now();
        let ready_at = self.ready_at(now);
        if ready_at > now {
            self.seen.retry = Some(ready_at);
            return None;
        }
        // Before reading `changes`: any later change notifies again.
        self.progress.clear_pending();
        self.seen.changes = Some(self.progress.changes());
        self.seen.tokens = self.tokens(now) - 1.0;
        self.seen.at = Some(now);
        let changes = self.progress.take_changes();
        let changed = self.incremental.update(
            &changes,
            &self.services,
            &self.slices,
            &self.options.locality,
        );
        let unchanged = !changed && self.seen.last.as_ref() == Some(cap);
        if unchanged && !self.seen.force {
            return None;
        }
        let built = self.incremental.built();
        self.note(built.notes);
        let state = built.state;
        self.seen.force = false;
        let invalid = self.validator.validate(&state, cap);
        self.seen.cost = now.elapsed();
        self.seen.last = Some(*cap);
        if invalid.is_empty() {
            return Some(Ok(state));
        }
        Some(Err(SourceError::Cluster {
            message: describe_invalid(&state, &invalid),
        }))
    }

    /// When the pending change may be built: `coalesce` after the first
    /// change since the last build, and far enough from the last build.
    fn ready_at(&self, now: Instant) -> Instant {
        let first = self
            .progress
            .pending_since()
            .map_or(now, |t| t + self.options.coalesce);
        let missing = 1.0 - self.tokens(now);
        if missing <= 0.0 {
            return first;
        }
        first.max(now + self.spacing().mul_f64(missing))
    }

    /// Builds allowed at `now`.
    fn tokens(&self, now: Instant) -> f64 {
        match self.seen.at {
            None => BUILD_BURST,
            Some(at) => {
                let refill = now.saturating_duration_since(at).as_secs_f64()
                    / self.spacing().as_secs_f64().max(1e-6);
                (self.seen.tokens + refill).min(BUILD_BURST)
            }
        }
    }

    /// One build per this while the cluster churns.
    fn spacing(&self) -> Duration {
        let o = &self.options;
        let by_cost = self
            .seen
            .cost
            .saturating_mul(o.build_cost_factor)
            .min(o.max_build_interval);
        o.min_build_interval.max(by_cost)
    }

    /// Wakes `n` when the watches see a change (the first since the last build).
    pub fn set_notify(&mut self, n: Notify) {
        self.progress.set_notify(n);
    }

    /// After a `poll` that returned `None` with a change waiting: when to poll again.
    pub fn poll_again_in(&self) -> Option<Duration> {
        self.seen
            .retry
            .map(|t| t.saturating_duration_since(Instant::now()))
    }

    fn capacity_changed(&self, cap: &Capacity) -> bool {
        self.seen.last.as_ref().is_some_and(|c| c != cap)
    }

    /// Logs what the state leaves out, once per distinct note.
    fn note(&mut self, notes: Vec<String>) {
        for n in notes.iter().filter(|n| !self.seen.notes.contains(n)) {
            tracing::warn!("kubernetes source: {n}");
        }
        self.seen.notes = notes;
    }

    /// `kubernetes` or `kubernetes:namespace=<ns>`.
    pub fn describe(&self) -> String {
        match &self.options.namespace {
            Some(ns) => format!("kubernetes:namespace={ns}"),
            None => "kubernetes".into(),
        }
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("options", &self.options)
            .field("synced", &self.synced())
            .finish_non_exhaustive()
    }
}

/// Validation problems with the service named instead of its index
/// (`ns/web: endpoints[3].address: …`).
fn describe_invalid(state: &DesiredState, invalid: &[Invalid]) -> String {
    invalid
        .iter()
        .map(|i| {
            let named = i.path.strip_prefix("services[").and_then(|rest| {
                let (idx, field) = rest.split_once(']')?;
                let svc = state.services.get(idx.parse::<usize>().ok()?)?;
                Some(match field.strip_prefix('.') {
                    Some(field) => format!("{}: {field}", svc.name),
                    None => svc.name.clone(),
                })
            });
            format!("{}: {}", named.unwrap_or_else(|| i.path.clone()), i.reason)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ServiceSpec;

    #[test]
    fn invalid_paths_name_the_service() {
        let state = DesiredState {
            services: vec![std::sync::Arc::new(ServiceSpec {
                name: "ns/web".into(),
                vips: vec![],
                ports: vec![],
                policy: baton_ebpf::LbPolicy::Random,
                endpoints: vec![],
            })],
        };
        let invalid = [
            Invalid {
                path: "services[0].endpoints[2].address".into(),
                reason: "bad".into(),
            },
            Invalid {
                path: "services[0]".into(),
                reason: "whole".into(),
            },
            Invalid {
                path: "services".into(),
                reason: "3 endpoints exceed the map capacity of 2".into(),
            },
        ];
        assert_eq!(
            describe_invalid(&state, &invalid),
            "ns/web: endpoints[2].address: bad; ns/web: whole; \
             services: 3 endpoints exceed the map capacity of 2"
        );
    }
}
