//! The services fixture of the agent tests: services whose backend pools
//! are disjoint (so a misrouted connect names a backend outside its pool),
//! IPv4 and IPv6, per-endpoint ports, a failover service and one service
//! whose endpoints change with a round number; its services file, the
//! probe's targets and backends, and the checks of an agent's `dump` and of
//! a probe report against it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use baton_api::admin::{Dump, DumpService};

use crate::report::Report;

/// One endpoint of a fixture service.
#[derive(Clone, Debug)]
pub struct Ep {
    /// Address.
    pub addr: IpAddr,
    /// 0 = the service's target port.
    pub port: u16,
    /// Priority bucket (failover).
    pub priority: u8,
}

/// One fixture service.
#[derive(Clone, Debug)]
pub struct Svc {
    /// Name.
    pub name: String,
    /// Its one VIP.
    pub vip: IpAddr,
    /// (service port, target port).
    pub ports: Vec<(u16, u16)>,
    /// `random` or `failover`.
    pub policy: &'static str,
    /// Its endpoints now.
    pub endpoints: Vec<Ep>,
    /// Every endpoint this service may ever have (its pool); equals
    /// `endpoints` except for the churned service.
    pub pool: Vec<Ep>,
    /// The probe connects to it (bulk services only fill the maps).
    pub probed: bool,
}

/// Parses an address literal of this file (or one formatted from numbers).
#[allow(clippy::expect_used)] // literals only: a typo fails every test at once
fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip literal")
}

fn ep(addr: &str, port: u16, priority: u8) -> Ep {
    Ep {
        addr: ip(addr),
        port,
        priority,
    }
}

impl Svc {
    /// Backend addresses an endpoint answers on, for one service port.
    fn backend(&self, e: &Ep, target_port: u16) -> SocketAddr {
        SocketAddr::new(e.addr, if e.port == 0 { target_port } else { e.port })
    }

    /// Backends a connect to `VIP:port` may reach: the whole pool for
    /// `random`, the lowest priority present for `failover`.
    fn allowed(&self, target_port: u16) -> BTreeSet<String> {
        let eps: Vec<&Ep> = match self.policy {
            "random" => self.pool.iter().collect(),
            _ => {
                let lowest = self.pool.iter().map(|e| e.priority).min().unwrap_or(0);
                self.pool.iter().filter(|e| e.priority == lowest).collect()
            }
        };
        eps.into_iter()
            .map(|e| self.backend(e, target_port).to_string())
            .collect()
    }

    fn targets(&self) -> Vec<(SocketAddr, u16)> {
        self.ports
            .iter()
            .map(|&(p, t)| (SocketAddr::new(self.vip, p), t))
            .collect()
    }
}

/// The services every handover test programs: 6 services, 7 VIP:ports,
/// 24 backend listeners, disjoint pools, IPv4 and IPv6, per-endpoint ports
/// (the `backend` value's port changes width between the layouts), a
/// failover service (a connect reaching priority 1 is a misroute) and one
/// service whose endpoints change with `round`.
#[derive(Clone, Debug)]
pub struct Fixture {
    /// The services.
    pub services: Vec<Svc>,
}

const CHURN_POOL: [&str; 6] = [
    "127.0.5.10",
    "127.0.5.11",
    "127.0.5.12",
    "127.0.5.13",
    "127.0.5.14",
    "127.0.5.15",
];

impl Fixture {
    /// The fixture at churn round `round` (round 0 = the initial file).
    pub fn at(round: u64) -> Self {
        Self::with_bulk(round, 0)
    }

