//! Transactional map programming against real kernel maps: invariants after
//! every sync, exhaustive fault injection at every write, a real map-full
//! error, and adoption of pinned maps after a restart.
use std::net::IpAddr;

use baton_agent::datapath::Datapath;
use baton_agent::model::{DesiredState, EndpointSpec, PortSpec, ServiceSpec};
use baton_agent::programmer::{FaultPlan, Programmer};
use baton_agent::verify;
use baton_e2e::kit::Sandbox;
use baton_ebpf::LbPolicy;
use nix::errno::Errno;

fn svc(name: &str, vip: &str, policy: LbPolicy, eps: &[(&str, u8)]) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        vips: vec![vip.parse().expect("vip")],
        ports: vec![PortSpec {
            port: 80,
            target_port: 8080,
        }],
        policy,
        endpoints: eps
            .iter()
            .map(|(a, p)| EndpointSpec {
                address: a.parse::<IpAddr>().expect("ep"),
                port: 0,
                priority: *p,
            })
            .collect(),
    }
}

fn state(services: Vec<ServiceSpec>) -> DesiredState {
    services.into_iter().collect()
}

/// Maps agree with the agent's view and have no invariant violation.
fn assert_consistent(dp: &Datapath, p: &Programmer, when: &str) {
    let maps = dp.maps.snapshot().expect("snapshot");
    let r = verify::check_against(&maps, &p.state().expected());
    assert!(r.is_clean(), "{when}: {:?}", r.violations);
}

/// A sequence of desired states exercising creates, grows, shrinks, moves
/// between buckets, shared backends, VIP moves and deletes.
fn scenario() -> Vec<DesiredState> {
    use LbPolicy::*;
    vec![
        state(vec![
            svc(
                "a",
                "10.96.0.1",
                Random,
                &[("127.0.0.10", 0), ("127.0.0.11", 0), ("127.0.0.12", 0)],
            ),
            svc(
                "b",
                "10.96.0.2",
                Failover,
                &[("127.0.0.10", 0), ("127.0.0.20", 1), ("127.0.0.21", 2)],
            ),
        ]),
        state(vec![
            svc(
                "a",
                "10.96.0.1",
                Random,
                &[
                    ("127.0.0.11", 0),
                    ("127.0.0.13", 0),
                    ("127.0.0.14", 0),
                    ("127.0.0.15", 0),
                ],
            ),
            svc(
                "b",
                "10.96.0.2",
                Failover,
                &[("127.0.0.20", 0), ("127.0.0.21", 1)],
            ),
            svc("c", "fd00::1", Strict, &[("::1", 0), ("fd00::10", 1)]),
        ]),
        state(vec![
            svc("a", "10.96.0.9", Random, &[("127.0.0.11", 0)]),
            svc("c", "fd00::1", Strict, &[]),
            svc(
                "d",
                "10.96.0.1",
                Random,
                &[("127.0.0.11", 0), ("127.0.0.99", 0)],
            ),
        ]),
        state(vec![]),
    ]
}

#[test]
fn every_sync_leaves_maps_equal_to_the_view() {
    let env = Sandbox::new("prog-basic").unwrap();
    let dp = Datapath::start(&env.config()).expect("datapath");
    let mut p = Programmer::new();
    for (i, desired) in scenario().iter().enumerate() {
        let r = p.sync(&dp.maps, desired).expect("sync");
        assert!(r.ok(), "step {i}: {:?}", r.failed);
        assert_consistent(&dp, &p, &format!("step {i}"));
        let again = p.sync(&dp.maps, desired).expect("resync");
        assert_eq!(
            (again.writes, again.unchanged),
            (0, desired.services.len()),
            "step {i}: second sync must be a no-op"
        );
    }
    let counts = dp.maps.entry_counts().expect("counts");
    assert!(
        counts.iter().all(|(_, n)| *n == 0),
        "everything removed at the end: {counts:?}"
    );
}

