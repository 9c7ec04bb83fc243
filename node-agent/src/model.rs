//! The desired state every source produces: services with VIPs, ports, a
//! policy and prioritised endpoints. Validation here is source-independent;
//! errors carry a field path (`services[2].vips[0]`) the source maps to a line.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use baton_ebpf::{LbPolicy, MAX_PORTS, PRIO_COUNT};

/// A hasher seeded per process, much faster than std's SipHash on the
/// short keys validation hashes.
type Hasher = foldhash::quality::RandomState;
type FastSet<T> = HashSet<T, Hasher>;

/// One service port and where it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSpec {
    /// Port clients connect to on the VIP.
    pub port: u16,
    /// Port on the backend (same as `port` when equal).
    pub target_port: u16,
}

/// One endpoint of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointSpec {
    /// Backend address.
    pub address: IpAddr,
    /// Port override for this endpoint (0 = the service's target ports).
    pub port: u16,
    /// Priority bucket, 0 is preferred.
    pub priority: u8,
}

/// One service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceSpec {
    /// Unique name (namespace/name in a cluster).
    pub name: String,
    /// Virtual IPs, all of one family.
    pub vips: Vec<IpAddr>,
    /// Serviced ports.
    pub ports: Vec<PortSpec>,
    /// Load-balancing policy.
    pub policy: LbPolicy,
    /// Endpoints, same family as the VIPs.
    pub endpoints: Vec<EndpointSpec>,
}

/// The latest state a source produced, shared while the agent takes the
/// datapath over (the successor matches its view against it before the
/// commit).
pub type LatestState = std::sync::Arc<std::sync::Mutex<Option<std::sync::Arc<DesiredState>>>>;

/// Everything a source wants programmed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// Services; names and VIPs are unique.
    pub services: Vec<ServiceSpec>,
}

/// Map capacities the desired state must fit in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// frontend map max_entries.
    pub frontends: u32,
    /// service map max_entries.
    pub services: u32,
    /// endpoint map max_entries.
    pub endpoints: u32,
    /// backend map max_entries.
    pub backends: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        let cap = |n| baton_ebpf::map_spec(n).map_or(0, |s| s.max_entries);
        Self {
            frontends: cap("frontend"),
            services: cap("service"),
            endpoints: cap("endpoint"),
            backends: cap("backend"),
        }
    }
}

/// A rule the desired state breaks, at a field path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct Invalid {
    /// Field path, e.g. `services[1].endpoints[3].address`.
    pub path: String,
    /// Why it is rejected.
    pub reason: String,
}

fn invalid(path: String, reason: impl Into<String>) -> Invalid {
    Invalid {
        path,
        reason: reason.into(),
    }
}