    /// The fixture plus `bulk` services of 4 endpoints each that nobody
    /// connects to: they make the migrated maps big enough for the copy to
    /// count (10.97.0.0/16 VIPs, 10.200.0.0/16 backends).
    pub fn with_bulk(round: u64, bulk: usize) -> Self {
        let pool = |addrs: &[&str]| addrs.iter().map(|a| ep(a, 0, 0)).collect::<Vec<_>>();
        let churn_pool = pool(&CHURN_POOL);
        // A changing, never empty subset: 3 consecutive endpoints of 6.
        let churn: Vec<Ep> = (0..3)
            .map(|i| churn_pool[((round as usize) + i) % churn_pool.len()].clone())
            .collect();
        let svc = |name: &str, vip: &str, ports: Vec<(u16, u16)>, policy, eps: Vec<Ep>| Svc {
            name: name.to_string(),
            vip: ip(vip),
            ports,
            policy,
            pool: eps.clone(),
            endpoints: eps,
            probed: true,
        };
        let mut services = vec![
            svc(
                "web",
                "10.96.0.10",
                vec![(80, 8080)],
                "random",
                pool(&["127.0.1.10", "127.0.1.11", "127.0.1.12", "127.0.1.13"]),
            ),
            svc(
                "api",
                "10.96.0.11",
                vec![(443, 8443), (80, 8080)],
                "random",
                pool(&["127.0.2.10", "127.0.2.11", "127.0.2.12"]),
            ),
            svc(
                "ports",
                "10.96.0.12",
                vec![(80, 8080)],
                "random",
                vec![
                    ep("127.0.3.10", 9001, 0),
                    ep("127.0.3.10", 9002, 0),
                    ep("127.0.3.11", 0, 0),
                ],
            ),
            svc(
                "v6",
                "fd00::10",
                vec![(80, 8080)],
                "random",
                vec![ep("::1", 9101, 0), ep("::1", 9102, 0)],
            ),
            svc(
                "fo",
                "10.96.0.13",
                vec![(80, 8080)],
                "failover",
                vec![
                    ep("127.0.4.10", 0, 0),
                    ep("127.0.4.11", 0, 0),
                    ep("127.0.4.20", 0, 1),
                ],
            ),
            svc("churn", "10.96.0.14", vec![(80, 8080)], "random", churn),
        ];
        if let Some(c) = services.iter_mut().find(|s| s.name == "churn") {
            c.pool = churn_pool;
        }
        for i in 0..bulk {
            let addr = |k: usize| format!("10.200.{}.{}", k / 250, k % 250 + 1);
            let eps: Vec<Ep> = (0..4).map(|j| ep(&addr(i * 4 + j), 0, 0)).collect();
            services.push(Svc {
                name: format!("bulk-{i}"),
                vip: ip(&format!("10.97.{}.{}", i / 250, i % 250 + 1)),
                ports: vec![(80, 8080)],
                policy: "random",
                pool: eps.clone(),
                endpoints: eps,
                probed: false,
            });
        }
        Self { services }
    }

    /// The services file.
    pub fn yaml(&self) -> String {
        let mut y = String::from("services:\n");
        for s in &self.services {
            y.push_str(&format!(
                "  - name: {}\n    vips: [\"{}\"]\n    policy: {}\n    ports:\n",
                s.name, s.vip, s.policy
            ));
            for (p, t) in &s.ports {
                y.push_str(&format!("      - {{port: {p}, targetPort: {t}}}\n"));
            }
            y.push_str("    endpoints:\n");
            for e in &s.endpoints {
                y.push_str(&format!(
                    "      - {{address: \"{}\", port: {}, priority: {}}}\n",
                    e.addr, e.port, e.priority
                ));
            }
        }
        y
    }

    /// Every VIP:port the probe connects to.
    pub fn targets(&self) -> Vec<SocketAddr> {
        self.services
            .iter()
            .filter(|s| s.probed)
            .flat_map(|s| s.targets().into_iter().map(|(t, _)| t))
            .collect()
    }

    /// Every backend listener (all pools, all target ports).
    pub fn backends(&self) -> Vec<SocketAddr> {
        let mut all = BTreeSet::new();
        for s in self.services.iter().filter(|s| s.probed) {
            for (_, t) in s.targets() {
                for e in &s.pool {
                    all.insert(s.backend(e, t));
                }
            }
        }
        all.into_iter().collect()
    }

    /// Total endpoint slots (`status.endpoints`).
    pub fn endpoint_count(&self) -> u64 {
        self.services.iter().map(|s| s.endpoints.len() as u64).sum()
    }

