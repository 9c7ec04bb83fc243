//! The background half of the Kubernetes source: reflectors that keep the
//! Service and EndpointSlice caches and tell the polling side what happened.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::Event;
// Both the module and the function of that name.
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::oneshot;

use super::build::SERVICE_NAME_LABEL;
use super::incremental::{Changes, Tracker};
use crate::source::Notify;

/// What the watches did, read by `poll` without locking the caches.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bumped on every cache change and when a failing watch recovers.
    changes: AtomicU64,
    /// Bumped on every watch error.
    errors: AtomicU64,
    /// The latest error while the watches have not recovered from it.
    error: Mutex<Option<String>>,
    /// Services touched since the last [`Progress::take_changes`], and the slice index;
    /// marked before `changes` is bumped, after the cache holds the change.
    tracker: Mutex<Tracker>,
    services_ready: AtomicBool,
    slices_ready: AtomicBool,
    /// Since when changes wait for `poll` (set by the first change after
    /// [`Progress::clear_pending`]); the poller is notified on that first one only.
    pending: Mutex<Option<Instant>>,
    notify: Mutex<Option<Notify>>,
}

impl Progress {
    /// Number of changes so far.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Number of errors so far and the current one, if not recovered.
    pub fn error(&self) -> (u64, Option<String>) {
        let current = self.lock().clone();
        (self.errors.load(Ordering::Acquire), current)
    }

    /// Whether both caches hold a complete first listing.
    pub fn ready(&self) -> bool {
        self.services_ready.load(Ordering::Acquire) && self.slices_ready.load(Ordering::Acquire)
    }

    /// Records a failure that happens outside the watches (e.g. the thread ended).
    pub fn fail(&self, message: String) {
        *self.lock() = Some(message);
        self.errors.fetch_add(1, Ordering::AcqRel);
        self.wake();
    }

    /// Who to wake on news.
    pub fn set_notify(&self, n: Notify) {
        *self.notify.lock().unwrap_or_else(PoisonError::into_inner) = Some(n);
    }

    /// Since when a change waits, if one does.
    pub fn pending_since(&self) -> Option<Instant> {
        *self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `poll` is about to read `changes`: a change after this notifies again.
    pub fn clear_pending(&self) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    fn wake(&self) {
        if let Some(n) = &*self.notify.lock().unwrap_or_else(PoisonError::into_inner) {
            n.notify();
        }
    }

    /// What changed since the last call (the incremental build's input).
    pub fn take_changes(&self) -> Changes {
        self.mark(Tracker::take)
    }

    fn mark<T>(&self, f: impl FnOnce(&mut Tracker) -> T) -> T {
        f(&mut self.tracker.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.is_none() {
            *pending = Some(Instant::now());
            drop(pending);
            self.wake();
        }
    }

    fn healthy(&self) {
        if self.lock().take().is_some() {
            // Rebuild once so the source reports the state again after errors.
            self.changed();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.error.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Cache writers of both resources.
pub struct Writers {
    /// Services.
    pub services: Writer<Service>,
    /// EndpointSlices.
    pub slices: Writer<EndpointSlice>,
}

/// Runs both reflectors until `stop` fires (or its sender is dropped).
pub async fn run(
    client: Client,
    namespace: Option<String>,
    writers: Writers,
    progress: &Progress,
    stop: oneshot::Receiver<()>,
) {
    let services: Api<Service> = api(&client, namespace.as_deref());
    let slices: Api<EndpointSlice> = api(&client, namespace.as_deref());
    // any_semantic: lists come from the API server's watch cache, not etcd,
    // which matters when every node's agent lists at once.
    let config = watcher::Config::default().any_semantic();
    let services = reflect(
        services,
        config.clone(),
        writers.services,
        progress,
        &progress.services_ready,
        "services",
        |event: &Event<Service>| match event {
            Event::Apply(s) | Event::Delete(s) => progress.mark(|t| t.service_event(s)),
            // A (re)listing replaces the cache: deletions during a gap are not events.
            Event::InitDone => progress.mark(Tracker::services_relisted),
            Event::Init | Event::InitApply(_) => {}
        },
    );
    let slices = reflect(
        slices,
        config.labels(SERVICE_NAME_LABEL),
        writers.slices,
        progress,
        &progress.slices_ready,
        "endpointslices",
        |event: &Event<EndpointSlice>| match event {
            Event::Apply(s) | Event::InitApply(s) => progress.mark(|t| t.slice_event(s, false)),
            Event::Delete(s) => progress.mark(|t| t.slice_event(s, true)),
            Event::Init => progress.mark(Tracker::slices_relisting),
            Event::InitDone => progress.mark(Tracker::slices_relisted),
        },
    );
    tokio::select! {
        _ = stop => {}
        _ = futures::future::join(services, slices) => {}
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    progress: &Progress,
    ready: &AtomicBool,
    what: &'static str,
    mut mark: impl FnMut(&Event<K>),
) where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Clone + Default + Eq + std::hash::Hash,
{
    let stream = watcher(api, config).modify(strip);
    reflector::reflector(writer, stream)
        .default_backoff()
        .for_each(|item| {
            match item {
                Ok(event) => {
                    mark(&event);
                    progress.healthy();
                    match event {
                        Event::Apply(_) | Event::Delete(_) => progress.changed(),
                        Event::InitDone => {
                            ready.store(true, Ordering::Release);
                            progress.changed();
                        }
                        Event::Init | Event::InitApply(_) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(what, error = %e, "kubernetes watch failed; retrying");
                    progress.fail(format!("watching {what}: {e}"));
                }
            }
            std::future::ready(())
        })
        .await;
}

/// Drops what the agent never reads before it is cached (managed fields and
/// annotations such as last-applied-configuration are most of an object).
fn strip<K: ResourceExt>(obj: &mut K) {
    obj.managed_fields_mut().clear();
    obj.annotations_mut().clear();
}
