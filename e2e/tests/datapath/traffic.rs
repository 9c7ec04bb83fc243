//! Real connects through the real datapath: a probe process in the test's
//! cgroup and its own network namespace connects to VIPs while this process
//! programs the maps.
use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_agent::datapath::Datapath;
use baton_agent::model::{DesiredState, EndpointSpec, PortSpec, ServiceSpec};
use baton_agent::programmer::Programmer;
use baton_agent::verify;
use baton_e2e::kit::{ProbeProcess, ProbeRun, Sandbox};
use baton_e2e::report::Report;
use baton_ebpf::{Counter, LbPolicy};

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address literal")
}

fn ep(addr: &str, port: u16, priority: u8) -> EndpointSpec {
    EndpointSpec {
        address: addr.parse::<IpAddr>().expect("ip literal"),
        port,
        priority,
    }
}

fn service(
    name: &str,
    vip: &str,
    ports: &[(u16, u16)],
    policy: LbPolicy,
    endpoints: Vec<EndpointSpec>,
) -> Arc<ServiceSpec> {
    Arc::new(ServiceSpec {
        name: name.into(),
        vips: vec![vip.parse().expect("vip literal")],
        ports: ports
            .iter()
            .map(|&(port, target_port)| PortSpec { port, target_port })
            .collect(),
        policy,
        endpoints,
    })
}

fn probe(cgroup: &Path, backends: &[&str], targets: &[&str], connects: u64) -> Report {
    let mut run = ProbeRun::new()
        .cgroup(cgroup)
        .connects(connects)
        .concurrency(4);
    for b in backends {
        run = run.backend(sa(b));
    }
    for t in targets {
        run = run.target(sa(t));
    }
    run.run().unwrap()
}

/// Identity counts seen for one target.
fn seen(r: &Report, target: &str) -> BTreeMap<String, u64> {
    let t = r
        .targets
        .iter()
        .find(|t| t.target == target)
        .unwrap_or_else(|| panic!("no target {target}"));
    t.identities.clone().into_iter().collect()
}

fn start(env: &Sandbox, desired: &DesiredState) -> (Datapath, Programmer) {
    let dp = Datapath::start(&env.config()).expect("datapath");
    let mut p = Programmer::new();
    let r = p.sync(&dp.maps, desired).expect("sync");
    assert!(r.ok(), "{:?}", r.failed);
    (dp, p)
}

#[test]
fn random_spreads_over_every_backend_ipv4() {
    let env = Sandbox::new("dp-random").unwrap();
    let eps = vec![
        ep("127.0.0.10", 0, 0),
        ep("127.0.0.11", 0, 0),
        ep("127.0.0.12", 0, 3),
    ];
    let (dp, _p) = start(
        &env,
        &DesiredState {
            services: vec![service(
                "web",
                "10.96.0.10",
                &[(80, 8080)],
                LbPolicy::Random,
                eps,
            )],
        },
    );
    let r = probe(
        env.cgroup(),
        &["127.0.0.10:8080", "127.0.0.11:8080", "127.0.0.12:8080"],
        &["10.96.0.10:80"],
        900,
    );
    assert_eq!((r.totals.ok, r.totals.failed), (900, 0), "{:?}", r.totals);
    let got = seen(&r, "10.96.0.10:80");
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        ["127.0.0.10:8080", "127.0.0.11:8080", "127.0.0.12:8080"]
    );
    // Expected 300 each; 150 is > 13 standard deviations away.
    assert!(got.values().all(|&n| n >= 150), "uneven spread: {got:?}");
    assert!(dp.maps.counter(Counter::Redirected).expect("counter") >= 900);
}

#[test]
fn strict_never_leaves_priority_zero() {
    let env = Sandbox::new("dp-strict").unwrap();
    let svc = |eps| DesiredState {
        services: vec![service(
            "s",
            "10.96.0.20",
            &[(80, 8080)],
            LbPolicy::Strict,
            eps,
        )],
    };
    let (dp, mut p) = start(
        &env,
        &svc(vec![ep("127.0.0.10", 0, 0), ep("127.0.0.11", 0, 1)]),
    );
    let r = probe(
        env.cgroup(),
        &["127.0.0.10:8080", "127.0.0.11:8080"],
        &["10.96.0.20:80"],
        300,
    );
    assert_eq!(r.totals.ok, 300);
    assert_eq!(
        seen(&r, "10.96.0.20:80").keys().collect::<Vec<_>>(),
        ["127.0.0.10:8080"]
    );
    // Priority 0 empty: strict refuses rather than spilling over.
    assert!(p
        .sync(&dp.maps, &svc(vec![ep("127.0.0.11", 0, 1)]))
        .expect("sync")
        .ok());
    let r = probe(
        env.cgroup(),
        &["127.0.0.10:8080", "127.0.0.11:8080"],
        &["10.96.0.20:80"],
        50,
    );
    assert_eq!(
        (r.totals.ok, r.totals.errors.eperm),
        (0, 50),
        "{:?}",
        r.totals
    );
    assert!(dp.maps.counter(Counter::NoEndpoint).expect("counter") >= 50);
}

