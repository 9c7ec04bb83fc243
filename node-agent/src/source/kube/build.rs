//! Services and EndpointSlices to a `DesiredState`: the pure half of the
//! Kubernetes source (no I/O), so every mapping rule is unit-tested here.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use baton_ebpf::MAX_PORTS;
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::topology::{Locality, Preference};
use crate::model::{DesiredState, EndpointSpec, PortSpec, ServiceSpec};

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A desired state, and what of the cluster it could not express.
#[derive(Debug, Default)]
pub struct Built {
    /// One service per (Service, address family) with a cluster IP.
    pub state: DesiredState,
    /// Services or endpoints left out, one line each (`namespace/name: why`).
    pub notes: Vec<String>,
}

/// A Service port the datapath serves.
struct SvcPort {
    /// Port name, the key into EndpointSlice ports ("" when unnamed).
    name: String,
    port: u16,
    /// Target when no endpoint says: the numeric targetPort, else the port.
    fallback: u16,
}

/// An endpoint with the target port it resolves each service port to.
struct Candidate {
    address: IpAddr,
    priority: u8,
    /// Per service port; `None` when its slice does not list that port.
    targets: Vec<Option<u16>>,
}

/// Builds the desired state from every Service and EndpointSlice of the cluster.
pub fn build<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    here: &Locality,
) -> Built {
    let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        let svc = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL));
        if let (Some(ns), Some(svc)) = (slice.metadata.namespace.as_deref(), svc) {
            by_service.entry((ns, svc)).or_default().push(slice);
        }
    }
    // Only slices of a Service count (the watch selects nothing else), as in
    // the incremental build, which keeps the zone per Service.
    let here = here.with_zone_from(by_service.values().flatten().copied());
    let mut built = Built::default();
    for svc in services {
        let (Some(ns), Some(name)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
        ) else {
            continue;
        };
        let slices = by_service
            .get(&(ns, name))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let name = format!("{ns}/{name}");
        built.state.services.extend(
            service_specs(&name, svc, slices, &here, &mut built.notes)
                .into_iter()
                .map(Arc::new),
        );
    }
    built.state.services.sort_by(|a, b| a.name.cmp(&b.name));
    built
}

/// The services of one Service: one per address family of its cluster IPs
/// (the datapath wants one family per service). The primary family keeps the
/// plain `namespace/name`; the secondary one gets `/ipv4` or `/ipv6` appended.
pub(super) fn service_specs(
    name: &str,
    svc: &Service,
    slices: &[&EndpointSlice],
    here: &Locality,
    notes: &mut Vec<String>,
) -> Vec<ServiceSpec> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let ips: Vec<String> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.clone(),
        _ => spec.cluster_ip.iter().cloned().collect(),
    };
    // Headless ("None") and not yet allocated ("") parse as nothing.
    let ips: Vec<IpAddr> = ips.iter().filter_map(|s| s.parse().ok()).collect();
    let Some(primary) = ips.first().map(IpAddr::is_ipv4) else {
        return Vec::new();
    };
    let ports = match service_ports(spec.ports.as_deref().unwrap_or_default()) {
        Ok(p) => p,
        Err(why) => {
            notes.push(format!("{name}: left out: {why}"));
            return Vec::new();
        }
    };
    let pref = Preference::of(spec);
    [primary, !primary]
        .into_iter()
        .filter_map(|v4| {
            let vips: Vec<IpAddr> = ips
                .iter()
                .filter(|ip| ip.is_ipv4() == v4)
                .copied()
                .collect();
            if vips.is_empty() {
                return None;
            }
            let name = match (v4 == primary, v4) {
                (true, _) => name.to_owned(),
                (false, true) => format!("{name}/ipv4"),
                (false, false) => format!("{name}/ipv6"),
            };
            let family = if v4 { "IPv4" } else { "IPv6" };
            let family_slices = slices.iter().copied().filter(|s| s.address_type == family);
            let candidates = candidates(&ports, family_slices, v4, pref, here);
            let (targets, endpoints) = resolve(&name, &ports, candidates, notes);
            Some(ServiceSpec {
                name,
                vips,
                ports: ports
                    .iter()
                    .zip(targets)
                    .map(|(p, target_port)| PortSpec {
                        port: p.port,
                        target_port,
                    })
                    .collect(),
                policy: pref.policy(),
                endpoints,
            })
        })
        .collect()
}

/// TCP and UDP ports, one per port number (TCP wins: the datapath matches the
/// port, not the protocol, e.g. DNS on 53/TCP and 53/UDP). SCTP is not served.
fn service_ports(ports: &[ServicePort]) -> Result<Vec<SvcPort>, String> {
    let mut by_number: BTreeMap<u16, (bool, SvcPort)> = BTreeMap::new();
    for p in ports {
        let tcp = match p.protocol.as_deref() {
            None | Some("TCP") => true,
            Some("UDP") => false,
            Some(_) => continue,
        };
        let Some(port) = port_number(p.port) else {
            continue;
        };
        let fallback = match &p.target_port {
            Some(IntOrString::Int(n)) => port_number(*n).unwrap_or(port),
            _ => port,
        };
        let entry = SvcPort {
            name: p.name.clone().unwrap_or_default(),
            port,
            fallback,
        };
        match by_number.get(&port) {
            Some((true, _)) => {}
            Some((false, _)) if !tcp => {}
            _ => {
                by_number.insert(port, (tcp, entry));
            }
        }
    }
    if by_number.is_empty() {
        return Err("no TCP or UDP port".into());
    }
    if by_number.len() > MAX_PORTS {
        return Err(format!(
            "{} ports, the datapath serves at most {MAX_PORTS} per service",
            by_number.len()
        ));
    }
    Ok(by_number.into_values().map(|(_, p)| p).collect())
}

fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|&p| p != 0)
}

/// Ready endpoints of the slices with their priority and per-port targets.
fn candidates<'a>(
    ports: &[SvcPort],
    slices: impl Iterator<Item = &'a EndpointSlice>,
    v4: bool,
    pref: Preference,
    here: &Locality,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    for slice in slices {
        let slice_ports = slice.ports.as_deref().unwrap_or_default();
        // EndpointSlice ports carry the Service port's name and the resolved
        // target number (named targetPorts are resolved per pod by their writer).
        let targets: Vec<Option<u16>> = ports
            .iter()
            .map(|p| {
                slice_ports
                    .iter()
                    .find(|sp| sp.name.as_deref().unwrap_or_default() == p.name)
                    .and_then(|sp| sp.port)
                    .and_then(port_number)
            })
            .collect();
        for e in slice.endpoints.iter().filter(|e| usable(e)) {
            // Addresses are fungible; like kube-proxy, use the first.
            let Some(address) = e.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            if address.is_ipv4() != v4 {
                continue;
            }
            if let Some(priority) = pref.priority(e, here) {
                out.push(Candidate {
                    address,
                    priority,
                    targets: targets.clone(),
                });
            }
        }
    }
    out
}

/// Ready and not terminating (a terminating endpoint may still be serving; it
/// gets no new connections). An unknown readiness counts as ready, as the API says.
fn usable(e: &Endpoint) -> bool {
    let c = e.conditions.as_ref();
    c.and_then(|c| c.ready) != Some(false) && c.and_then(|c| c.terminating) != Some(true)
}

/// The service's target ports and its endpoints. The targets are those of the
/// most common complete resolution; an endpoint that resolves a port to
/// another number gets a port override when the service has one port, and is
/// left out otherwise (the datapath has one override per endpoint, not one per
/// port). An endpoint that serves none of the ports is left out.
fn resolve(
    name: &str,
    ports: &[SvcPort],
    candidates: Vec<Candidate>,
    notes: &mut Vec<String>,
) -> (Vec<u16>, Vec<EndpointSpec>) {
    let targets = common_targets(ports, &candidates);
    let mut endpoints: BTreeMap<(IpAddr, u16), u8> = BTreeMap::new();
    let mut dropped = 0usize;
    for c in candidates {
        if c.targets.iter().all(Option::is_none) {
            continue;
        }
        let agrees = c
            .targets
            .iter()
            .zip(&targets)
            .all(|(t, want)| t.is_none_or(|t| t == *want));
        let port = match (agrees, c.targets.as_slice()) {
            (true, _) => 0,
            (false, [Some(t)]) => *t,
            (false, _) => {
                dropped += 1;
                continue;
            }
        };
        let prio = endpoints.entry((c.address, port)).or_insert(c.priority);
        *prio = (*prio).min(c.priority);
    }
    if dropped > 0 {
        notes.push(format!(
            "{name}: {dropped} endpoint(s) left out: their target ports differ from \
             {targets:?} on a multi-port service (one port override per endpoint)"
        ));
    }
    let mut endpoints: Vec<EndpointSpec> = endpoints
        .into_iter()
        .map(|((address, port), priority)| EndpointSpec {
            address,
            port,
            priority,
        })
        .collect();
    endpoints.sort();
    (targets, endpoints)
}

/// Per port: the target of the most common complete resolution (ties: the
/// lowest), else the most common one seen for that port, else the fallback.
fn common_targets(ports: &[SvcPort], candidates: &[Candidate]) -> Vec<u16> {
    let mut complete: BTreeMap<&[Option<u16>], usize> = BTreeMap::new();
    for c in candidates
        .iter()
        .filter(|c| c.targets.iter().all(Option::is_some))
    {
        *complete.entry(c.targets.as_slice()).or_default() += 1;
    }
    // max_by_key returns the last maximum; iterate in reverse for the lowest.
    let best = complete
        .iter()
        .rev()
        .max_by_key(|(_, n)| **n)
        .map(|(t, _)| *t);
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if let Some(t) = best.and_then(|b| b[i]) {
                return t;
            }
            let mut seen: BTreeMap<u16, usize> = BTreeMap::new();
            for t in candidates.iter().filter_map(|c| c.targets[i]) {
                *seen.entry(t).or_default() += 1;
            }
            seen.iter()
                .rev()
                .max_by_key(|(_, n)| **n)
                .map_or(p.fallback, |(t, _)| *t)
        })
        .collect()
}

#[cfg(test)]
#[path = "build_tests.rs"]
mod tests;
