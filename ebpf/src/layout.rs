//! Rust mirrors of `src/bpf/layout.h`. `tests/btf_layout.rs` checks every
//! member's name, offset and size against the compiled object's BTF.
//!
//! The mirrors follow the active layout: 1 by default, 2 with the `layout-v2`
//! feature. Member names are the same in both, and [`EndpointValue::new`],
//! [`BackendValue::new`] and [`BackendValue::port`] hide the differences, so
//! code using them compiles under either layout.

use std::net::{IpAddr, Ipv6Addr};

/// Layout generation of the maps built into this crate.
#[cfg(not(feature = "layout-v2"))]
pub const LAYOUT_VERSION: u32 = 1;
/// Layout generation of the maps built into this crate.
#[cfg(feature = "layout-v2")]
pub const LAYOUT_VERSION: u32 = 2;
/// Number of priority buckets per service.
pub const PRIO_COUNT: usize = 7;
/// Number of service ports per service.
pub const MAX_PORTS: usize = 10;
/// Number of per-CPU counter slots.
pub const COUNTER_SLOTS: u32 = 16;
/// Default capacity of the `endpoint` map.
pub const MAX_ENDPOINTS: u32 = if LAYOUT_VERSION == 2 {
    262_144
} else {
    131_072
};
/// Default capacity of the `backend` map.
pub const MAX_BACKENDS: u32 = if LAYOUT_VERSION == 2 {
    262_144
} else {
    131_072
};

/// Plain-old-data values that can be copied to and from map memory.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, contain only integers and arrays of
/// integers, and have no padding bytes.
pub unsafe trait MapPod: Copy + Default + 'static {
    /// The value's bytes as the kernel sees them.
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: the trait contract guarantees a padding-free POD type.
        unsafe {
            std::slice::from_raw_parts(
                (self as *const Self).cast::<u8>(),
                std::mem::size_of::<Self>(),
            )
        }
    }

    /// The value's bytes, writable (for the kernel to fill in).
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: any bit pattern is a valid value of a padding-free integer-only type.
        unsafe {
            std::slice::from_raw_parts_mut(
                (self as *mut Self).cast::<u8>(),
                std::mem::size_of::<Self>(),
            )
        }
    }

    /// Reads a value from kernel bytes; `None` when the length differs.
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != std::mem::size_of::<Self>() {
            return None;
        }
        let mut v = Self::default();
        v.as_bytes_mut().copy_from_slice(bytes);
        Some(v)
    }
}

macro_rules! pod {
    ($($t:ty),*) => { $(unsafe impl MapPod for $t {})* };
}
pod!(
    u32,
    u64,
    FrontendKey,
    FrontendValue,
    ServiceKey,
    ServiceValue,
    EndpointKey,
    EndpointValue,
    BackendKey,
    BackendValue,
    MetaValue
);

/// A 16-byte address in network order; IPv4 is stored v4-mapped.
pub type RawAddr = [u32; 4];

/// Encodes an IP address the way the datapath compares it.
pub fn raw_addr(ip: IpAddr) -> RawAddr {
    let octets = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let mut out = [0u32; 4];
    for (i, chunk) in octets.chunks_exact(4).enumerate() {
        out[i] = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    out
}

/// Decodes a datapath address; v4-mapped addresses come back as IPv4.
pub fn ip_from_raw(raw: &RawAddr) -> IpAddr {
    let mut octets = [0u8; 16];
    for (i, word) in raw.iter().enumerate() {
        octets[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    let v6 = Ipv6Addr::from(octets);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// Whether a raw address is an IPv4 address.
pub fn raw_is_v4(raw: &RawAddr) -> bool {
    matches!(ip_from_raw(raw), IpAddr::V4(_))
}

/// Load-balancing policy of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum LbPolicy {
    /// Uniform over all endpoints (all kept in bucket 0).
    Random = 0,
    /// Only bucket 0; refuse when it is empty.
    Strict = 1,
    /// The first non-empty bucket in priority order.
    Failover = 2,
}

impl LbPolicy {
    /// Decodes the map value.
    pub fn from_raw(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Random),
            1 => Some(Self::Strict),
            2 => Some(Self::Failover),
            _ => None,
        }
    }
}

/// Per-CPU counter slots, in `counters` map order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Counter {
    /// TCP connects seen by the hooks.
    Connect = 0,
    /// Connects rewritten to a backend.
    Redirected = 1,
    /// Destination is not a VIP: untouched.
    NoFrontend = 2,
    /// VIP known but port not serviced: untouched.
    PortMiss = 3,
    /// No usable endpoint: refused.
    NoEndpoint = 4,
    /// Endpoint lookup raced an update and was retried.
    EndpointRetry = 5,
    /// An endpoint named a missing backend.
    BackendMiss = 6,
    /// Backend family differs from the socket's.
    FamilyMismatch = 7,
}