#[test]
fn failover_moves_to_the_next_bucket_when_one_empties() {
    let env = Sandbox::new("dp-failover").unwrap();
    let svc = |eps| DesiredState {
        services: vec![service(
            "f",
            "10.96.0.30",
            &[(80, 8080)],
            LbPolicy::Failover,
            eps,
        )],
    };
    let all = vec![
        ep("127.0.0.10", 0, 0),
        ep("127.0.0.11", 0, 0),
        ep("127.0.0.20", 0, 1),
        ep("127.0.0.30", 0, 2),
    ];
    let (dp, mut p) = start(&env, &svc(all.clone()));
    let backends = [
        "127.0.0.10:8080",
        "127.0.0.11:8080",
        "127.0.0.20:8080",
        "127.0.0.30:8080",
    ];
    let r = probe(env.cgroup(), &backends, &["10.96.0.30:80"], 400);
    assert_eq!(r.totals.ok, 400);
    assert_eq!(
        seen(&r, "10.96.0.30:80").keys().collect::<Vec<_>>(),
        ["127.0.0.10:8080", "127.0.0.11:8080"]
    );
    assert!(p
        .sync(&dp.maps, &svc(all[2..].to_vec()))
        .expect("sync")
        .ok());
    let r = probe(env.cgroup(), &backends, &["10.96.0.30:80"], 200);
    assert_eq!(r.totals.ok, 200);
    assert_eq!(
        seen(&r, "10.96.0.30:80").keys().collect::<Vec<_>>(),
        ["127.0.0.20:8080"]
    );
    assert!(p
        .sync(&dp.maps, &svc(all[3..].to_vec()))
        .expect("sync")
        .ok());
    let r = probe(env.cgroup(), &backends, &["10.96.0.30:80"], 100);
    assert_eq!(
        seen(&r, "10.96.0.30:80").keys().collect::<Vec<_>>(),
        ["127.0.0.30:8080"]
    );
}

#[test]
fn ipv6_vips_and_per_endpoint_ports() {
    let env = Sandbox::new("dp-v6").unwrap();
    let eps = vec![ep("::1", 9001, 0), ep("::1", 9002, 0)];
    let (_dp, _p) = start(
        &env,
        &DesiredState {
            services: vec![service(
                "v6",
                "fd00::10",
                &[(443, 443)],
                LbPolicy::Random,
                eps,
            )],
        },
    );
    let r = probe(
        env.cgroup(),
        &["[::1]:9001", "[::1]:9002"],
        &["[fd00::10]:443"],
        400,
    );
    assert_eq!((r.totals.ok, r.totals.failed), (400, 0), "{:?}", r.totals);
    let got = seen(&r, "[fd00::10]:443");
    assert_eq!(got.keys().collect::<Vec<_>>(), ["[::1]:9001", "[::1]:9002"]);
    assert!(got.values().all(|&n| n >= 120), "{got:?}");
}

#[test]
fn service_ports_map_to_target_ports() {
    let env = Sandbox::new("dp-ports").unwrap();
    let eps = vec![ep("127.0.0.10", 0, 0)];
    let (_dp, _p) = start(
        &env,
        &DesiredState {
            services: vec![service(
                "m",
                "10.96.0.40",
                &[(80, 8080), (81, 8081), (82, 0)],
                LbPolicy::Random,
                eps,
            )],
        },
    );
    let r = probe(
        env.cgroup(),
        &["127.0.0.10:8080", "127.0.0.10:8081", "127.0.0.10:82"],
        &["10.96.0.40:80", "10.96.0.40:81", "10.96.0.40:82"],
        90,
    );
    assert_eq!(r.totals.ok, 90, "{:?}", r.totals);
    assert_eq!(
        seen(&r, "10.96.0.40:80").keys().collect::<Vec<_>>(),
        ["127.0.0.10:8080"]
    );
    assert_eq!(
        seen(&r, "10.96.0.40:81").keys().collect::<Vec<_>>(),
        ["127.0.0.10:8081"]
    );
    assert_eq!(
        seen(&r, "10.96.0.40:82").keys().collect::<Vec<_>>(),
        ["127.0.0.10:82"]
    );
}

