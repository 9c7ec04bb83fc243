//! The agent's view of what is in the maps. It is only changed after the
//! maps were changed successfully, so both always agree.

use std::collections::{BTreeMap, HashMap};

use baton_ebpf::{
    BackendKey, BackendValue, EndpointKey, EndpointValue, FrontendKey, FrontendValue, ServiceKey,
    ServiceValue, PRIO_COUNT,
};

use crate::maps::Snapshot;

/// Marks a bucket slot whose key is missing from the map (only after adoption).
pub const MISSING: u32 = u32::MAX;
/// Name prefix of services adopted from pinned maps and not yet matched to the source.
pub const ADOPTED_PREFIX: &str = "adopted:";

/// A programmed service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Svc {
    /// Service id in the maps.
    pub id: u32,
    /// Frontend keys this service owns.
    pub vips: Vec<FrontendKey>,
    /// The service map value as written (with counts).
    pub value: ServiceValue,
    /// Per priority: index i holds endpoint key i+1's backend uid.
    pub buckets: [Vec<u32>; PRIO_COUNT],
}

/// The endpoint key of 0-based slot `slot` in bucket `prio` of service `service_id`.
pub fn endpoint_key(service_id: u32, prio: usize, slot: usize) -> EndpointKey {
    EndpointKey {
        service_id,
        prio: prio as u32,
        backend_index: slot as u32 + 1,
    }
}

impl Svc {
    /// The endpoint entries this service has in the map (missing slots skipped).
    pub fn endpoints(&self) -> impl Iterator<Item = (EndpointKey, EndpointValue)> + '_ {
        self.buckets
            .iter()
            .enumerate()
            .flat_map(move |(p, bucket)| {
                bucket
                    .iter()
                    .enumerate()
                    .filter(|(_, &uid)| uid != MISSING)
                    .map(move |(i, &uid)| (endpoint_key(self.id, p, i), EndpointValue::new(uid)))
            })
    }
}

/// A programmed backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Uid in the backend map.
    pub uid: u32,
    /// Endpoint slots referring to it.
    pub refs: u32,
}

/// Allocator of small non-zero ids.
#[derive(Clone, Debug, Default)]
pub struct IdPool {
    next: u32,
    free: Vec<u32>,
}

impl IdPool {
    /// A fresh id.
    pub fn alloc(&mut self) -> u32 {
        if let Some(id) = self.free.pop() {
            return id;
        }
        self.next += 1;
        self.next
    }

    /// Returns an id to the pool.
    pub fn release(&mut self, id: u32) {
        self.free.push(id);
    }

    /// Marks ids up to `max` as known (after adoption); gaps become free.
    pub fn reserve_seen(&mut self, seen: &[u32]) {
        let max = seen.iter().copied().max().unwrap_or(0);
        let used: std::collections::HashSet<u32> = seen.iter().copied().collect();
        self.next = max;
        self.free = (1..max).filter(|i| !used.contains(i)).rev().collect();
    }
}

/// Everything the agent believes is in the maps.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// Services by name.
    pub services: BTreeMap<String, Svc>,
    /// Which service id each VIP points to.
    pub vip_owner: HashMap<FrontendKey, u32>,
    /// Backends by value.
    pub backends: HashMap<BackendValue, Backend>,
    /// Backend values by uid.
    pub backend_by_uid: HashMap<u32, BackendValue>,
    /// Service id allocator.
    pub service_ids: IdPool,
    /// Backend uid allocator.
    pub backend_uids: IdPool,
    /// Map keys found at adoption that nothing accounts for (deleted by the next sync).
    pub stale: Stale,
    /// Hash of the spec each service was last programmed from, so a sync skips
    /// unchanged services without rebuilding them. Absent = compare in full.
    pub fingerprints: HashMap<String, u64>,
    /// Backends may have lost their last reference outside a transaction
    /// (adoption): the next sync scans for them.
    pub orphans_possible: bool,
}

