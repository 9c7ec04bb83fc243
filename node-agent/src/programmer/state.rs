//! The agent's view of what is in the maps. It is only changed after the
//! maps were changed successfully, so both always agree.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use baton_ebpf::{
    BackendKey, BackendValue, EndpointKey, EndpointValue, FrontendKey, FrontendValue, MapPod,
    ServiceKey, ServiceValue, PRIO_COUNT,
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

    /// Marks `id` as in use (found in the maps).
    pub fn mark_seen(&mut self, id: u32) {
        if id > self.next {
            self.free.extend((self.next + 1..id).rev());
            self.next = id;
        } else {
            self.free.retain(|f| *f != id);
        }
    }

    /// Marks `id` as free (gone from the maps) unless it already is.
    pub fn release_seen(&mut self, id: u32) {
        if id != 0 && id <= self.next && !self.free.contains(&id) {
            self.free.push(id);
        }
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
    /// The spec each service was last programmed from and its hash, so a sync skips
    /// unchanged services without rebuilding them. Absent = compare in full.
    pub fingerprints: super::Fingerprints,
    /// Backends may have lost their last reference outside a transaction
    /// (adoption): the next sync scans for them.
    pub orphans_possible: bool,
}

/// Keys of the four lookup maps that may differ between two snapshots.
#[derive(Clone, Debug, Default)]
pub struct Changed {
    /// frontend keys.
    pub frontends: BTreeSet<FrontendKey>,
    /// service ids.
    pub services: BTreeSet<u32>,
    /// endpoint keys.
    pub endpoints: BTreeSet<EndpointKey>,
    /// backend uids.
    pub backends: BTreeSet<u32>,
}

impl Changed {
    /// Records `key` (this build's bytes) of `map`; other maps are ignored,
    /// a key of the wrong size is refused.
    pub fn record(&mut self, map: &str, key: &[u8]) -> bool {
        fn read<K: MapPod>(key: &[u8]) -> Option<K> {
            let mut k = K::default();
            (key.len() == k.as_bytes().len()).then(|| {
                k.as_bytes_mut().copy_from_slice(key);
                k
            })
        }
        match map {
            "frontend" => read::<FrontendKey>(key).map(|k| self.frontends.insert(k)),
            "service" => read::<ServiceKey>(key).map(|k| self.services.insert(k.service_id)),
            "endpoint" => read::<EndpointKey>(key).map(|k| self.endpoints.insert(k)),
            "backend" => read::<BackendKey>(key).map(|k| self.backends.insert(k.backend_uid)),
            _ => Some(true),
        }
        .is_some()
    }
}

