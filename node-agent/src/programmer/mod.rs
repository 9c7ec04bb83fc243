//! Transactional programming of the datapath maps from a desired state
//! (Kmesh issue 1679 / PR 1680, done strictly):
//!
//! - for every (service, prio) the endpoint keys are exactly 1..=count at every
//!   instant a connect can observe: additions are written before the count is
//!   raised, the count is lowered before tail keys are deleted;
//! - removed backends are overwritten out of visible slots first;
//! - a backend entry exists as long as an endpoint refers to it;
//! - each service change is one transaction: a failed write rolls the maps
//!   back and leaves the agent's view untouched, the failure is reported and
//!   the next sync retries it.

pub mod bucket;
pub mod fingerprint;
pub mod state;
pub mod txn;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_ebpf::{
    raw_addr, BackendKey, BackendValue, EndpointValue, FrontendKey, FrontendValue, LbPolicy,
    ServiceKey, ServiceValue, PRIO_COUNT,
};
use serde::Serialize;

use crate::maps::{MapError, MapSet};
use crate::model::{DesiredState, ServiceSpec};
use fingerprint::Fingerprinter;
pub use fingerprint::{Fingerprint, Fingerprints};
pub use state::{Changed, State, Svc, ADOPTED_PREFIX, MISSING};
pub use txn::FaultPlan;
use txn::Txn;

/// One service that could not be programmed.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SyncFailure {
    /// Service name.
    pub service: String,
    /// Why.
    pub error: String,
}

/// What one sync did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SyncReport {
    /// Services created.
    pub created: usize,
    /// Services changed.
    pub updated: usize,
    /// Services removed.
    pub removed: usize,
    /// Services already as desired.
    pub unchanged: usize,
    /// Services whose transaction failed and was rolled back.
    pub failed: Vec<SyncFailure>,
    /// Map writes kept.
    pub writes: usize,
    /// Map writes undone by rollbacks.
    pub rolled_back: usize,
    /// The view was rebuilt from the maps before this sync.
    pub resynced: bool,
    /// Wall time.
    #[serde(serialize_with = "ser_micros")]
    pub duration: Duration,
}

fn ser_micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_micros() as u64)
}

impl SyncReport {
    /// Whether every service was programmed.
    pub fn ok(&self) -> bool {
        self.failed.is_empty()
    }
}

/// A service in map form.
struct Target {
    vips: Vec<FrontendKey>,
    base: ServiceValue,
    buckets: [Vec<BackendValue>; PRIO_COUNT],
}

impl Target {
    fn of(spec: &ServiceSpec) -> Self {
        let mut base = ServiceValue {
            lb_policy: spec.policy as u32,
            ..Default::default()
        };
        for (i, p) in spec.ports.iter().enumerate().take(baton_ebpf::MAX_PORTS) {
            base.service_port[i] = u32::from(p.port);
            base.target_port[i] = u32::from(p.target_port);
        }
        let mut buckets: [Vec<BackendValue>; PRIO_COUNT] = Default::default();
        for e in &spec.endpoints {
            // RANDOM balances over every endpoint: they all live in bucket 0.
            let p = if spec.policy == LbPolicy::Random {
                0
            } else {
                usize::from(e.priority).min(PRIO_COUNT - 1)
            };
            let bv = BackendValue::new(raw_addr(e.address), e.port);
            if !buckets[p].contains(&bv) {
                buckets[p].push(bv);
            }
        }
        Self {
            vips: spec
                .vips
                .iter()
                .map(|ip| FrontendKey {
                    addr: raw_addr(*ip),
                })
                .collect(),
            base,
            buckets,
        }
    }
}

fn without_counts(v: &ServiceValue) -> ServiceValue {
    ServiceValue {
        prio_endpoint_count: [0; PRIO_COUNT],
        ..*v
    }
}

/// Errors that stop a whole sync (not one service).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Reading the maps to rebuild the view failed.
    #[error("rebuilding the view from the maps: {0}")]
    Adopt(#[source] MapError),
}

