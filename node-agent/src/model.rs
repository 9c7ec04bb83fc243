//! The desired state every source produces: services with VIPs, ports, a
//! policy and prioritised endpoints. Validation here is source-independent;
//! errors carry a field path (`services[2].vips[0]`) the source maps to a line.

use std::net::IpAddr;
use std::sync::Arc;

use baton_ebpf::LbPolicy;

mod validate;

pub use validate::Validator;

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
    /// Services; names and VIPs are unique. Shared, so that a source that
    /// rebuilds only what changed hands the rest over without copying it and
    /// the programmer skips a service it synced from the very same `Arc`.
    pub services: Vec<Arc<ServiceSpec>>,
}

impl FromIterator<ServiceSpec> for DesiredState {
    fn from_iter<I: IntoIterator<Item = ServiceSpec>>(specs: I) -> Self {
        Self {
            services: specs.into_iter().map(Arc::new).collect(),
        }
    }
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

impl DesiredState {
    /// Checks every rule; returns all violations (empty = valid).
    pub fn validate(&self, cap: &Capacity) -> Vec<Invalid> {
        Validator::once().validate(self, cap)
    }
}