impl Counter {
    /// Every counter with its metric label.
    pub const ALL: [(Counter, &'static str); 8] = [
        (Counter::Connect, "connect"),
        (Counter::Redirected, "redirected"),
        (Counter::NoFrontend, "no_frontend"),
        (Counter::PortMiss, "port_miss"),
        (Counter::NoEndpoint, "no_endpoint"),
        (Counter::EndpointRetry, "endpoint_retry"),
        (Counter::BackendMiss, "backend_miss"),
        (Counter::FamilyMismatch, "family_mismatch"),
    ];
}

/// `struct frontend_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    /// VIP, network order.
    pub addr: RawAddr,
}

/// `struct frontend_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FrontendValue {
    /// Service the VIP belongs to.
    pub service_id: u32,
}

/// `struct service_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// Agent-allocated service id.
    pub service_id: u32,
}

/// `struct service_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// Endpoints per priority bucket; keys 1..=count exist.
    pub prio_endpoint_count: [u32; PRIO_COUNT],
    /// [`LbPolicy`] as u32.
    pub lb_policy: u32,
    /// Service ports, host order; 0 = unused.
    pub service_port: [u32; MAX_PORTS],
    /// Target ports, host order; 0 = same as the service port.
    pub target_port: [u32; MAX_PORTS],
}

/// `struct endpoint_key` (layout 1).
#[cfg(not(feature = "layout-v2"))]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    /// Owning service.
    pub service_id: u32,
    /// Priority bucket.
    pub prio: u32,
    /// 1-based dense index.
    pub backend_index: u32,
}

/// `struct endpoint_key` (layout 2: `backend_index` before `prio`).
#[cfg(feature = "layout-v2")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    /// Owning service.
    pub service_id: u32,
    /// 1-based dense index.
    pub backend_index: u32,
    /// Priority bucket.
    pub prio: u32,
}

impl EndpointKey {
    /// The sort key: (service, bucket, index) whatever the member order in memory.
    fn rank(&self) -> (u32, u32, u32) {
        (self.service_id, self.prio, self.backend_index)
    }
}

// Ordered by hand, not derived, so maps of keys iterate the same under every layout.
impl Ord for EndpointKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank().cmp(&other.rank())
    }
}

impl PartialOrd for EndpointKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// `struct endpoint_value` (layout 1).
#[cfg(not(feature = "layout-v2"))]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointValue {
    /// Backend this endpoint points to.
    pub backend_uid: u32,
}

/// `struct endpoint_value` (layout 2: adds `weight`).
#[cfg(feature = "layout-v2")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointValue {
    /// Backend this endpoint points to.
    pub backend_uid: u32,
    /// Relative weight; 0 = unweighted (the program does not read it).
    pub weight: u32,
}

impl EndpointValue {
    /// An endpoint pointing at `backend_uid`, every other member at its default.
    pub fn new(backend_uid: u32) -> Self {
        #[cfg(not(feature = "layout-v2"))]
        return Self { backend_uid };
        #[cfg(feature = "layout-v2")]
        return Self {
            backend_uid,
            ..Default::default()
        };
    }
}

/// `struct backend_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    /// Agent-allocated backend uid.
    pub backend_uid: u32,
}

/// `struct backend_value` (layout 1).
#[cfg(not(feature = "layout-v2"))]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendValue {
    /// Backend address, network order.
    pub addr: RawAddr,
    /// Port override, host order; 0 = the service's target port.
    pub port: u32,
}

/// `struct backend_value` (layout 2: `port` narrowed and first, adds `zone` and `flags`).
#[cfg(feature = "layout-v2")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendValue {
    /// Port override, host order; 0 = the service's target port.
    pub port: u16,
    /// Locality zone id; 0 = unknown (the program does not read it).
    pub zone: u16,
    /// Backend address, network order.
    pub addr: RawAddr,
    /// Reserved, 0.
    pub flags: u32,
}

impl BackendValue {
    /// A backend at `addr` with port override `port` (0 = none), every other member at its default.
    pub fn new(addr: RawAddr, port: u16) -> Self {
        #[cfg(not(feature = "layout-v2"))]
        return Self {
            addr,
            port: u32::from(port),
        };
        #[cfg(feature = "layout-v2")]
        return Self {
            addr,
            port,
            ..Default::default()
        };
    }

    /// The port override (0 = none). Layout 1 stores 32 bits but the agent
    /// only ever writes a `u16`, so the high bits are always zero.
    pub fn port(&self) -> u16 {
        #[cfg(not(feature = "layout-v2"))]
        return self.port as u16;
        #[cfg(feature = "layout-v2")]
        return self.port;
    }
}

/// `struct meta_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MetaValue {
    /// [`LAYOUT_VERSION`] of the agent that created the maps.
    pub layout_version: u32,
    /// Reserved.
    pub flags: u32,
    /// Incremented by every agent that takes ownership.
    pub generation: u64,
}