/// Owns the agent's view of the maps and programs them.
#[derive(Debug, Default)]
pub struct Programmer {
    state: State,
    fingerprinter: Fingerprinter,
    faults: FaultPlan,
    /// A rollback failed: the view may differ from the maps; rebuild before the next sync.
    dirty: bool,
    /// The view may hold adopted services not yet claimed (only adoption makes them):
    /// saves looking at every name on every sync.
    unclaimed: bool,
}

impl Programmer {
    /// An empty view (fresh maps).
    pub fn new() -> Self {
        Self::default()
    }

    /// A view rebuilt from existing maps (restart from pins).
    pub fn adopt(maps: &MapSet) -> Result<Self, MapError> {
        Ok(Self {
            state: State::adopt(&maps.snapshot()?),
            unclaimed: true,
            ..Self::default()
        })
    }

    /// A view that equals the maps, built elsewhere (a handover's view,
    /// adopted from what it read during its pre-copy: no map is read again).
    pub fn from_state(state: State) -> Self {
        Self {
            state,
            unclaimed: true,
            ..Self::default()
        }
    }

    /// Claims adopted services for `desired` and remembers the fingerprint
    /// of every one that already matches it, writing nothing: a handover's
    /// successor does this before its commit, so that its first sync after
    /// the commit skips them instead of comparing all of them. Returns how
    /// many matched.
    pub fn prematch(&mut self, desired: &DesiredState) -> usize {
        self.claim_adopted(desired);
        let mut matched = 0;
        for spec in &desired.services {
            let Some(svc) = self.state.services.get(&spec.name) else {
                continue;
            };
            if self.unchanged(svc, &Target::of(spec)) {
                let fp = self.fingerprinter.of(spec);
                self.remember(spec, fp);
                matched += 1;
            }
        }
        matched
    }

    /// [`State::patch`] of the view.
    pub fn patch(&mut self, after: &crate::maps::Snapshot, changed: &Changed) -> bool {
        self.unclaimed = true;
        self.state.patch(after, changed)
    }

    /// The current view.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Installs a fault plan (tests).
    pub fn set_faults(&mut self, plan: FaultPlan) {
        self.faults = plan;
    }

    /// The fault plan, with its write counter.
    pub fn faults(&self) -> &FaultPlan {
        &self.faults
    }

    /// Whether the view must be rebuilt from the maps.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Brings the maps to `desired`, service by service.
    pub fn sync(&mut self, maps: &MapSet, desired: &DesiredState) -> Result<SyncReport, SyncError> {
        let start = Instant::now();
        let mut report = SyncReport::default();
        if self.dirty {
            self.state = State::adopt(&maps.snapshot().map_err(SyncError::Adopt)?);
            self.dirty = false;
            self.unclaimed = true;
            report.resynced = true;
        }
        self.claim_adopted(desired);
        // Desired services the view holds (all of them in the view's services).
        let mut present = 0;
        for spec in &desired.services {
            if self.state.fingerprints.holds(spec) {
                report.unchanged += 1;
                present += 1;
                continue;
            }
            let fp = self.fingerprinter.of(spec);
            if self.state.fingerprints.hash_of(&spec.name) == Some(fp) {
                // Equal content from another source read: keep the new `Arc`, so the
                // next sync from the same state skips it without hashing.
                self.remember(spec, fp);
                report.unchanged += 1;
                present += 1;
                continue;
            }
            let target = Target::of(spec);
            let existing = self.state.services.get(&spec.name);
            if existing.is_some_and(|svc| self.unchanged(svc, &target)) {
                self.remember(spec, fp);
                report.unchanged += 1;
                present += 1;
                continue;
            }
            let created = existing.is_none();
            match self.apply(maps, &spec.name, &target) {
                Ok(w) => {
                    present += 1;
                    self.remember(spec, fp);
                    report.writes += w;
                    if created {
                        report.created += 1;
                    } else {
                        report.updated += 1;
                    }
                }
                Err((e, undone)) => {
                    report.rolled_back += undone;
                    report.failed.push(SyncFailure {
                        service: spec.name.clone(),
                        error: e.to_string(),
                    });
                }
            }
        }
        // Names are unique in a desired state: when the view holds exactly the
        // desired services, nothing is gone and the name set need not be built.
        let gone: Vec<String> = if present == self.state.services.len() {
            Vec::new()
        } else {
            let wanted: HashSet<&str> = desired.services.iter().map(|s| s.name.as_str()).collect();
            self.state
                .services
                .keys()
                .filter(|n| !wanted.contains(n.as_str()))
                .cloned()
                .collect()
        };
        for name in gone {
            match self.remove(maps, &name) {
                Ok(w) => {
                    report.writes += w;
                    report.removed += 1;
                }
                Err((e, undone)) => {
                    report.rolled_back += undone;
                    report.failed.push(SyncFailure {
                        service: name,
                        error: e.to_string(),
                    });
                }
            }
        }
        match self.collect_garbage(maps) {
            Ok(w) => report.writes += w,
            Err((e, undone)) => {
                report.rolled_back += undone;
                report.failed.push(SyncFailure {
                    service: "(stale entries)".into(),
                    error: e.to_string(),
                });
            }
        }
        report.duration = start.elapsed();
        Ok(report)
    }

