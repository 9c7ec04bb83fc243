//! The desired state every source produces: services with VIPs, ports, a
//! policy and prioritised endpoints. Validation here is source-independent;
//! errors carry a field path (`services[2].vips[0]`) the source maps to a line.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use baton_ebpf::{LbPolicy, MAX_PORTS, PRIO_COUNT};

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
        let mut errs = Vec::new();
        let mut names = HashSet::new();
        let mut vips: BTreeMap<IpAddr, usize> = BTreeMap::new();
        let mut backends = HashSet::new();
        let (mut n_frontends, mut n_endpoints) = (0u64, 0u64);
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
            let mut seen_ports = HashSet::new();
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
            let mut seen_eps = HashSet::new();
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
                backends.insert((e.address, e.port));
            }
            n_frontends += s.vips.len() as u64;
            n_endpoints += s.endpoints.len() as u64;
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
        errs.extend(over("endpoints", n_endpoints, cap.endpoints));
        errs.extend(over(
            "distinct backends",
            backends.len() as u64,
            cap.backends,
        ));
        errs
    }
}