/// Kernel map types used by the datapath (subset of `enum bpf_map_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum MapKind {
    /// BPF_MAP_TYPE_HASH
    Hash = 1,
    /// BPF_MAP_TYPE_ARRAY
    Array = 2,
    /// BPF_MAP_TYPE_PERCPU_ARRAY
    PerCpuArray = 6,
}

/// What this build expects of one map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    /// Map name in the object and pin file name.
    pub name: &'static str,
    /// Kernel map type.
    pub kind: MapKind,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes (per CPU for per-CPU maps).
    pub value_size: u32,
    /// Default capacity.
    pub max_entries: u32,
    /// C type name of the key.
    pub key_type: &'static str,
    /// C type name of the value.
    pub value_type: &'static str,
}

const fn size<T>() -> u32 {
    std::mem::size_of::<T>() as u32
}

/// The maps of this build, in load order.
pub const MAPS: [MapSpec; 6] = [
    MapSpec {
        name: "frontend",
        kind: MapKind::Hash,
        key_size: size::<FrontendKey>(),
        value_size: size::<FrontendValue>(),
        max_entries: 131_072,
        key_type: "frontend_key",
        value_type: "frontend_value",
    },
    MapSpec {
        name: "service",
        kind: MapKind::Hash,
        key_size: size::<ServiceKey>(),
        value_size: size::<ServiceValue>(),
        max_entries: 16_384,
        key_type: "service_key",
        value_type: "service_value",
    },
    MapSpec {
        name: "endpoint",
        kind: MapKind::Hash,
        key_size: size::<EndpointKey>(),
        value_size: size::<EndpointValue>(),
        max_entries: MAX_ENDPOINTS,
        key_type: "endpoint_key",
        value_type: "endpoint_value",
    },
    MapSpec {
        name: "backend",
        kind: MapKind::Hash,
        key_size: size::<BackendKey>(),
        value_size: size::<BackendValue>(),
        max_entries: MAX_BACKENDS,
        key_type: "backend_key",
        value_type: "backend_value",
    },
    MapSpec {
        name: "counters",
        kind: MapKind::PerCpuArray,
        key_size: 4,
        value_size: 8,
        max_entries: COUNTER_SLOTS,
        key_type: "__u32",
        value_type: "__u64",
    },
    MapSpec {
        name: "meta",
        kind: MapKind::Array,
        key_size: 4,
        value_size: size::<MetaValue>(),
        max_entries: 1,
        key_type: "__u32",
        value_type: "meta_value",
    },
];

/// Looks up a map of this build by name.
pub fn map_spec(name: &str) -> Option<&'static MapSpec> {
    MAPS.iter().find(|m| m.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip() {
        for s in ["10.96.0.10", "127.0.0.1", "fd00::1", "::1", "2001:db8::5"] {
            let ip: IpAddr = s.parse().expect("literal");
            assert_eq!(ip_from_raw(&raw_addr(ip)), ip, "{s}");
        }
        let v4 = raw_addr("10.0.0.1".parse().expect("literal"));
        assert!(raw_is_v4(&v4));
        assert!(!raw_is_v4(&raw_addr("fd00::1".parse().expect("literal"))));
        // Network order in memory: the last word's bytes are the IPv4 octets.
        assert_eq!(v4[3].to_ne_bytes(), [10, 0, 0, 1]);
    }

    #[test]
    fn pod_bytes_round_trip() {
        let v = ServiceValue {
            prio_endpoint_count: [3, 0, 1, 0, 0, 0, 0],
            lb_policy: 2,
            ..Default::default()
        };
        assert_eq!(ServiceValue::from_bytes(v.as_bytes()), Some(v));
        assert_eq!(ServiceValue::from_bytes(&[0u8; 3]), None);
    }

    #[test]
    fn constructors_leave_the_layouts_extra_members_zero() {
        let nonzero = |b: &[u8]| b.iter().filter(|&&x| x != 0).count();
        let ev = EndpointValue::new(7);
        assert_eq!((ev.backend_uid, nonzero(ev.as_bytes())), (7, 1));
        // ::ffff:10.0.0.1 has four non-zero bytes, port 0x20fb two.
        let bv = BackendValue::new(raw_addr("10.0.0.1".parse().expect("literal")), 0x20fb);
        assert_eq!((bv.port(), nonzero(bv.as_bytes())), (0x20fb, 6));
        assert_eq!(BackendValue::from_bytes(bv.as_bytes()), Some(bv));
    }

    #[test]
    fn endpoint_keys_sort_by_service_then_bucket_then_index() {
        let k = |service_id, prio, backend_index| EndpointKey {
            service_id,
            prio,
            backend_index,
        };
        let mut keys = vec![k(2, 0, 1), k(1, 1, 1), k(1, 0, 2), k(1, 0, 1)];
        keys.sort();
        assert_eq!(keys, [k(1, 0, 1), k(1, 0, 2), k(1, 1, 1), k(2, 0, 1)]);
    }
}