    /// Records that the maps hold `spec` (hashed `fp`).
    fn remember(&mut self, spec: &Arc<ServiceSpec>, fp: u64) {
        self.state.fingerprints.insert(spec, fp);
    }

    /// Renames adopted services to the desired service that owns one of their VIPs.
    fn claim_adopted(&mut self, desired: &DesiredState) {
        if !self.unclaimed {
            return;
        }
        let st = &mut self.state;
        if !st.services.keys().any(|n| n.starts_with(ADOPTED_PREFIX)) {
            self.unclaimed = false;
            return;
        }
        let by_id: HashMap<u32, String> =
            st.services.iter().map(|(n, s)| (s.id, n.clone())).collect();
        for spec in &desired.services {
            if st.services.contains_key(&spec.name) {
                continue;
            }
            let owner = spec
                .vips
                .iter()
                .filter_map(|ip| {
                    st.vip_owner.get(&FrontendKey {
                        addr: raw_addr(*ip),
                    })
                })
                .filter_map(|id| by_id.get(id))
                .find(|n| n.starts_with(ADOPTED_PREFIX) && st.services.contains_key(n.as_str()))
                .cloned();
            if let Some(old) = owner {
                if let Some(svc) = st.services.remove(&old) {
                    st.services.insert(spec.name.clone(), svc);
                }
            }
        }
    }

    fn unchanged(&self, svc: &Svc, t: &Target) -> bool {
        let vips: HashSet<_> = svc.vips.iter().collect();
        if vips.len() != t.vips.len() || !t.vips.iter().all(|v| vips.contains(v)) {
            return false;
        }
        if without_counts(&svc.value) != t.base {
            return false;
        }
        svc.buckets.iter().zip(&t.buckets).all(|(cur, want)| {
            cur.len() == want.len()
                && cur.iter().all(|uid| {
                    self.state
                        .backend_by_uid
                        .get(uid)
                        .is_some_and(|bv| want.contains(bv))
                })
        })
    }