/// Leftovers found when adopting maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stale {
    /// Frontends pointing to missing services.
    pub frontends: Vec<(FrontendKey, FrontendValue)>,
    /// Endpoint keys outside 1..=count or of missing services.
    pub endpoints: Vec<(EndpointKey, EndpointValue)>,
    /// Backend entries duplicating another's value.
    pub backends: Vec<(BackendKey, BackendValue)>,
}

impl Stale {
    /// Whether nothing is stale.
    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty() && self.endpoints.is_empty() && self.backends.is_empty()
    }
}

impl State {
    /// Rebuilds the view from the maps' contents (restart, recovery).
    pub fn adopt(snap: &Snapshot) -> Self {
        let mut st = State::default();
        let mut by_uid: HashMap<u32, BackendValue> = HashMap::new();
        for (k, v) in &snap.backends {
            if st.backends.contains_key(v) {
                st.stale.backends.push((*k, *v));
                continue;
            }
            st.backends.insert(
                *v,
                Backend {
                    uid: k.backend_uid,
                    refs: 0,
                },
            );
            by_uid.insert(k.backend_uid, *v);
        }
        let mut accounted = std::collections::HashSet::new();
        for (sk, sv) in &snap.services {
            let id = sk.service_id;
            let mut buckets: [Vec<u32>; PRIO_COUNT] = Default::default();
            for (p, bucket) in buckets.iter_mut().enumerate() {
                for slot in 0..sv.prio_endpoint_count[p] as usize {
                    let key = endpoint_key(id, p, slot);
                    accounted.insert(key);
                    let uid = match snap.endpoints.get(&key) {
                        Some(ev) if by_uid.contains_key(&ev.backend_uid) => ev.backend_uid,
                        _ => MISSING,
                    };
                    if let Some(b) = by_uid.get(&uid).and_then(|bv| st.backends.get_mut(bv)) {
                        b.refs += 1;
                    }
                    bucket.push(uid);
                }
            }
            st.services.insert(
                format!("{ADOPTED_PREFIX}{id}"),
                Svc {
                    id,
                    vips: Vec::new(),
                    value: *sv,
                    buckets,
                },
            );
        }
        let ids: HashMap<u32, String> =
            st.services.iter().map(|(n, s)| (s.id, n.clone())).collect();
        for (fk, fv) in &snap.frontends {
            match ids.get(&fv.service_id).and_then(|n| st.services.get_mut(n)) {
                Some(svc) => {
                    svc.vips.push(*fk);
                    st.vip_owner.insert(*fk, fv.service_id);
                }
                None => st.stale.frontends.push((*fk, *fv)),
            }
        }
        for (k, v) in &snap.endpoints {
            if !accounted.contains(k) {
                st.stale.endpoints.push((*k, *v));
            }
        }
        let sids: Vec<u32> = snap.services.keys().map(|k| k.service_id).collect();
        st.service_ids.reserve_seen(&sids);
        let uids: Vec<u32> = snap.backends.keys().map(|k| k.backend_uid).collect();
        st.backend_uids.reserve_seen(&uids);
        st.backend_by_uid = by_uid;
        st.orphans_possible = true;
        st
    }

    /// What the maps must contain according to this view.
    pub fn expected(&self) -> Snapshot {
        let mut s = Snapshot::default();
        for svc in self.services.values() {
            s.services
                .insert(ServiceKey { service_id: svc.id }, svc.value);
            s.endpoints.extend(svc.endpoints());
        }
        for (fk, id) in &self.vip_owner {
            s.frontends.insert(*fk, FrontendValue { service_id: *id });
        }
        for (bv, b) in &self.backends {
            s.backends.insert(BackendKey { backend_uid: b.uid }, *bv);
        }
        for (k, v) in &self.stale.frontends {
            s.frontends.insert(*k, *v);
        }
        for (k, v) in &self.stale.endpoints {
            s.endpoints.insert(*k, *v);
        }
        for (k, v) in &self.stale.backends {
            s.backends.insert(*k, *v);
        }
        s
    }

    /// Total endpoint slots programmed.
    pub fn endpoint_count(&self) -> usize {
        self.services
            .values()
            .map(|s| s.buckets.iter().map(Vec::len).sum::<usize>())
            .sum()
    }
}
