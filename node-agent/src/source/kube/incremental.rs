//! The desired state rebuilt only for the Services that changed.
//!
//! A full [`build`](super::build) walks every Service and EndpointSlice; at 10 000 Services
//! with 100 000 endpoints that is most of the agent's work per endpoint change. The watches
//! record which Services an event touched ([`Dirty`]); [`Incremental`] keeps every Service's
//! datapath services and notes from the last build and rebuilds only those, then assembles the
//! state. What it assembles is exactly what the full build gives (the unit tests compare them
//! after random changes); it falls back to the full build on the first listing, after a
//! relist (deletions during a watch gap arrive as a new listing, not as events) and when the
//! zone this node takes from its endpoints changes (it changes every topology-aware Service).

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{ObjectRef, Store};

use super::build::{service_specs, Built, SERVICE_NAME_LABEL};
use super::topology::Locality;
use crate::model::ServiceSpec;

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
fn slice_owner_ref(slice: &EndpointSlice) -> Option<(&str, &str)> {
    let ns = slice.metadata.namespace.as_deref()?;
    let svc = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((ns, svc.as_str()))
}

/// The Service of a Service object.
pub fn service_key(svc: &Service) -> Option<Key> {
    Some((svc.metadata.namespace.clone()?, svc.metadata.name.clone()?))
}

/// Which Service each slice belonged to when last seen, so that a slice whose label moves
/// marks its old Service too (the event only carries the new object).
#[derive(Debug, Default)]
pub struct SliceOwners(HashMap<Key, Key>);

impl SliceOwners {
    /// Marks the Services a slice event touches: its owner now and, if different, before.
    pub fn slice_event(&mut self, slice: &EndpointSlice, deleted: bool, dirty: &mut Dirty) {
        let Some(id) = service_key_of_slice(slice) else {
            return;
        };
        let owner = slice_owner(slice);
        let before = if deleted {
            self.0.remove(&id)
        } else {
            match &owner {
                Some(o) => self.0.insert(id, o.clone()),
                None => self.0.remove(&id),
            }
        };
        if let Some(b) = before.filter(|b| Some(b) != owner.as_ref()) {
            dirty.mark(b);
        }
        if let Some(o) = owner {
            dirty.mark(o);
        }
    }

    /// Forgets every slice (a relist refills it through [`SliceOwners::slice_event`]).
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// A slice's own namespace and name.
fn service_key_of_slice(slice: &EndpointSlice) -> Option<Key> {
    Some((
        slice.metadata.namespace.clone()?,
        slice.metadata.name.clone()?,
    ))
}

/// One Service's part of the state.
#[derive(Debug, Default, PartialEq)]
struct Entry {
    specs: Vec<ServiceSpec>,
    notes: Vec<String>,
}

impl Entry {
    /// A Service that contributes nothing (headless, no IP yet, ExternalName) has no entry,
    /// so that its coming and going is no change.
    fn is_empty(&self) -> bool {
        self.specs.is_empty() && self.notes.is_empty()
    }
}

/// Every Service's datapath services from the last build.
#[derive(Debug, Default)]
pub struct Incremental {
    entries: BTreeMap<Key, Entry>,
    /// The locality the entries were built with (its zone may come from the slices).
    here: Option<Locality>,
    /// Services rebuilt by the last [`Incremental::build`] (for tests and logs).
    pub last_rebuilt: usize,
}

impl Incremental {
    /// The state after the changes in `dirty`, reading the caches.
    pub fn build(
        &mut self,
        dirty: &Dirty,
        services: &Store<Service>,
        slices: &Store<EndpointSlice>,
        here: &Locality,
    ) -> Built {
        self.update(dirty, services, slices, here);
        self.built()
    }

    /// Applies the changes in `dirty`; whether the state differs from before (an update
    /// that leaves every rebuilt Service as it was, e.g. a change and its revert between two
    /// builds, is no change). Comparing the rebuilt Services only is what lets `poll` skip
    /// comparing, and keeping, the whole state.
    pub fn update(
        &mut self,
        dirty: &Dirty,
        services: &Store<Service>,
        slices: &Store<EndpointSlice>,
        here: &Locality,
    ) -> bool {
        let all_slices = slices.state();
        let here = here.with_zone_from(all_slices.iter().map(|s| &**s));
        let full = dirty.all || self.here.as_ref() != Some(&here);
        // Borrowed keys: this scan runs over every slice at every build, so no clones here.
        let wanted: Option<HashSet<(&str, &str)>> = (!full).then(|| {
            dirty
                .keys
                .iter()
                .map(|(ns, n)| (ns.as_str(), n.as_str()))
                .collect()
        });
        let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        if full || !dirty.keys.is_empty() {
            for s in &all_slices {
                let Some(key) = slice_owner_ref(s) else {
                    continue;
                };
                if wanted.as_ref().is_none_or(|w| w.contains(&key)) {
                    by_service.entry(key).or_default().push(s);
                }
            }
        }
        let entry = |key: &Key, svc: &Service| {
            let mut notes = Vec::new();
            let slices = by_service
                .get(&(key.0.as_str(), key.1.as_str()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let name = format!("{}/{}", key.0, key.1);
            let specs = service_specs(&name, svc, slices, &here, &mut notes);
            Entry { specs, notes }
        };
        let mut changed = false;
        if full {
            let svcs = services.state();
            let mut entries = BTreeMap::new();
            for svc in &svcs {
                if let Some(key) = service_key(svc) {
                    let e = entry(&key, svc);
                    if !e.is_empty() {
                        entries.insert(key, e);
                    }
                }
            }
            changed = entries != self.entries || self.here.is_none();
            self.entries = entries;
            self.last_rebuilt = svcs.len();
        } else {
            for key in &dirty.keys {
                let now = services
                    .get(&ObjectRef::new(&key.1).within(&key.0))
                    .map(|svc| entry(key, &svc))
                    .filter(|e| !e.is_empty());
                let before = match now {
                    Some(e) => self.entries.insert(key.clone(), e),
                    None => self.entries.remove(key),
                };
                changed |= before.as_ref() != self.entries.get(key);
            }
            self.last_rebuilt = dirty.keys.len();
        }
        self.here = Some(here);
        changed
    }

    /// The whole state and its notes, as the full build gives them.
    pub fn built(&self) -> Built {
        let mut built = Built::default();
        for e in self.entries.values() {
            built.state.services.extend(e.specs.iter().cloned());
            built.notes.extend(e.notes.iter().cloned());
        }
        // The same order as the full build ("ns/a" and "ns/a/ipv6" are not adjacent in
        // key order when "ns/a-b" exists); the input is nearly sorted, so this is cheap.
        built.state.services.sort_by(|a, b| a.name.cmp(&b.name));
        built
    }
}

#[cfg(test)]
#[path = "incremental_tests.rs"]
mod tests;