    /// Differences between an agent's `dump` and this fixture (empty = every
    /// service, VIP, port and endpoint present, in the right priority bucket).
    pub fn dump_diff(&self, dump: &Dump) -> Vec<String> {
        let mut problems = Vec::new();
        let got: BTreeMap<&str, &DumpService> =
            dump.services.iter().map(|s| (s.name.as_str(), s)).collect();
        if got.len() != self.services.len() {
            problems.push(format!(
                "{} services in the dump, {} expected: {:?}",
                got.len(),
                self.services.len(),
                got.keys().collect::<Vec<_>>()
            ));
        }
        for s in &self.services {
            let Some(d) = got.get(s.name.as_str()) else {
                problems.push(format!("service {} missing", s.name));
                continue;
            };
            if d.vips != [s.vip.to_string()] {
                problems.push(format!("{}: vips {:?}", s.name, d.vips));
            }
            // `dump` prints the policy as `some(random)` (the Debug of an
            // Option, reported); accept it with or without the wrapper.
            let policy = d
                .policy
                .strip_prefix("some(")
                .and_then(|p| p.strip_suffix(')'))
                .unwrap_or(&d.policy);
            if policy != s.policy {
                problems.push(format!("{}: policy {:?}", s.name, d.policy));
            }
            let ports: BTreeSet<(u32, u32)> =
                d.ports.iter().map(|p| (p.port, p.target_port)).collect();
            let want_ports: BTreeSet<(u32, u32)> = s
                .ports
                .iter()
                .map(|&(p, t)| (u32::from(p), u32::from(t)))
                .collect();
            if ports != want_ports {
                problems.push(format!("{}: ports {ports:?}", s.name));
            }
            let mut buckets: BTreeMap<usize, Vec<String>> = BTreeMap::new();
            for (prio, b) in d.buckets.iter().enumerate() {
                let mut v = b.clone();
                v.sort();
                if !v.is_empty() {
                    buckets.insert(prio, v);
                }
            }
            let mut want: BTreeMap<usize, Vec<String>> = BTreeMap::new();
            for e in &s.endpoints {
                let shown = if e.port == 0 {
                    e.addr.to_string()
                } else {
                    SocketAddr::new(e.addr, e.port).to_string()
                };
                want.entry(usize::from(e.priority)).or_default().push(shown);
            }
            for v in want.values_mut() {
                v.sort();
            }
            if buckets != want {
                problems.push(format!(
                    "{}: buckets {buckets:?}, expected {want:?}",
                    s.name
                ));
            }
        }
        problems
    }

    /// Failed and misrouted connects in a probe report, and dead held
    /// connections (empty = clean). `pools` are those of every round.
    pub fn traffic_problems(&self, r: &Report) -> Vec<String> {
        let mut problems = Vec::new();
        if r.totals.failed != 0 {
            problems.push(format!(
                "{} failed connects of {}: {:?}, first: {:?}",
                r.totals.failed, r.totals.attempted, r.totals.errors, r.totals.first_error
            ));
        }
        for s in self.services.iter().filter(|s| s.probed) {
            for (t, tp) in s.targets() {
                let Some(tr) = r.target(&t.to_string()) else {
                    problems.push(format!("target {t} not in the report"));
                    continue;
                };
                if tr.ok == 0 {
                    problems.push(format!("target {t}: no successful connect"));
                }
                let allowed = s.allowed(tp);
                let wrong: Vec<_> = tr
                    .identities
                    .iter()
                    .filter(|(id, _)| !allowed.contains(*id))
                    .collect();
                if !wrong.is_empty() {
                    problems.push(format!("target {t}: misrouted to {wrong:?}"));
                }
            }
        }
        if let Some(h) = &r.hold {
            if h.held != h.requested || h.alive != h.held {
                problems.push(format!(
                    "held connections: requested {}, opened {}, alive at the end {}; dead: {:?}",
                    h.requested, h.held, h.alive, h.dead
                ));
            }
        }
        problems
    }
}
