//! The desired state rebuilt only for the Services that changed.
//!
//! A full [`build`](super::build) walks every Service and EndpointSlice; at 10 000 Services
//! with 100 000 endpoints that is most of the agent's work per endpoint change. The watches
//! record which Services an event touched and which slices each Service has ([`Tracker`]);
//! [`Incremental`] keeps every Service's datapath services and notes from the last build,
//! rebuilds only those, reading only their slices, and hands the state over as shared
//! [`ServiceSpec`]s in name order (no copy, no sort, no scan of the whole cluster per build).
//! What it assembles is exactly what the full build gives (the unit tests compare them after
//! random changes); it falls back to the full build on the first listing, after a relist
//! (deletions during a watch gap arrive as a new listing, not as events) and when the zone
//! this node takes from its endpoints changes (it changes every topology-aware Service).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{ObjectRef, Store};

use super::build::{service_specs, Built, SERVICE_NAME_LABEL};
use super::topology::Locality;
use crate::model::{DesiredState, ServiceSpec};

/// A Service by namespace and name.
pub type Key = (String, String);

/// What changed since the last build.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dirty {
    /// Rebuild every Service (first listing, relist).
    pub all: bool,
    /// Services whose object or slices changed.
    pub keys: HashSet<Key>,
}

impl Dirty {
    /// Marks a Service.
    pub fn mark(&mut self, key: Key) {
        if !self.all {
            self.keys.insert(key);
        }
    }

    /// Marks everything.
    pub fn mark_all(&mut self) {
        self.all = true;
        self.keys.clear();
    }

    /// Whether nothing is marked.
    pub fn is_empty(&self) -> bool {
        !self.all && self.keys.is_empty()
    }
}

/// The Service an EndpointSlice belongs to (its namespace and `kubernetes.io/service-name`).
pub fn slice_owner(slice: &EndpointSlice) -> Option<Key> {
    let ns = slice.metadata.namespace.as_ref()?;
    let svc = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((ns.clone(), svc.clone()))
}

/// [`slice_owner`] without copying.
pub(super) fn slice_owner_ref(slice: &EndpointSlice) -> Option<(&str, &str)> {
    let ns = slice.metadata.namespace.as_deref()?;
    let svc = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((ns, svc.as_str()))
}

/// The Service of a Service object.
pub fn service_key(svc: &Service) -> Option<Key> {
    Some((svc.metadata.namespace.clone()?, svc.metadata.name.clone()?))
}

/// Which EndpointSlices each Service has, as the slice cache holds them: a build reads the
/// slices of the Services that changed instead of grouping every slice of the cluster.
#[derive(Debug, Default)]
struct SliceIndex {
    /// A slice (its namespace and name) to its Service.
    owner: HashMap<Key, Key>,
    /// A Service to the names of its slices (in its namespace).
    slices: HashMap<Key, BTreeSet<String>>,
}

impl SliceIndex {
    /// Records the slice's owner now (`None`: deleted or unlabelled); returns the one before.
    fn set(&mut self, id: Key, owner: Option<Key>) -> Option<Key> {
        let before = match &owner {
            Some(o) => self.owner.insert(id.clone(), o.clone()),
            None => self.owner.remove(&id),
        };
        if before == owner {
            return before;
        }
        if let Some(b) = &before {
            if let Some(names) = self.slices.get_mut(b) {
                names.remove(&id.1);
                if names.is_empty() {
                    self.slices.remove(b);
                }
            }
        }
        if let Some(o) = owner {
            self.slices.entry(o).or_default().insert(id.1);
        }
        before
    }