#[test]
fn unknown_vips_and_unserviced_ports_pass_through_untouched() {
    let env = Sandbox::new("dp-pass").unwrap();
    let eps = vec![ep("127.0.0.10", 0, 0)];
    // 127.0.0.60 is a VIP for port 80 only; its port 9999 is a real local listener.
    let (dp, _p) = start(
        &env,
        &DesiredState {
            services: vec![service(
                "p",
                "127.0.0.60",
                &[(80, 8080)],
                LbPolicy::Random,
                eps,
            )],
        },
    );
    let r = probe(
        env.cgroup(),
        &["127.0.0.10:8080", "127.0.0.50:7000", "127.0.0.60:9999"],
        &["127.0.0.50:7000", "127.0.0.60:9999", "127.0.0.60:80"],
        90,
    );
    assert_eq!(r.totals.ok, 90, "{:?}", r.totals);
    assert_eq!(
        seen(&r, "127.0.0.50:7000").keys().collect::<Vec<_>>(),
        ["127.0.0.50:7000"]
    );
    assert_eq!(
        seen(&r, "127.0.0.60:9999").keys().collect::<Vec<_>>(),
        ["127.0.0.60:9999"]
    );
    assert_eq!(
        seen(&r, "127.0.0.60:80").keys().collect::<Vec<_>>(),
        ["127.0.0.10:8080"]
    );
    assert!(dp.maps.counter(Counter::NoFrontend).expect("counter") >= 30);
    assert!(dp.maps.counter(Counter::PortMiss).expect("counter") >= 30);
}

/// Two services with disjoint backend pools churn their endpoints (adds,
/// removes, priority moves) as fast as the agent can program them while the
/// probe connects to both VIPs: no connect may fail or land outside its pool.
#[test]
fn endpoint_churn_under_traffic_loses_and_misroutes_nothing() {
    let env = Sandbox::new("dp-churn").unwrap();
    let pool_a: Vec<String> = (10..18).map(|i| format!("127.0.1.{i}")).collect();
    let pool_b: Vec<String> = (10..18).map(|i| format!("127.0.2.{i}")).collect();
    let pick = |pool: &[String], round: u64, policy: LbPolicy| -> Vec<EndpointSpec> {
        // A deterministic, always non-empty, changing subset with changing priorities.
        let mut out: Vec<EndpointSpec> = pool
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                (round.wrapping_mul(2654435761) >> (*i as u64 % 13)) & 1 == 1
                    || *i as u64 == round % pool.len() as u64
            })
            .map(|(i, a)| {
                ep(
                    a,
                    0,
                    if policy == LbPolicy::Failover {
                        ((round + i as u64) % 3) as u8
                    } else {
                        0
                    },
                )
            })
            .collect();
        out.dedup();
        out
    };
    let desired = |round: u64| DesiredState {
        services: vec![
            service(
                "a",
                "10.96.1.1",
                &[(80, 8080)],
                LbPolicy::Random,
                pick(&pool_a, round, LbPolicy::Random),
            ),
            service(
                "b4",
                "10.96.2.1",
                &[(80, 8080)],
                LbPolicy::Failover,
                pick(&pool_b, round + 7, LbPolicy::Failover),
            ),
        ],
    };
    let (dp, mut p) = start(&env, &desired(0));
    let mut run = ProbeRun::new()
        .cgroup(env.cgroup())
        .target(sa("10.96.1.1:80"))
        .target(sa("10.96.2.1:80"))
        .duration(Duration::from_secs(20))
        .concurrency(4);
    for a in pool_a.iter().chain(&pool_b) {
        run = run.backend(sa(&format!("{a}:8080")));
    }
    let probe = ProbeProcess::start(run, env.dir(), "probe", Duration::from_secs(10)).unwrap();
    let started = Instant::now();
    let mut rounds = 0u64;
    let mut changes = 0usize;
    while started.elapsed() < Duration::from_secs(3) {
        rounds += 1;
        let r = p.sync(&dp.maps, &desired(rounds)).expect("sync");
        assert!(r.ok(), "{:?}", r.failed);
        changes += r.writes;
    }
    let r = probe.report(Duration::from_secs(30)).unwrap();
    assert!(rounds > 100, "only {rounds} churn rounds");
    assert!(
        r.totals.attempted > 1000,
        "too little traffic: {:?}",
        r.totals
    );
    assert_eq!(
        r.totals.failed, 0,
        "failed connects during churn: {:?}",
        r.totals
    );
    let in_pool = |target: &str, pool: &[String]| {
        let allowed: HashSet<String> = pool.iter().map(|a| format!("{a}:8080")).collect();
        seen(&r, target)
            .into_iter()
            .filter(|(id, _)| !allowed.contains(id))
            .collect::<Vec<_>>()
    };
    assert!(
        in_pool("10.96.1.1:80", &pool_a).is_empty(),
        "misrouted: {:?}",
        in_pool("10.96.1.1:80", &pool_a)
    );
    assert!(
        in_pool("10.96.2.1:80", &pool_b).is_empty(),
        "misrouted: {:?}",
        in_pool("10.96.2.1:80", &pool_b)
    );
    let v = verify::check_against(&dp.maps.snapshot().expect("snap"), &p.state().expected());
    assert!(v.is_clean(), "{:?}", v.violations);
    eprintln!(
        "churn: {rounds} syncs, {changes} map writes, {} connects",
        r.totals.attempted
    );
}
