use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::Event;
use serde_json::{json, Value};

use super::*;
use crate::source::kube::build;

use crate::testing::Rng;

/// Stores and writers fed like the watches feed them, with the watches' marking rules.
struct Cluster {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    svc_writer: Writer<Service>,
    slice_writer: Writer<EndpointSlice>,
    tracker: Tracker,
    /// The last full build's state and sorted notes.
    last: Option<(crate::model::DesiredState, Vec<String>)>,
}

impl Cluster {
    fn new() -> Self {
        let (services, svc_writer) = reflector::store();
        let (slices, slice_writer) = reflector::store();
        Self {
            services,
            slices,
            svc_writer,
            slice_writer,
            tracker: Tracker {
                dirty: Dirty {
                    all: true,
                    keys: HashSet::new(),
                },
                ..Tracker::default()
            },
            last: None,
        }
    }

    fn service(&mut self, svc: Service, deleted: bool) {
        self.tracker.service_event(&svc);
        let ev = if deleted {
            Event::Delete(svc)
        } else {
            Event::Apply(svc)
        };
        self.svc_writer.apply_watcher_event(&ev);
    }

    fn slice(&mut self, slice: EndpointSlice, deleted: bool) {
        self.tracker.slice_event(&slice, deleted);
        let ev = if deleted {
            Event::Delete(slice)
        } else {
            Event::Apply(slice)
        };
        self.slice_writer.apply_watcher_event(&ev);
    }

    /// The incremental build of what changed, checked against a full build.
    fn check(&mut self, inc: &mut Incremental, here: &Locality) -> usize {
        let changes = self.tracker.take();
        let dirty = &changes.dirty;
        let changed = inc.update(&changes, &self.services, &self.slices, here);
        let got = inc.built();
        let (svcs, slices) = (self.services.state(), self.slices.state());
        let want = build(svcs.iter().map(|s| &**s), slices.iter().map(|s| &**s), here);
        assert_eq!(got.state, want.state, "incremental != full after {dirty:?}");
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        let notes = sorted(want.notes);
        assert_eq!(sorted(got.notes), notes);
        let now = (want.state, notes);
        assert_eq!(
            changed,
            self.last.as_ref() != Some(&now),
            "`changed` after {dirty:?}"
        );
        self.last = Some(now);
        inc.last_rebuilt
    }
}