    fn slices_of(&self, key: &Key) -> Vec<String> {
        self.slices
            .get(key)
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// What the watches record between two builds: the Services touched, and the slice index.
#[derive(Debug, Default)]
pub struct Tracker {
    dirty: Dirty,
    index: SliceIndex,
    /// The index a slice relisting fills; it replaces `index` when the listing is complete
    /// (until then the cache still holds the old listing, and so does `index`).
    relisting: Option<SliceIndex>,
}

impl Tracker {
    /// A Service was applied or deleted.
    pub fn service_event(&mut self, svc: &Service) {
        if let Some(key) = service_key(svc) {
            self.dirty.mark(key);
        }
    }

    /// The Services were listed again: every Service is rebuilt.
    pub fn services_relisted(&mut self) {
        self.dirty.mark_all();
    }

    /// A slice was applied or deleted: marks its owner now and, if different, before
    /// (the event only carries the new object).
    pub fn slice_event(&mut self, slice: &EndpointSlice, deleted: bool) {
        let Some(id) = slice_id(slice) else {
            return;
        };
        let labelled = slice_owner(slice);
        let owner = if deleted { None } else { labelled.clone() };
        let index = self.relisting.as_mut().unwrap_or(&mut self.index);
        if let Some(b) = index.set(id, owner) {
            self.dirty.mark(b);
        }
        if let Some(o) = labelled {
            self.dirty.mark(o);
        }
    }

    /// The slices are being listed again (their events follow, then [`Tracker::slices_relisted`]).
    pub fn slices_relisting(&mut self) {
        self.relisting = Some(SliceIndex::default());
    }

    /// The slice listing is complete: its index replaces the old one; every Service is rebuilt.
    pub fn slices_relisted(&mut self) {
        if let Some(index) = self.relisting.take() {
            self.index = index;
        }
        self.dirty.mark_all();
    }

    /// The changes since the last call, with the slice names of every touched Service.
    pub fn take(&mut self) -> Changes {
        let dirty = std::mem::take(&mut self.dirty);
        let slices = if dirty.all {
            HashMap::new()
        } else {
            dirty
                .keys
                .iter()
                .map(|k| (k.clone(), self.index.slices_of(k)))
                .collect()
        };
        Changes { dirty, slices }
    }
}

/// The input of one incremental build.
#[derive(Debug, Default)]
pub struct Changes {
    /// The Services to rebuild.
    pub dirty: Dirty,
    /// The slice names of every Service in `dirty.keys` (empty when `dirty.all`).
    pub slices: HashMap<Key, Vec<String>>,
}

/// A slice's own namespace and name.
fn slice_id(slice: &EndpointSlice) -> Option<Key> {
    Some((
        slice.metadata.namespace.clone()?,
        slice.metadata.name.clone()?,
    ))
}

/// One Service's part of the state.
#[derive(Debug, Default, PartialEq)]
struct Entry {
    specs: Vec<Arc<ServiceSpec>>,
    notes: Vec<String>,
}

impl Entry {
    /// A Service that contributes nothing (headless, no IP yet, ExternalName) has no entry,
    /// so that its coming and going is no change.
    fn is_empty(&self) -> bool {
        self.specs.is_empty() && self.notes.is_empty()
    }
}

/// This node's zone as its endpoints say, kept per Service so that a build updates it for
/// the Services that changed instead of scanning every endpoint of the cluster.
#[derive(Debug, Default)]
struct NodeZones {
    of: HashMap<Key, String>,
    /// How many Services give each zone.
    count: BTreeMap<String, usize>,
}

impl NodeZones {
    fn set(&mut self, key: &Key, zone: Option<String>) {
        if self.of.get(key) == zone.as_ref() {
            return;
        }
        let before = match &zone {
            Some(z) => self.of.insert(key.clone(), z.clone()),
            None => self.of.remove(key),
        };
        if let Some(b) = before {
            if let Some(n) = self.count.get_mut(&b) {
                *n -= 1;
                if *n == 0 {
                    self.count.remove(&b);
                }
            }
        }
        if let Some(z) = zone {
            *self.count.entry(z).or_default() += 1;
        }
    }

    /// The least zone of all (what the full build takes).
    fn least(&self) -> Option<String> {
        self.count.keys().next().cloned()
    }
}

/// Every Service's datapath services from the last build.
#[derive(Debug, Default)]
pub struct Incremental {
    entries: HashMap<Key, Entry>,
    /// Every datapath service of `entries` by name: the state, in the full build's order.
    by_name: BTreeMap<String, Arc<ServiceSpec>>,
    zones: NodeZones,
    /// The locality the entries were built with (its zone may come from the slices).
    here: Option<Locality>,
    /// Services rebuilt by the last [`Incremental::build`] (for tests and logs).
    pub last_rebuilt: usize,
}

impl Incremental {
    /// The state after `changes`, reading the caches.
    pub fn build(
        &mut self,
        changes: &Changes,
        services: &Store<Service>,
        slices: &Store<EndpointSlice>,
        here: &Locality,
    ) -> Built {
        self.update(changes, services, slices, here);
        self.built()
    }

    /// Applies `changes`; whether the state differs from before (an update that leaves every
    /// rebuilt Service as it was, e.g. a change and its revert between two builds, is no
    /// change). Comparing the rebuilt Services only is what lets `poll` skip comparing, and
    /// keeping, the whole state.
    pub fn update(
        &mut self,
        changes: &Changes,
        services: &Store<Service>,
        slices: &Store<EndpointSlice>,
        base: &Locality,
    ) -> bool {
        if changes.dirty.all || self.here.is_none() {
            return self.rebuild_all(services, slices, base);
        }
        // The touched Services' slices as the cache holds them now; a slice the index still
        // gives to a Service it has left since is skipped (its move marks both again).
        let mut groups: HashMap<&Key, Vec<Arc<EndpointSlice>>> = HashMap::new();
        for key in &changes.dirty.keys {
            let owned: Vec<Arc<EndpointSlice>> = changes
                .slices
                .get(key)
                .into_iter()
                .flatten()
                .filter_map(|n| slices.get(&ObjectRef::new(n).within(&key.0)))
                .filter(|s| slice_owner_ref(s) == Some((key.0.as_str(), key.1.as_str())))
                .collect();
            if base.learns_zone() {
                self.zones
                    .set(key, base.zone_in(owned.iter().map(|s| &**s)));
            }
            groups.insert(key, owned);
        }
        let here = self.locality(base);
        if self.here.as_ref() != Some(&here) {
            return self.rebuild_all(services, slices, base);
        }
        let mut changed = false;
        for key in &changes.dirty.keys {
            let group: Vec<&EndpointSlice> = groups
                .get(key)
                .into_iter()
                .flatten()
                .map(|s| &**s)
                .collect();
            let now = services
                .get(&ObjectRef::new(&key.1).within(&key.0))
                .map(|svc| entry(key, &svc, &group, &here))
                .filter(|e| !e.is_empty());
            changed |= self.replace(key, now);
        }
        self.last_rebuilt = changes.dirty.keys.len();
        changed
    }

    /// Puts `now` in place of `key`'s entry; whether it differs.
    fn replace(&mut self, key: &Key, now: Option<Entry>) -> bool {
        let before = match now {
            Some(e) => self.entries.insert(key.clone(), e),
            None => self.entries.remove(key),
        };
        let after = self.entries.get(key);
        if before.as_ref() == after {
            // Keep the old specs: the programmer skips what it synced from the same `Arc`.
            if let Some(b) = before {
                self.entries.insert(key.clone(), b);
            }
            return false;
        }
        for s in before.iter().flat_map(|e| &e.specs) {
            self.by_name.remove(&s.name);
        }
        for s in after.iter().flat_map(|e| &e.specs) {
            self.by_name.insert(s.name.clone(), Arc::clone(s));
        }
        true
    }

    /// The base locality with the zone the slices give, when it comes from them.
    fn locality(&self, base: &Locality) -> Locality {
        if base.learns_zone() {
            base.with_zone(self.zones.least())
        } else {
            base.clone()
        }
    }

    /// Rebuilds every Service, scanning every slice.
    fn rebuild_all(
        &mut self,
        services: &Store<Service>,
        slices: &Store<EndpointSlice>,
        base: &Locality,
    ) -> bool {
        let all_slices = slices.state();
        let mut groups: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for s in &all_slices {
            if let Some(key) = slice_owner_ref(s) {
                groups.entry(key).or_default().push(s);
            }
        }
        self.zones = NodeZones::default();
        if base.learns_zone() {
            for (k, group) in &groups {
                let key = (k.0.to_owned(), k.1.to_owned());
                self.zones.set(&key, base.zone_in(group.iter().copied()));
            }
        }
        let here = self.locality(base);
        let svcs = services.state();
        let mut entries = HashMap::with_capacity(svcs.len());
        for svc in &svcs {
            let Some(key) = service_key(svc) else {
                continue;
            };
            let group = groups
                .get(&(key.0.as_str(), key.1.as_str()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let e = entry(&key, svc, group, &here);
            if !e.is_empty() {
                entries.insert(key, e);
            }
        }
        let changed = entries != self.entries || self.here.is_none();
        if changed {
            self.entries = entries;
            self.by_name = self
                .entries
                .values()
                .flat_map(|e| &e.specs)
                .map(|s| (s.name.clone(), Arc::clone(s)))
                .collect();
        }
        self.here = Some(here);
        self.last_rebuilt = svcs.len();
        changed
    }

    /// The whole state and its notes, as the full build gives them.
    pub fn built(&self) -> Built {
        Built {
            state: DesiredState {
                services: self.by_name.values().cloned().collect(),
            },
            notes: self
                .entries
                .values()
                .flat_map(|e| e.notes.iter().cloned())
                .collect(),
        }
    }
}

/// One Service's entry built from its slices.
fn entry(key: &Key, svc: &Service, slices: &[&EndpointSlice], here: &Locality) -> Entry {
    let mut notes = Vec::new();
    let name = format!("{}/{}", key.0, key.1);
    let specs = service_specs(&name, svc, slices, here, &mut notes)
        .into_iter()
        .map(Arc::new)
        .collect();
    Entry { specs, notes }
}

#[cfg(test)]
#[path = "incremental_tests.rs"]
mod tests;
