//! What every section shares: the addresses, the generated services (the latency services and
//! the 10 000 × 10 "big" state, also as a services file), and the datapath helpers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use baton_agent::datapath::{Datapath, DatapathConfig};
use baton_agent::model::{DesiredState, EndpointSpec, PortSpec, ServiceSpec};
use baton_agent::programmer::Programmer;
use baton_ebpf::LbPolicy;

/// Backends every latency service balances over.
pub const BACKENDS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 0, 0, 10),
    Ipv4Addr::new(127, 0, 0, 11),
    Ipv4Addr::new(127, 0, 0, 12),
];
pub const BACKEND_PORT: u16 = 8080;
pub const VIP_PORT: u16 = 80;
pub const SIZES: [usize; 3] = [10, 1_000, 10_000];
pub const BIG: usize = 10_000;
pub const EPS_PER_SVC: usize = 10;

/// xorshift64*: deterministic, dependency-free randomness.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// VIP number `i` (0-based) in the /16 `10.<b>.0.0`.
pub fn vip(b: u8, i: usize) -> Ipv4Addr {
    let n = i + 1;
    Ipv4Addr::new(10, b, (n >> 8) as u8, (n & 0xff) as u8)
}

pub fn service(
    name: String,
    vip: Ipv4Addr,
    backends: impl Iterator<Item = Ipv4Addr>,
) -> ServiceSpec {
    ServiceSpec {
        name,
        vips: vec![IpAddr::V4(vip)],
        ports: vec![PortSpec {
            port: VIP_PORT,
            target_port: BACKEND_PORT,
        }],
        policy: LbPolicy::Random,
        endpoints: backends
            .map(|a| EndpointSpec {
                address: IpAddr::V4(a),
                port: 0,
                priority: 0,
            })
            .collect(),
    }
}

/// `n` latency services on VIPs 10.96.x.y, each balancing over the three live backends.
pub fn latency_state(n: usize) -> DesiredState {
    (0..n)
        .map(|i| service(format!("lat-{i}"), vip(96, i), BACKENDS.iter().copied()))
        .collect()
}

/// Distinct backend address number `k` inside 127.0.0.0/8, avoiding 127.0.0.0/16.
pub fn backend_addr(k: u32) -> Ipv4Addr {
    let k = k + 65_536;
    Ipv4Addr::new(127, (k >> 16) as u8, (k >> 8) as u8, k as u8)
}

/// `BIG` services × `EPS_PER_SVC` distinct backends.
pub fn big_state() -> DesiredState {
    (0..BIG)
        .map(|i| {
            let eps = (0..EPS_PER_SVC).map(|j| backend_addr((i * EPS_PER_SVC + j) as u32));
            service(format!("svc-{i}"), vip(96, i), eps)
        })
        .collect()
}

/// Service `svc-<i>` of the big state as a services-file item, with backends number `eps`.
pub fn service_yaml(i: usize, eps: &[u32]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  - {{name: svc-{i}, vips: [{}], ports: [{{port: {VIP_PORT}, targetPort: {BACKEND_PORT}}}], policy: random, endpoints: [",
        vip(96, i)
    );
    for (j, &k) in eps.iter().enumerate() {
        let sep = if j + 1 < eps.len() { "," } else { "" };
        let _ = writeln!(s, "      {{address: {}}}{sep}", backend_addr(k));
    }
    s.push_str("    ]}\n");
    s
}

/// Backend numbers of `svc-<i>` in the big state.
pub fn big_eps(i: usize) -> Vec<u32> {
    (0..EPS_PER_SVC)
        .map(|j| (i * EPS_PER_SVC + j) as u32)
        .collect()
}

pub fn services_yaml() -> String {
    let mut s = String::from("services:\n");
    for i in 0..BIG {
        s.push_str(&service_yaml(i, &big_eps(i)));
    }
    s
}

pub fn datapath(pin_dir: PathBuf, cgroup: &Path) -> Result<Datapath> {
    let cfg = DatapathConfig {
        pin_dir,
        cgroup: cgroup.to_owned(),
        mount_bpffs: false,
        max_entries: BTreeMap::new(),
    };
    Datapath::start(&cfg).context("starting the datapath")
}

pub fn sync(
    p: &mut Programmer,
    dp: &Datapath,
    st: &DesiredState,
) -> Result<baton_agent::programmer::SyncReport> {
    let r = p.sync(&dp.maps, st).context("sync")?;
    if !r.failed.is_empty() {
        bail!(
            "sync failed for {} services, first: {:?}",
            r.failed.len(),
            r.failed.first()
        );
    }
    Ok(r)
}