    /// Creates or updates one service in one transaction.
    fn apply(&mut self, maps: &MapSet, name: &str, t: &Target) -> Result<usize, (MapError, usize)> {
        let st = &mut self.state;
        let existing = st.services.get(name).cloned();
        let id = existing
            .as_ref()
            .map_or_else(|| st.service_ids.alloc(), |s| s.id);
        // Fresh backend uids first, so the writes below only read the view.
        let mut fresh: HashMap<BackendValue, u32> = HashMap::new();
        for bv in t.buckets.iter().flatten() {
            if !st.backends.contains_key(bv) && !fresh.contains_key(bv) {
                fresh.insert(*bv, st.backend_uids.alloc());
            }
        }
        let uid_of = |bv: &BackendValue| {
            st.backends
                .get(bv)
                .map(|b| b.uid)
                .or_else(|| fresh.get(bv).copied())
        };
        let targets: [Vec<u32>; PRIO_COUNT] =
            std::array::from_fn(|p| t.buckets[p].iter().filter_map(uid_of).collect::<Vec<u32>>());
        let empty: [Vec<u32>; PRIO_COUNT] = Default::default();
        let cur = existing.as_ref().map_or(&empty, |s| &s.buckets);
        let plans: [bucket::BucketPlan; PRIO_COUNT] =
            std::array::from_fn(|p| bucket::plan(&cur[p], &targets[p]));
        let mut value = t.base;
        for (p, plan) in plans.iter().enumerate() {
            value.prio_endpoint_count[p] = plan.after.len() as u32;
        }

        let mut txn = Txn::new(&mut self.faults);
        let res = write_service(
            &mut txn,
            maps,
            st,
            id,
            existing.as_ref(),
            t,
            &fresh,
            &plans,
            &value,
        );
        match res {
            Ok(dead) => {
                let writes = txn.commit();
                let buckets = plans.map(|p| p.after);
                commit_service(
                    st,
                    name,
                    id,
                    existing.as_ref(),
                    t,
                    fresh,
                    buckets,
                    value,
                    dead,
                );
                Ok(writes)
            }
            Err(e) => {
                let (undone, failed) = undo(txn);
                self.dirty |= failed;
                let st = &mut self.state;
                for uid in fresh.into_values() {
                    st.backend_uids.release(uid);
                }
                if existing.is_none() {
                    st.service_ids.release(id);
                }
                Err((e, undone))
            }
        }
    }

    /// Removes one service in one transaction.
    fn remove(&mut self, maps: &MapSet, name: &str) -> Result<usize, (MapError, usize)> {
        let Some(svc) = self.state.services.get(name).cloned() else {
            return Ok(0);
        };
        let st = &self.state;
        let mut txn = Txn::new(&mut self.faults);
        let res = (|| -> Result<Vec<u32>, MapError> {
            let fv = FrontendValue { service_id: svc.id };
            for vip in &svc.vips {
                if st.vip_owner.get(vip) == Some(&svc.id) {
                    txn.delete(&maps.frontend, vip, &fv)?;
                }
            }
            txn.delete(
                &maps.service,
                &ServiceKey { service_id: svc.id },
                &svc.value,
            )?;
            for (key, ev) in svc.endpoints() {
                txn.delete(&maps.endpoint, &key, &ev)?;
            }
            let dead = dead_backends(st, &svc.buckets, &[]);
            for uid in &dead {
                if let Some(bv) = st.backend_by_uid.get(uid) {
                    txn.delete(&maps.backend, &BackendKey { backend_uid: *uid }, bv)?;
                }
            }
            Ok(dead)
        })();
        match res {
            Ok(dead) => {
                let writes = txn.commit();
                let st = &mut self.state;
                st.services.remove(name);
                st.fingerprints.remove(name);
                for vip in &svc.vips {
                    if st.vip_owner.get(vip) == Some(&svc.id) {
                        st.vip_owner.remove(vip);
                    }
                }
                st.service_ids.release(svc.id);
                adjust_refs(st, &svc.buckets, -1);
                drop_backends(st, &dead);
                Ok(writes)
            }
            Err(e) => {
                let (undone, failed) = undo(txn);
                self.dirty |= failed;
                Err((e, undone))
            }
        }
    }