impl DesiredState {
    /// Checks every rule; returns all violations (empty = valid).
    pub fn validate(&self, cap: &Capacity) -> Vec<Invalid> {
        // Runs on every build of the whole state (a Kubernetes source
        // rebuilds it per change): sized up front, a seeded fast hasher, and
        // the per-service sets reused, so it costs a few ms at 10 000
        // services, not tens.
        let n = self.services.len();
        let n_eps: usize = self.services.iter().map(|s| s.endpoints.len()).sum();
        let mut errs = Vec::new();
        let mut names = FastSet::with_capacity_and_hasher(n, Hasher::default());
        let mut vips: HashMap<IpAddr, usize, Hasher> =
            HashMap::with_capacity_and_hasher(n, Hasher::default());
        // Distinct backends are counted only when the endpoints could exceed
        // the backend map (there cannot be more distinct ones than endpoints).
        let count_backends = n_eps as u64 > u64::from(cap.backends);
        let mut backends = FastSet::with_capacity_and_hasher(
            if count_backends { n_eps } else { 0 },
            Hasher::default(),
        );
        let mut seen_ports = FastSet::default();
        let mut seen_eps = FastSet::default();
        let mut n_frontends = 0u64;
        for (i, s) in self.services.iter().enumerate() {
            let at = |f: &str| format!("services[{i}]{f}");
            if s.name.is_empty() {
                errs.push(invalid(at(".name"), "name must not be empty"));
            } else if !names.insert(s.name.as_str()) {
                errs.push(invalid(
                    at(".name"),
                    format!("duplicate service name {:?}", s.name),
                ));
            }
            if s.vips.is_empty() {
                errs.push(invalid(at(".vips"), "at least one VIP is required"));
            }
            let v4 = s.vips.first().map(IpAddr::is_ipv4);
            for (j, vip) in s.vips.iter().enumerate() {
                if let Some(prev) = vips.insert(*vip, i) {
                    errs.push(invalid(
                        at(&format!(".vips[{j}]")),
                        format!("duplicate VIP {vip} (also used by services[{prev}])"),
                    ));
                }
                if Some(vip.is_ipv4()) != v4 {
                    errs.push(invalid(
                        at(&format!(".vips[{j}]")),
                        "all VIPs of a service must be of one address family",
                    ));
                }
                if vip.is_unspecified() || vip.is_multicast() {
                    errs.push(invalid(
                        at(&format!(".vips[{j}]")),
                        format!("{vip} cannot be a VIP"),
                    ));
                }
            }
            if s.ports.is_empty() {
                errs.push(invalid(at(".ports"), "at least one port is required"));
            }
            if s.ports.len() > MAX_PORTS {
                errs.push(invalid(
                    at(".ports"),
                    format!("{} ports, at most {MAX_PORTS} are supported", s.ports.len()),
                ));
            }
            seen_ports.clear();
            for (j, p) in s.ports.iter().enumerate() {
                if p.port == 0 {
                    errs.push(invalid(
                        at(&format!(".ports[{j}].port")),
                        "port must be in 1..=65535",
                    ));
                }
                if !seen_ports.insert(p.port) {
                    errs.push(invalid(
                        at(&format!(".ports[{j}].port")),
                        format!("duplicate port {}", p.port),
                    ));
                }
            }
            seen_eps.clear();
            for (j, e) in s.endpoints.iter().enumerate() {
                if Some(e.address.is_ipv4()) != v4 {
                    errs.push(invalid(
                        at(&format!(".endpoints[{j}].address")),
                        "endpoint family differs from the service's VIPs",
                    ));
                }
                if e.address.is_unspecified() || e.address.is_multicast() {
                    errs.push(invalid(
                        at(&format!(".endpoints[{j}].address")),
                        format!("{} cannot be a backend", e.address),
                    ));
                }
                if usize::from(e.priority) >= PRIO_COUNT {
                    errs.push(invalid(
                        at(&format!(".endpoints[{j}].priority")),
                        format!(
                            "priority {} out of range 0..={}",
                            e.priority,
                            PRIO_COUNT - 1
                        ),
                    ));
                }
                if !seen_eps.insert((e.address, e.port)) {
                    errs.push(invalid(
                        at(&format!(".endpoints[{j}]")),
                        format!("duplicate endpoint {}:{}", e.address, e.port),
                    ));
                }
                if count_backends {
                    backends.insert((e.address, e.port));
                }
            }
            n_frontends += s.vips.len() as u64;
        }
        let over = |what: &str, n: u64, max: u32| {
            (n > u64::from(max)).then(|| {
                invalid(
                    "services".into(),
                    format!("{n} {what} exceed the map capacity of {max}"),
                )
            })
        };
        errs.extend(over("services", self.services.len() as u64, cap.services));
        errs.extend(over("VIPs", n_frontends, cap.frontends));
        errs.extend(over("endpoints", n_eps as u64, cap.endpoints));
        errs.extend(over(
            "distinct backends",
            backends.len() as u64,
            cap.backends,
        ));
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// `n` services of `per` endpoints each, backends `10.1.0.<first + k>`
    /// (so services share backends when `first` repeats).
    fn state(n: u32, per: u32, first: impl Fn(u32) -> u32) -> DesiredState {
        let ip = |x: u32| IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + x));
        DesiredState {
            services: (0..n)
                .map(|i| ServiceSpec {
                    name: format!("s{i}"),
                    vips: vec![ip(0x8000 + i)],
                    ports: vec![PortSpec {
                        port: 80,
                        target_port: 8080,
                    }],
                    policy: LbPolicy::Random,
                    endpoints: (0..per)
                        .map(|k| EndpointSpec {
                            address: ip(first(i) + k),
                            port: 0,
                            priority: 0,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn distinct_backends_are_counted_against_the_backend_map() {
        let cap = Capacity {
            backends: 4,
            ..Capacity::default()
        };
        // 3 x 2 endpoints, 6 distinct backends: over.
        let errs = state(3, 2, |i| 2 * i).validate(&cap);
        assert_eq!(
            errs,
            vec![invalid(
                "services".into(),
                "6 distinct backends exceed the map capacity of 4"
            )]
        );
        // 3 x 2 endpoints on the same 2 backends: 6 endpoints, 2 distinct.
        assert_eq!(state(3, 2, |_| 0).validate(&cap), vec![]);
        // 4 endpoints, so at most 4 distinct: never over.
        assert_eq!(state(2, 2, |i| 2 * i).validate(&cap), vec![]);
        // Duplicates within a service are still named.
        let mut dup = state(1, 2, |_| 0);
        dup.services[0].endpoints[1] = dup.services[0].endpoints[0];
        assert_eq!(
            dup.validate(&cap)
                .iter()
                .map(|e| e.path.as_str())
                .collect::<Vec<_>>(),
            ["services[0].endpoints[1]"]
        );
    }
}