fn svc(i: usize, kind: usize) -> Service {
    let vip = format!("10.96.{}.{}", i / 200, i % 200 + 1);
    let spec = match kind {
        0 => json!({"clusterIP": vip, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
        1 => json!({"clusterIP": vip, "trafficDistribution": "PreferClose",
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
        2 => json!({"clusterIP": vip, "clusterIPs": [vip, format!("fd00::{:x}", i + 1)],
                    "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}),
        _ => json!({"clusterIP": "None", "ports": [{"port": 80}]}),
    };
    serde_json::from_value(
        json!({"metadata": {"namespace": "ns", "name": format!("s{i}")}, "spec": spec}),
    )
    .expect("test Service parses")
}

fn slice(name: &str, owner: usize, v6: bool, eps: &[(usize, usize)]) -> EndpointSlice {
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|&(a, node)| {
            let addr = if v6 {
                format!("fd01::{a:x}")
            } else {
                format!("10.1.{}.{}", a / 250, a % 250 + 1)
            };
            json!({"addresses": [addr], "conditions": {"ready": a % 7 != 0},
                   "nodeName": format!("n{node}"), "zone": format!("z{}", node % 2)})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"namespace": "ns", "name": name,
                     "labels": {SERVICE_NAME_LABEL: format!("s{owner}")}},
        "addressType": if v6 { "IPv6" } else { "IPv4" },
        "ports": [{"name": "http", "port": 8080 + (owner % 3) as i32}, {"name": "dns", "port": 53}],
        "endpoints": endpoints,
    }))
    .expect("test EndpointSlice parses")
}

#[test]
fn random_changes_give_what_the_full_build_gives() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for here in [
        Locality::default(),
        Locality {
            node: Some("n1".into()),
            zone: None,
        },
    ] {
        let mut c = Cluster::new();
        let n = 40;
        for i in 0..n {
            c.service(svc(i, i % 4), false);
            let eps: Vec<(usize, usize)> = (0..5).map(|j| (i * 5 + j, rng.below(4))).collect();
            c.slice_of(&format!("s{i}-a"), i, false, &eps);
        }
        let mut inc = Incremental::default();
        assert_eq!(c.check(&mut inc, &here), n, "the first build is full");
        let mut next = 1000;
        for step in 0..400 {
            let i = rng.below(n);
            match rng.below(8) {
                0 => c.service(svc(i, rng.below(4)), false),
                1 => c.service(svc(i, 0), true),
                2 => c.slice_of(&format!("s{i}-a"), i, false, &[]),
                3 => c.slice_of(&format!("s{i}-b"), i, true, &[(next, 1)]),
                // A slice moves to another Service: both must be rebuilt.
                4 => c.slice_of(&format!("s{i}-a"), rng.below(n), false, &[(next, 2)]),
                5 => c.slice(slice(&format!("s{i}-a"), i, false, &[]), true),
                _ => {
                    let eps: Vec<(usize, usize)> = (0..1 + rng.below(6))
                        .map(|j| (next + j, rng.below(4)))
                        .collect();
                    c.slice_of(&format!("s{i}-a"), i, false, &eps);
                }
            }
            next += 10;
            let touched = c.tracker.dirty.keys.len();
            let full = c.tracker.dirty.all;
            let rebuilt = c.check(&mut inc, &here);
            if !full && rebuilt != n {
                assert_eq!(rebuilt, touched, "step {step}: only the touched Services");
            }
        }
    }
}

impl Cluster {
    fn slice_of(&mut self, name: &str, owner: usize, v6: bool, eps: &[(usize, usize)]) {
        self.slice(slice(name, owner, v6, eps), false);
    }
}

#[test]
fn a_slice_moving_to_another_service_marks_both() {
    let key = |s: &str| ("ns".to_string(), s.to_string());
    let mut t = Tracker::default();
    t.slice_event(&slice("x", 1, false, &[]), false);
    let c = t.take();
    assert_eq!(c.dirty.keys, HashSet::from([key("s1")]));
    assert_eq!(c.slices[&key("s1")], ["x"]);
    t.slice_event(&slice("x", 2, false, &[]), false);
    let c = t.take();
    assert_eq!(c.dirty.keys, HashSet::from([key("s1"), key("s2")]));
    assert!(c.slices[&key("s1")].is_empty(), "x left s1");
    assert_eq!(c.slices[&key("s2")], ["x"]);
    t.slice_event(&slice("x", 2, false, &[]), true);
    let c = t.take();
    assert_eq!(c.dirty.keys, HashSet::from([key("s2")]));
    assert!(c.slices[&key("s2")].is_empty());
}

#[test]
fn a_relisting_replaces_the_slice_index_only_when_complete() {
    let key = |s: &str| ("ns".to_string(), s.to_string());
    let mut t = Tracker::default();
    t.slice_event(&slice("x", 1, false, &[]), false);
    t.slice_event(&slice("y", 1, false, &[]), false);
    t.take();
    // The cache still holds x and y until the listing is done: so does the index.
    t.slices_relisting();
    t.slice_event(&slice("y", 1, false, &[]), false);
    t.service_event(&svc(1, 0));
    assert_eq!(t.take().slices[&key("s1")], ["x", "y"]);
    t.slices_relisted();
    let c = t.take();
    assert!(c.dirty.all, "a relisting rebuilds everything");
    t.service_event(&svc(1, 0));
    assert_eq!(
        t.take().slices[&key("s1")],
        ["y"],
        "x was deleted during the gap"
    );
}

#[test]
fn a_new_zone_for_this_node_rebuilds_everything() {
    let here = Locality {
        node: Some("n1".into()),
        zone: None,
    };
    let mut c = Cluster::new();
    for i in 0..10 {
        c.service(svc(i, 1), false);
        c.slice_of(&format!("s{i}-a"), i, false, &[(i * 2, 0), (i * 2 + 1, 3)]);
    }
    let mut inc = Incremental::default();
    c.check(&mut inc, &here);
    // The first endpoint on n1 gives this node zone z1: every PreferClose Service changes.
    c.slice_of("s0-a", 0, false, &[(500, 1)]);
    assert_eq!(c.check(&mut inc, &here), 10);
    // Nothing changed the zone: only s3.
    c.slice_of("s3-a", 3, false, &[(501, 2)]);
    assert_eq!(c.check(&mut inc, &here), 1);
}

#[test]
fn a_change_and_its_revert_between_two_builds_is_no_change() {
    let here = Locality::default();
    let mut c = Cluster::new();
    c.service(svc(1, 0), false);
    c.slice_of("s1-a", 1, false, &[(1, 0)]);
    let mut inc = Incremental::default();
    c.check(&mut inc, &here);
    c.slice_of("s1-a", 1, false, &[(2, 0)]);
    c.slice_of("s1-a", 1, false, &[(1, 0)]);
    let changes = c.tracker.take();
    assert!(!inc.update(&changes, &c.services, &c.slices, &here));
    assert_eq!(inc.last_rebuilt, 1);
}