    /// Deletes entries found at adoption that no service accounts for, and unreferenced backends.
    fn collect_garbage(&mut self, maps: &MapSet) -> Result<usize, (MapError, usize)> {
        let st = &self.state;
        if st.stale.is_empty() && !st.orphans_possible {
            return Ok(0);
        }
        let orphans: Vec<u32> = st
            .backends
            .values()
            .filter(|b| b.refs == 0)
            .map(|b| b.uid)
            .collect();
        let mut txn = Txn::new(&mut self.faults);
        let res = (|| -> Result<(), MapError> {
            for (k, v) in &st.stale.frontends {
                txn.delete(&maps.frontend, k, v)?;
            }
            for (k, v) in &st.stale.endpoints {
                txn.delete(&maps.endpoint, k, v)?;
            }
            for (k, v) in &st.stale.backends {
                txn.delete(&maps.backend, k, v)?;
            }
            for uid in &orphans {
                if let Some(bv) = st.backend_by_uid.get(uid) {
                    txn.delete(&maps.backend, &BackendKey { backend_uid: *uid }, bv)?;
                }
            }
            Ok(())
        })();
        match res {
            Ok(()) => {
                let writes = txn.commit();
                let st = &mut self.state;
                st.stale = Default::default();
                st.orphans_possible = false;
                drop_backends(st, &orphans);
                Ok(writes)
            }
            Err(e) => {
                let (undone, failed) = undo(txn);
                self.dirty |= failed;
                Err((e, undone))
            }
        }
    }
}

/// Rolls `txn` back; the flag says the rollback itself failed.
fn undo(txn: Txn<'_, '_>) -> (usize, bool) {
    match txn.rollback() {
        Ok(n) => (n, false),
        Err(e) => {
            tracing::error!(error = %e, "rollback failed; rebuilding the view from the maps at the next sync");
            (0, true)
        }
    }
}

/// The map writes of one service create/update, in invariant-keeping order.
/// Returns the backend uids that lose their last reference.
#[allow(clippy::too_many_arguments)]
fn write_service<'m>(
    txn: &mut Txn<'m, '_>,
    maps: &'m MapSet,
    st: &State,
    id: u32,
    existing: Option<&Svc>,
    t: &Target,
    fresh: &HashMap<BackendValue, u32>,
    plans: &[bucket::BucketPlan; PRIO_COUNT],
    value: &ServiceValue,
) -> Result<Vec<u32>, MapError> {
    // 1. Backends before anything can point at them.
    let mut fresh_sorted: Vec<_> = fresh.iter().collect();
    fresh_sorted.sort_by_key(|(_, uid)| **uid);
    for (bv, uid) in fresh_sorted {
        txn.put(&maps.backend, &BackendKey { backend_uid: *uid }, bv, None)?;
    }
    // 2. Endpoint slots: overwrites of visible slots and appends past the count.
    let empty: [Vec<u32>; PRIO_COUNT] = Default::default();
    let cur = existing.map_or(&empty, |s| &s.buckets);
    let mut written: Vec<HashMap<usize, u32>> = vec![HashMap::new(); PRIO_COUNT];
    for (p, plan) in plans.iter().enumerate() {
        for &(i, uid) in &plan.writes {
            let key = state::endpoint_key(id, p, i);
            let prev = cur[p]
                .get(i)
                .filter(|&&u| u != MISSING)
                .map(|&u| EndpointValue::new(u));
            txn.put(
                &maps.endpoint,
                &key,
                &EndpointValue::new(uid),
                prev.as_ref(),
            )?;
            written[p].insert(i, uid);
        }
    }
    // 3. One service write flips every count, the ports and the policy at once.
    let key = ServiceKey { service_id: id };
    if existing.map(|s| s.value) != Some(*value) {
        txn.put(&maps.service, &key, value, existing.map(|s| &s.value))?;
    }
    // 4. Tail keys, now past the count.
    for (p, plan) in plans.iter().enumerate() {
        for &i in &plan.deletes {
            let prev = written[p]
                .get(&i)
                .copied()
                .or_else(|| cur[p].get(i).copied())
                .filter(|&u| u != MISSING);
            if let Some(uid) = prev {
                let key = state::endpoint_key(id, p, i);
                txn.delete(&maps.endpoint, &key, &EndpointValue::new(uid))?;
            }
        }
    }
    // 5. Frontends last: the service is complete before a VIP leads to it.
    let fv = FrontendValue { service_id: id };
    for vip in &t.vips {
        let owner = st.vip_owner.get(vip).copied();
        if owner != Some(id) {
            txn.put(
                &maps.frontend,
                vip,
                &fv,
                owner.map(|o| FrontendValue { service_id: o }).as_ref(),
            )?;
        }
    }
    if let Some(svc) = existing {
        for vip in svc.vips.iter().filter(|v| !t.vips.contains(v)) {
            if st.vip_owner.get(vip) == Some(&id) {
                txn.delete(&maps.frontend, vip, &fv)?;
            }
        }
    }
    // 6. Backends nothing points at any more.
    let after: [Vec<u32>; PRIO_COUNT] = std::array::from_fn(|p| plans[p].after.clone());
    let dead = dead_backends(st, cur, &after);
    for uid in &dead {
        if let Some(bv) = st.backend_by_uid.get(uid) {
            txn.delete(&maps.backend, &BackendKey { backend_uid: *uid }, bv)?;
        }
    }
    Ok(dead)
}