/// The keys whose entries differ between `a` and `b` (one merged walk of
/// each map, both in key order).
pub fn diff(a: &Snapshot, b: &Snapshot) -> Changed {
    fn walk<K: Ord + Copy, V: PartialEq>(
        a: &BTreeMap<K, V>,
        b: &BTreeMap<K, V>,
        mut out: impl FnMut(K),
    ) {
        let (mut x, mut y) = (a.iter().peekable(), b.iter().peekable());
        loop {
            match (x.peek(), y.peek()) {
                (None, None) => return,
                (Some((k, _)), None) => {
                    out(**k);
                    x.next();
                }
                (None, Some((k, _))) => {
                    out(**k);
                    y.next();
                }
                (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                    std::cmp::Ordering::Less => {
                        out(**ka);
                        x.next();
                    }
                    std::cmp::Ordering::Greater => {
                        out(**kb);
                        y.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if va != vb {
                            out(**ka);
                        }
                        x.next();
                        y.next();
                    }
                },
            }
        }
    }
    let mut c = Changed::default();
    walk(&a.frontends, &b.frontends, |k| {
        c.frontends.insert(k);
    });
    walk(&a.services, &b.services, |k| {
        c.services.insert(k.service_id);
    });
    walk(&a.endpoints, &b.endpoints, |k| {
        c.endpoints.insert(k);
    });
    walk(&a.backends, &b.backends, |k| {
        c.backends.insert(k.backend_uid);
    });
    c
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

    /// Brings a view adopted from a snapshot to what [`State::adopt`] of
    /// `after` gives, where `after` differs from that snapshot only at the
    /// keys in `changed` (a handover's journal): the view is built before
    /// the commit, and only what those keys touch is rebuilt after it. The
    /// snapshot may be torn (read while the old agent wrote: counts without
    /// their endpoints, a backend twice), as long as every torn key is in
    /// `changed`. Returns `false`, with the view in an unspecified state,
    /// for the few cases left to the whole adoption (a duplicate backend
    /// whose primary would change among keys not in `changed`); the caller
    /// then adopts `after` in full. Id pools stay valid (never hand out an
    /// id in use) but may order their free ids differently. Service names
    /// are kept (a new service is `adopted:<id>`), and the fingerprint of
    /// every service it touches is dropped.
    pub fn patch(&mut self, after: &Snapshot, changed: &Changed) -> bool {
        // Services may have been claimed by name already (`Programmer::
        // prematch`): a rebuilt service keeps its name, a new one is
        // adopted, and a service whose content may change loses its
        // fingerprint (the next sync compares it in full).
        let names: HashMap<u32, String> = self
            .services
            .iter()
            .map(|(n, s)| (s.id, n.clone()))
            .collect();
        let name = |id: u32| {
            names
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("{ADOPTED_PREFIX}{id}"))
        };
        // Services to rebuild: those whose keys changed, those whose slots
        // name a changed backend, and those with a missing slot (it may
        // name anything).
        let mut affected: BTreeSet<u32> = changed.services.clone();
        affected.extend(changed.endpoints.iter().map(|k| k.service_id));
        for svc in self.services.values() {
            if svc
                .buckets
                .iter()
                .flatten()
                .any(|u| *u == MISSING || changed.backends.contains(u))
            {
                affected.insert(svc.id);
            }
        }
        // 1. Take the affected services out, with their backend references.
        let mut old_vips: HashMap<u32, Vec<FrontendKey>> = HashMap::new();
        for id in &affected {
            self.fingerprints.remove(&name(*id));
            let Some(svc) = self.services.remove(&name(*id)) else {
                continue;
            };
            for uid in svc.buckets.iter().flatten() {
                if let Some(b) = self
                    .backend_by_uid
                    .get(uid)
                    .and_then(|bv| self.backends.get_mut(bv))
                {
                    b.refs = b.refs.saturating_sub(1);
                }
            }
            old_vips.insert(*id, svc.vips);
        }
        // 2. Backends: nothing refers to a changed one now.
        self.stale
            .backends
            .retain(|(k, _)| !changed.backends.contains(&k.backend_uid));
        for uid in &changed.backends {
            if let Some(v) = self.backend_by_uid.remove(uid) {
                match self.backends.get(&v) {
                    Some(b) if b.uid == *uid && b.refs == 0 => {
                        self.backends.remove(&v);
                    }
                    _ => return false,
                }
                // An unchanged duplicate of it would become the primary.
                if self.stale.backends.iter().any(|(_, sv)| *sv == v) {
                    return false;
                }
            }
        }
        // In uid order, as adoption: the lowest uid of a value is its primary.
        for uid in &changed.backends {
            let Some(v) = after.backends.get(&BackendKey { backend_uid: *uid }) else {
                self.backend_uids.release_seen(*uid);
                continue;
            };
            self.backend_uids.mark_seen(*uid);
            match self.backends.get(v) {
                Some(b) if b.uid < *uid => {
                    self.stale
                        .backends
                        .push((BackendKey { backend_uid: *uid }, *v));
                }
                // An unchanged backend with a higher uid would lose its place.
                Some(_) => return false,
                None => {
                    self.backends.insert(*v, Backend { uid: *uid, refs: 0 });
                    self.backend_by_uid.insert(*uid, *v);
                }
            }
        }
        self.stale.backends.sort_by_key(|(k, _)| *k);
        // 3. The affected services as `after` has them.
        self.stale
            .endpoints
            .retain(|(k, _)| !affected.contains(&k.service_id));
        let mut gone = Vec::new();
        for id in &affected {
            let mut keys = after
                .endpoints
                .range(
                    EndpointKey {
                        service_id: *id,
                        prio: 0,
                        backend_index: 0,
                    }..,
                )
                .take_while(|(k, _)| k.service_id == *id);
            let Some(sv) = after.services.get(&ServiceKey { service_id: *id }) else {
                // Its endpoints are stale.
                self.stale.endpoints.extend(keys.map(|(k, v)| (*k, *v)));
                self.service_ids.release_seen(*id);
                gone.push(*id);
                continue;
            };
            let mut buckets: [Vec<u32>; PRIO_COUNT] = Default::default();
            for (p, bucket) in buckets.iter_mut().enumerate() {
                for slot in 0..sv.prio_endpoint_count[p] as usize {
                    let found = after
                        .endpoints
                        .get(&endpoint_key(*id, p, slot))
                        .map(|ev| ev.backend_uid)
                        .and_then(|uid| {
                            let bv = self.backend_by_uid.get(&uid)?;
                            let b = self.backends.get_mut(bv)?;
                            b.refs += 1;
                            Some(uid)
                        });
                    bucket.push(found.unwrap_or(MISSING));
                }
            }
            let unaccounted = |k: &EndpointKey| {
                let p = k.prio as usize;
                p >= PRIO_COUNT
                    || k.backend_index == 0
                    || k.backend_index > sv.prio_endpoint_count[p]
            };
            self.stale.endpoints.extend(
                keys.by_ref()
                    .filter(|(k, _)| unaccounted(k))
                    .map(|(k, v)| (*k, *v)),
            );
            self.service_ids.mark_seen(*id);
            self.services.insert(
                name(*id),
                Svc {
                    id: *id,
                    vips: old_vips.remove(id).unwrap_or_default(),
                    value: *sv,
                    buckets,
                },
            );
        }
        self.stale.endpoints.sort_by_key(|(k, _)| *k);
        // 4. Frontends: changed ones, and stale ones whose service changed.
        let mut redo: BTreeSet<FrontendKey> = changed.frontends.clone();
        redo.extend(
            self.stale
                .frontends
                .iter()
                .filter(|(_, fv)| affected.contains(&fv.service_id))
                .map(|(k, _)| *k),
        );
        for id in &gone {
            // A removed service's VIPs go stale unless they changed too.
            for fk in old_vips.get(id).into_iter().flatten() {
                redo.insert(*fk);
            }
        }
        self.stale.frontends.retain(|(k, _)| !redo.contains(k));
        for fk in &redo {
            if let Some(owner) = self.vip_owner.remove(fk) {
                self.fingerprints.remove(&name(owner));
                if let Some(svc) = self.services.get_mut(&name(owner)) {
                    svc.vips.retain(|v| v != fk);
                }
            }
            let Some(fv) = after.frontends.get(fk) else {
                continue;
            };
            self.fingerprints.remove(&name(fv.service_id));
            match self.services.get_mut(&name(fv.service_id)) {
                Some(svc) => {
                    // Adoption lists a service's VIPs in key order.
                    svc.vips.push(*fk);
                    svc.vips.sort();
                    self.vip_owner.insert(*fk, fv.service_id);
                }
                None => self.stale.frontends.push((*fk, *fv)),
            }
        }
        self.stale.frontends.sort_by_key(|(k, _)| *k);
        self.orphans_possible = true;
        true
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

#[cfg(test)]
mod tests {
    use super::*;
    use baton_ebpf::raw_addr;

    /// Services (VIPs, bucket 0 uids) and backends: what the agent's writes leave.
    #[derive(Clone, Default)]
    struct Model {
        services: BTreeMap<u32, (Vec<u32>, Vec<u32>)>,
        backends: BTreeMap<u32, u32>,
        next_uid: u32,
        next_vip: u32,
    }

    fn vip(n: u32) -> FrontendKey {
        FrontendKey {
            addr: raw_addr(std::net::IpAddr::from([10, 96, (n >> 8) as u8, n as u8])),
        }
    }

    impl Model {
        fn backend(&mut self) -> u32 {
            self.next_uid += 1;
            self.backends.insert(self.next_uid, self.next_uid);
            self.next_uid
        }
        fn gc(&mut self) {
            let used: BTreeSet<u32> = self.services.values().flat_map(|s| s.1.clone()).collect();
            self.backends.retain(|u, _| used.contains(u));
        }
        fn snapshot(&self) -> Snapshot {
            let mut s = Snapshot::default();
            for (id, (vips, uids)) in &self.services {
                let mut v = ServiceValue::default();
                v.prio_endpoint_count[0] = uids.len() as u32;
                s.services.insert(ServiceKey { service_id: *id }, v);
                for n in vips {
                    s.frontends
                        .insert(vip(*n), FrontendValue { service_id: *id });
                }
                for (i, u) in uids.iter().enumerate() {
                    s.endpoints
                        .insert(endpoint_key(*id, 0, i), EndpointValue::new(*u));
                }
            }
            for (u, a) in &self.backends {
                let ip = std::net::IpAddr::from([10, 200, (*a >> 8) as u8, *a as u8]);
                s.backends.insert(
                    BackendKey { backend_uid: *u },
                    BackendValue::new(raw_addr(ip), 0),
                );
            }
            s
        }
    }

    fn diff(a: &Snapshot, b: &Snapshot) -> Changed {
        fn keys<K: Ord + Copy, V: PartialEq>(
            a: &BTreeMap<K, V>,
            b: &BTreeMap<K, V>,
        ) -> BTreeSet<K> {
            a.keys()
                .chain(b.keys())
                .filter(|k| a.get(k) != b.get(k))
                .copied()
                .collect()
        }
        Changed {
            frontends: keys(&a.frontends, &b.frontends),
            services: keys(&a.services, &b.services)
                .into_iter()
                .map(|k| k.service_id)
                .collect(),
            endpoints: keys(&a.endpoints, &b.endpoints),
            backends: keys(&a.backends, &b.backends)
                .into_iter()
                .map(|k| k.backend_uid)
                .collect(),
        }
    }

    fn same(a: &State, b: &State) -> bool {
        a.services == b.services
            && a.vip_owner == b.vip_owner
            && a.backends == b.backends
            && a.backend_by_uid == b.backend_by_uid
            && a.stale == b.stale
    }

    #[test]
    fn a_patched_view_equals_the_adopted_one() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut rnd = |n: u32| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % u64::from(n.max(1))) as u32
        };
        let (mut patched, mut fell_back) = (0, 0);
        for round in 0..600 {
            let torn = round % 2 == 1;
            let mut m = Model::default();
            for id in 1..=20 {
                m.next_vip += 1;
                let uids = (0..1 + rnd(5)).map(|_| m.backend()).collect();
                m.services.insert(id, (vec![m.next_vip], uids));
            }
            let before = m.snapshot();
            let mut st = State::adopt(&before);
            let mut stale_case = false;
            for _ in 0..1 + rnd(6) {
                let ids: Vec<u32> = m.services.keys().copied().collect();
                let id = ids[rnd(ids.len() as u32) as usize];
                match rnd(7) {
                    0 => {
                        let u = m.backend();
                        let s = m.services.get_mut(&id).unwrap();
                        let i = rnd(s.1.len() as u32) as usize;
                        s.1[i] = u;
                    }
                    1 => {
                        let s = m.services.get_mut(&id).unwrap();
                        if s.1.len() > 1 {
                            s.1.pop();
                        }
                    }
                    2 => {
                        m.next_vip += 1;
                        let uids = vec![m.backend(), m.backend()];
                        m.services.insert(100 + rnd(50), (vec![m.next_vip], uids));
                    }
                    3 => {
                        m.services.remove(&id);
                    }
                    4 => {
                        let v = m.services.get_mut(&id).unwrap().0.pop();
                        if let (Some(v), Some(other)) = (v, ids.iter().find(|o| **o != id)) {
                            m.services.get_mut(other).unwrap().0.push(v);
                        }
                    }
                    5 => {
                        // Another service's backend shared (refs move).
                        let other = ids[rnd(ids.len() as u32) as usize];
                        let u = m.services[&other].1[0];
                        m.services.get_mut(&id).unwrap().1.push(u);
                    }
                    _ => stale_case = true,
                }
                m.gc();
            }
            let mut after = m.snapshot();
            // Read while the old agent wrote: each key as before or after.
            let before = if torn {
                let mut t = before.clone();
                fn mix<K: Ord + Copy, V: Copy>(
                    t: &mut BTreeMap<K, V>,
                    a: &BTreeMap<K, V>,
                    pick: &mut dyn FnMut() -> bool,
                ) {
                    let keys: BTreeSet<K> = t.keys().chain(a.keys()).copied().collect();
                    for k in keys {
                        if pick() {
                            match a.get(&k) {
                                Some(v) => t.insert(k, *v),
                                None => t.remove(&k),
                            };
                        }
                    }
                }
                let mut pick = || rnd(2) == 0;
                mix(&mut t.frontends, &after.frontends, &mut pick);
                mix(&mut t.services, &after.services, &mut pick);
                mix(&mut t.endpoints, &after.endpoints, &mut pick);
                mix(&mut t.backends, &after.backends, &mut pick);
                st = State::adopt(&t);
                t
            } else {
                before
            };
            if stale_case {
                // Something adoption must call stale: a key past a count.
                let id = *m.services.keys().next().unwrap();
                let n = m.services[&id].1.len();
                after
                    .endpoints
                    .insert(endpoint_key(id, 0, n), EndpointValue::new(1));
            }
            let want = State::adopt(&after);
            let mut changed = diff(&before, &after);
            let walked = super::diff(&before, &after);
            assert_eq!(
                (
                    &walked.frontends,
                    &walked.services,
                    &walked.endpoints,
                    &walked.backends
                ),
                (
                    &changed.frontends,
                    &changed.services,
                    &changed.endpoints,
                    &changed.backends
                )
            );
            // Keys written back to the same value count as changed too.
            changed.backends.insert(1);
            if st.patch(&after, &changed) {
                patched += 1;
                assert!(same(&st, &want), "patched view differs from adoption");
                assert_eq!(st.expected(), after);
                for (pool, used) in [
                    (
                        &st.service_ids,
                        after
                            .services
                            .keys()
                            .map(|k| k.service_id)
                            .collect::<Vec<_>>(),
                    ),
                    (
                        &st.backend_uids,
                        after.backends.keys().map(|k| k.backend_uid).collect(),
                    ),
                ] {
                    for id in used {
                        assert!(
                            id <= pool.next && !pool.free.contains(&id),
                            "id {id} in use but free"
                        );
                    }
                }
            } else {
                fell_back += 1;
                assert!(torn || stale_case, "a plain change was not patched");
            }
        }
        assert!(patched > 550, "patched {patched}, fell back {fell_back}");
    }
}