#[test]
fn a_failure_at_any_write_rolls_back_to_agreement() {
    let env = Sandbox::new("prog-faults").unwrap();
    let dp = Datapath::start(&env.config()).expect("datapath");
    let steps = scenario();
    // Count the writes of each transition, then fail each of them in turn.
    for (i, desired) in steps.iter().enumerate() {
        let mut probe = Programmer::new();
        for prev in &steps[..i] {
            probe.sync(&dp.maps, prev).expect("prefix");
        }
        let before = dp.maps.snapshot().expect("snap");
        probe.set_faults(FaultPlan::default());
        let total = probe.sync(&dp.maps, desired).expect("count").writes as u64;
        probe.sync(&dp.maps, &state(vec![])).expect("clear");
        for n in 0..total {
            let mut p = Programmer::new();
            for prev in &steps[..i] {
                p.sync(&dp.maps, prev).expect("prefix");
            }
            assert_eq!(
                dp.maps.snapshot().expect("snap"),
                before,
                "prefix state reproducible"
            );
            p.set_faults(FaultPlan::fail_at(n, Errno::ENOMEM));
            let r = p.sync(&dp.maps, desired).expect("sync");
            assert!(
                !r.ok(),
                "step {i} write {n}: the injected failure must be reported"
            );
            assert!(
                r.failed.iter().all(|f| f.error.contains("ENOMEM")),
                "{:?}",
                r.failed
            );
            assert_consistent(&dp, &p, &format!("step {i}, failed write {n}"));
            // The next sync retries and converges.
            p.set_faults(FaultPlan::default());
            let r = p.sync(&dp.maps, desired).expect("retry");
            assert!(r.ok(), "retry after step {i} write {n}: {:?}", r.failed);
            assert_consistent(&dp, &p, &format!("retry after step {i}, write {n}"));
            p.sync(&dp.maps, &state(vec![])).expect("clear");
        }
    }
}

#[test]
fn a_full_endpoint_map_fails_cleanly_and_keeps_old_state_serving() {
    let env = Sandbox::new("prog-full").unwrap();
    let mut cfg = env.config();
    cfg.max_entries.insert("endpoint".into(), 4);
    let dp = Datapath::start(&cfg).expect("datapath");
    assert_eq!(dp.maps.endpoint.max_entries(), 4);
    let mut p = Programmer::new();
    let small = state(vec![svc(
        "a",
        "10.96.0.1",
        LbPolicy::Random,
        &[("127.0.0.10", 0), ("127.0.0.11", 0)],
    )]);
    assert!(p.sync(&dp.maps, &small).expect("sync").ok());
    let before = dp.maps.snapshot().expect("snap");
    let eps: Vec<String> = (10..16).map(|i| format!("127.0.0.{i}")).collect();
    let refs: Vec<(&str, u8)> = eps.iter().map(|e| (e.as_str(), 0)).collect();
    let big = state(vec![svc("a", "10.96.0.1", LbPolicy::Random, &refs)]);
    let r = p.sync(&dp.maps, &big).expect("sync");
    assert_eq!(r.failed.len(), 1, "{r:?}");
    assert!(
        r.failed[0].error.contains("E2BIG"),
        "kernel reports the full map: {}",
        r.failed[0].error
    );
    assert!(r.rolled_back > 0);
    assert_eq!(
        dp.maps.snapshot().expect("snap"),
        before,
        "old state restored exactly"
    );
    assert_consistent(&dp, &p, "after E2BIG");
}

#[test]
fn a_restarted_agent_adopts_pinned_maps_and_resyncs_without_gaps() {
    let env = Sandbox::new("prog-adopt").unwrap();
    let steps = scenario();
    let first = Datapath::start(&env.config()).expect("datapath");
    let mut p = Programmer::new();
    assert!(p.sync(&first.maps, &steps[0]).expect("sync").ok());
    let programmed = first.maps.snapshot().expect("snap");
    drop(first); // agent exits with --keep-datapath: pins stay

    let second = Datapath::start(&env.config()).expect("restart from pins");
    assert!(second.reused_maps);
    assert_eq!(second.generation, 2);
    assert_eq!(
        second.maps.snapshot().expect("snap"),
        programmed,
        "entries survive the restart"
    );
    let mut q = Programmer::adopt(&second.maps).expect("adopt");
    assert_consistent(&second, &q, "adopted");
    // Same desired state: adoption matched by VIP, nothing rewritten.
    let r = q.sync(&second.maps, &steps[0]).expect("sync");
    assert!(r.ok() && r.writes == 0, "{r:?}");
    let r = q.sync(&second.maps, &steps[1]).expect("sync");
    assert!(r.ok(), "{r:?}");
    assert_consistent(&second, &q, "after resync");
}
