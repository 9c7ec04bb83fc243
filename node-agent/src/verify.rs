//! Walks the maps and reports every broken invariant: holes in a bucket, keys
//! past a count, endpoints naming missing backends, backends nobody uses,
//! frontends naming missing services. Also compares the maps with the agent's
//! view when one is given.

use std::collections::{BTreeSet, HashSet};

use baton_ebpf::{ip_from_raw, EndpointKey, LbPolicy, PRIO_COUNT};

use crate::maps::Snapshot;

// The report is the admin socket's `verify` answer: its types live with the
// other answers, re-exported here for the callers of `check`.
pub use baton_api::admin::{Verify, Violation};

/// Checks the invariants of one snapshot of the maps.
pub fn check(s: &Snapshot) -> Verify {
    let mut v = BTreeSet::new();
    for (sk, sv) in &s.services {
        if LbPolicy::from_raw(sv.lb_policy).is_none() {
            v.insert(Violation::BadPolicy {
                service: sk.service_id,
                policy: sv.lb_policy,
            });
        }
        for p in 0..PRIO_COUNT {
            for index in 1..=sv.prio_endpoint_count[p] {
                let key = EndpointKey {
                    service_id: sk.service_id,
                    prio: p as u32,
                    backend_index: index,
                };
                if !s.endpoints.contains_key(&key) {
                    v.insert(Violation::Hole {
                        service: sk.service_id,
                        prio: p as u32,
                        index,
                    });
                }
            }
        }
    }
    let mut used = HashSet::new();
    for (ek, ev) in &s.endpoints {
        let (service, prio, index) = (ek.service_id, ek.prio, ek.backend_index);
        match s.services.get(&baton_ebpf::ServiceKey {
            service_id: service,
        }) {
            None => {
                v.insert(Violation::OrphanEndpoint {
                    service,
                    prio,
                    index,
                });
            }
            Some(sv) => {
                let count = sv
                    .prio_endpoint_count
                    .get(prio as usize)
                    .copied()
                    .unwrap_or(0);
                if index == 0 || index > count {
                    v.insert(Violation::PastCount {
                        service,
                        prio,
                        index,
                        count,
                    });
                }
            }
        }
        if !s.backends.contains_key(&baton_ebpf::BackendKey {
            backend_uid: ev.backend_uid,
        }) {
            v.insert(Violation::DanglingBackend {
                service,
                prio,
                index,
                backend: ev.backend_uid,
            });
        }
        used.insert(ev.backend_uid);
    }
    for bk in s.backends.keys() {
        if !used.contains(&bk.backend_uid) {
            v.insert(Violation::UnusedBackend {
                backend: bk.backend_uid,
            });
        }
    }
    for (fk, fv) in &s.frontends {
        if !s.services.contains_key(&baton_ebpf::ServiceKey {
            service_id: fv.service_id,
        }) {
            v.insert(Violation::DanglingFrontend {
                vip: ip_from_raw(&fk.addr).to_string(),
                service: fv.service_id,
            });
        }
    }
    Verify {
        services: s.services.len() as u64,
        endpoints: s.endpoints.len() as u64,
        backends: s.backends.len() as u64,
        frontends: s.frontends.len() as u64,
        violations: v.into_iter().collect(),
    }
}

fn diff<K: Ord, V: PartialEq>(
    map: &'static str,
    maps: &std::collections::BTreeMap<K, V>,
    view: &std::collections::BTreeMap<K, V>,
) -> Option<Violation> {
    let only_in_maps = maps.keys().filter(|k| !view.contains_key(k)).count();
    let only_in_view = view.keys().filter(|k| !maps.contains_key(k)).count();
    let differing = maps
        .iter()
        .filter(|(k, v)| view.get(k).is_some_and(|w| w != *v))
        .count();
    (only_in_maps + only_in_view + differing > 0).then(|| Violation::ViewMismatch {
        map: map.to_owned(),
        only_in_maps: only_in_maps as u64,
        only_in_view: only_in_view as u64,
        differing: differing as u64,
    })
}

/// Checks the invariants and that the maps equal the agent's expected contents.
pub fn check_against(maps: &Snapshot, view: &Snapshot) -> Verify {
    let mut r = check(maps);
    r.violations
        .extend(diff("frontend", &maps.frontends, &view.frontends));
    r.violations
        .extend(diff("service", &maps.services, &view.services));
    r.violations
        .extend(diff("endpoint", &maps.endpoints, &view.endpoints));
    r.violations
        .extend(diff("backend", &maps.backends, &view.backends));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_ebpf::*;

    /// Adds endpoint (service 1, prio 0, `index`) → `uid`.
    fn add_ep(s: &mut Snapshot, index: u32, uid: u32) {
        let key = EndpointKey {
            service_id: 1,
            prio: 0,
            backend_index: index,
        };
        s.endpoints.insert(key, EndpointValue::new(uid));
    }

    fn snap_with_hole() -> Snapshot {
        let mut s = Snapshot::default();
        let mut sv = ServiceValue::default();
        sv.prio_endpoint_count[0] = 2;
        s.services.insert(ServiceKey { service_id: 1 }, sv);
        add_ep(&mut s, 1, 7);
        add_ep(&mut s, 3, 8);
        s.backends
            .insert(BackendKey { backend_uid: 7 }, BackendValue::default());
        s.backends
            .insert(BackendKey { backend_uid: 9 }, BackendValue::default());
        s.frontends
            .insert(FrontendKey::default(), FrontendValue { service_id: 5 });
        s
    }

    #[test]
    fn finds_every_kind_of_breakage() {
        let r = check(&snap_with_hole());
        let kinds: Vec<String> = r
            .violations
            .iter()
            .map(|v| {
                serde_json::to_value(v)
                    .ok()
                    .and_then(|j| j["kind"].as_str().map(String::from))
                    .unwrap_or_default()
            })
            .collect();
        for k in [
            "hole",
            "past_count",
            "dangling_backend",
            "unused_backend",
            "dangling_frontend",
        ] {
            assert!(kinds.iter().any(|x| x == k), "{k} not reported: {kinds:?}");
        }
    }

    #[test]
    fn clean_snapshot_is_clean_and_view_diff_is_caught() {
        let mut s = Snapshot::default();
        let mut sv = ServiceValue::default();
        sv.prio_endpoint_count[0] = 1;
        s.services.insert(ServiceKey { service_id: 1 }, sv);
        add_ep(&mut s, 1, 7);
        s.backends
            .insert(BackendKey { backend_uid: 7 }, BackendValue::default());
        assert!(check(&s).is_clean());
        let mut view = s.clone();
        view.backends.insert(
            BackendKey { backend_uid: 7 },
            BackendValue {
                port: 1,
                ..Default::default()
            },
        );
        assert!(!check_against(&s, &view).is_clean());
    }
}