/// Backends whose reference count drops to zero when `before` becomes `after`.
fn dead_backends(st: &State, before: &[Vec<u32>; PRIO_COUNT], after: &[Vec<u32>]) -> Vec<u32> {
    let mut delta: HashMap<u32, i64> = HashMap::new();
    for &uid in before.iter().flatten().filter(|&&u| u != MISSING) {
        *delta.entry(uid).or_default() -= 1;
    }
    for &uid in after.iter().flatten() {
        *delta.entry(uid).or_default() += 1;
    }
    let mut dead: Vec<u32> = delta
        .into_iter()
        .filter(|&(uid, d)| {
            d < 0
                && st
                    .backend_by_uid
                    .get(&uid)
                    .and_then(|bv| st.backends.get(bv))
                    .is_some_and(|b| i64::from(b.refs) + d <= 0)
        })
        .map(|(uid, _)| uid)
        .collect();
    dead.sort_unstable();
    dead
}

fn adjust_refs(st: &mut State, buckets: &[Vec<u32>; PRIO_COUNT], sign: i32) {
    for &uid in buckets.iter().flatten().filter(|&&u| u != MISSING) {
        if let Some(b) = st
            .backend_by_uid
            .get(&uid)
            .and_then(|bv| st.backends.get_mut(bv))
        {
            b.refs = b.refs.saturating_add_signed(sign);
        }
    }
}

fn drop_backends(st: &mut State, dead: &[u32]) {
    for uid in dead {
        if let Some(bv) = st.backend_by_uid.remove(uid) {
            st.backends.remove(&bv);
            st.backend_uids.release(*uid);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn commit_service(
    st: &mut State,
    name: &str,
    id: u32,
    existing: Option<&Svc>,
    t: &Target,
    fresh: HashMap<BackendValue, u32>,
    buckets: [Vec<u32>; PRIO_COUNT],
    value: ServiceValue,
    dead: Vec<u32>,
) {
    for (bv, uid) in fresh {
        st.backends.insert(bv, state::Backend { uid, refs: 0 });
        st.backend_by_uid.insert(uid, bv);
    }
    if let Some(svc) = existing {
        adjust_refs(st, &svc.buckets, -1);
        for vip in svc.vips.iter().filter(|v| !t.vips.contains(v)) {
            if st.vip_owner.get(vip) == Some(&id) {
                st.vip_owner.remove(vip);
            }
        }
    }
    adjust_refs(st, &buckets, 1);
    drop_backends(st, &dead);
    for vip in &t.vips {
        if let Some(prev) = st.vip_owner.insert(*vip, id).filter(|&p| p != id) {
            // The VIP moved here from another service: that one no longer owns
            // it, and no longer matches its spec's fingerprint.
            if let Some((other_name, other)) = st.services.iter_mut().find(|(_, s)| s.id == prev) {
                other.vips.retain(|v| v != vip);
                st.fingerprints.remove(other_name.as_str());
            }
        }
    }
    st.services.insert(
        name.to_string(),
        Svc {
            id,
            vips: t.vips.clone(),
            value,
            buckets,
        },
    );
}
