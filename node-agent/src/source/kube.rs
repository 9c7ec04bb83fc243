//! The Kubernetes source: Services and EndpointSlices (discovery.k8s.io/v1),
//! cluster-wide or in one namespace, cached by reflectors on a tokio runtime
//! in a background thread. `poll` (synchronous, from the agent's loop) builds
//! the desired state from the caches when they changed, at most once per
//! `min_build_interval`, and returns it only when it differs from the last.
//! Builds are incremental: only the Services the watches saw change are
//! rebuilt (`incremental.rs`).
//! Mapping rules: `build.rs` and docs/kubernetes-source.md.

mod build;
mod incremental;
mod topology;
mod watch;

pub use build::{build, Built, SERVICE_NAME_LABEL};
pub use incremental::{Dirty, Incremental};
pub use topology::{Locality, Preference};

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use tokio::sync::oneshot;

use super::SourceError;
use crate::cluster::{connect, ClusterError};
use crate::model::{Capacity, DesiredState, Invalid};
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
    /// Minimum time between two builds while the cluster churns.
    pub min_build_interval: Duration,
}

impl Default for KubeOptions {
    fn default() -> Self {
        Self {
            config: None,
            namespace: None,
            locality: Locality::default(),
            min_build_interval: Duration::from_millis(100),
        }
    }
}

/// Desired state from the cluster's Services and EndpointSlices.
pub struct KubeSource {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    progress: Arc<Progress>,
    options: KubeOptions,
    seen: Seen,
    /// Every Service's part of the state, rebuilt only for the Services that changed.
    incremental: Incremental,
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
    /// listed, or within `min_build_interval` of the last build. A watch error
    /// is returned once per error; the state is returned again after recovery.
    pub fn poll(&mut self, cap: &Capacity) -> Option<Result<DesiredState, SourceError>> {
        let (errors, error) = self.progress.error();
        if errors != self.seen.errors {
            self.seen.errors = errors;
            if let Some(message) = error {
                self.seen.force = true;
                return Some(Err(SourceError::Cluster { message }));
            }
        }
        if !self.progress.ready() {
            return None;
        }
        let changes = self.progress.changes();
        if self.seen.changes == Some(changes) && !self.capacity_changed(cap) {
            return None;
        }
        if self
            .seen
            .at
            .is_some_and(|t| t.elapsed() < self.options.min_build_interval)
        {
            return None;
        }
        self.seen.changes = Some(changes);
        self.seen.at = Some(Instant::now());
        let dirty = self.progress.take_dirty();
        let changed =
            self.incremental
                .update(&dirty, &self.services, &self.slices, &self.options.locality);
        let unchanged = !changed && self.seen.last.as_ref() == Some(cap);
        if unchanged && !self.seen.force {
            return None;
        }
        let built = self.incremental.built();
        self.note(built.notes);
        let state = built.state;
        self.seen.force = false;
        let invalid = state.validate(cap);
        self.seen.last = Some(*cap);
        if invalid.is_empty() {
            return Some(Ok(state));
        }
        Some(Err(SourceError::Cluster {
            message: describe_invalid(&state, &invalid),
        }))
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
            services: vec![ServiceSpec {
                name: "ns/web".into(),
                vips: vec![],
                ports: vec![],
                policy: baton_ebpf::LbPolicy::Random,
                endpoints: vec![],
            }],
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
