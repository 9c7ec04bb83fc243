//! The rules a desired state must follow. Those of one service alone are
//! checked once per service `Arc` and remembered by a [`Validator`] that
//! lives across builds, so a source that hands most services over unchanged
//! (the Kubernetes source rebuilds only what changed) pays for what changed;
//! those across services (names, VIPs, map capacities) run over the whole
//! state, on cheap hashes.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use baton_ebpf::{MAX_PORTS, PRIO_COUNT};

use super::{Capacity, DesiredState, Invalid, ServiceSpec};

/// A hasher seeded per process, much faster than std's SipHash on the
/// short keys validation hashes.
type Hasher = foldhash::quality::RandomState;
type FastSet<T> = HashSet<T, Hasher>;

fn invalid(path: String, reason: impl Into<String>) -> Invalid {
    Invalid {
        path,
        reason: reason.into(),
    }
}

/// One service's own problems: (field path below the service, reason).
type Problems = Vec<(String, String)>;

/// What a service `Arc` was found to break on its own.
struct Checked {
    /// Held so that the address keying it is not reused while remembered.
    spec: Arc<ServiceSpec>,
    problems: Problems,
    /// The last `validate` call that saw it.
    seen: u64,
}

/// The names and VIPs of the remembered services, counted: when every service
/// of a state is remembered, clean, and no name or VIP is counted twice, the
/// state needs no pass that hashes every name and VIP again.
#[derive(Default)]
struct Counts {
    names: HashMap<String, u32, Hasher>,
    vips: HashMap<IpAddr, u32, Hasher>,
    /// Names and VIPs counted more than once.
    repeated: usize,
}

impl Counts {
    fn add(&mut self, s: &ServiceSpec) {
        let mut up = |n: &mut u32| {
            *n += 1;
            if *n == 2 {
                self.repeated += 1;
            }
        };
        up(self.names.entry(s.name.clone()).or_default());
        for v in &s.vips {
            up(self.vips.entry(*v).or_default());
        }
    }

    fn remove(&mut self, s: &ServiceSpec) {
        fn down<K: std::hash::Hash + Eq>(
            m: &mut HashMap<K, u32, Hasher>,
            k: &K,
            repeated: &mut usize,
        ) {
            if let Some(n) = m.get_mut(k) {
                *n -= 1;
                if *n == 1 {
                    *repeated -= 1;
                }
                if *n == 0 {
                    m.remove(k);
                }
            }
        }
        down(&mut self.names, &s.name, &mut self.repeated);
        for v in &s.vips {
            down(&mut self.vips, v, &mut self.repeated);
        }
    }
}

/// Validates desired states, remembering the per-service results of the last
/// state it saw (see the module docs).
#[derive(Default)]
pub struct Validator {
    /// By the service `Arc`'s address.
    checked: HashMap<usize, Checked, Hasher>,
    counts: Counts,
    calls: u64,
    /// `false` for a one-off check: nothing is kept.
    remember: bool,
    ports: FastSet<u16>,
    endpoints: FastSet<(IpAddr, u16)>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("remembered", &self.checked.len())
            .finish_non_exhaustive()
    }
}

impl Validator {
    /// A validator that remembers what it checked between calls.
    pub fn new() -> Self {
        Self {
            remember: true,
            ..Self::default()
        }
    }

    /// A validator for one check.
    pub fn once() -> Self {
        Self::default()
    }

    /// Checks every rule; returns all violations (empty = valid), per service in
    /// order: its name, its VIPs used before, then its own fields.
    pub fn validate(&mut self, state: &DesiredState, cap: &Capacity) -> Vec<Invalid> {
        let n_eps: usize = if self.remember {
            match self.remembered_totals(state) {
                Totals::Clean { endpoints, vips }
                    if endpoints as u64 <= u64::from(cap.backends) =>
                {
                    let mut errs = Vec::new();
                    capacity(
                        &mut errs,
                        cap,
                        state.services.len() as u64,
                        vips,
                        endpoints as u64,
                        0,
                    );
                    return errs;
                }
                Totals::Clean { endpoints, .. } | Totals::Unclean { endpoints } => endpoints,
            }
        } else {
            state.services.iter().map(|s| s.endpoints.len()).sum()
        };
        self.positional(state, cap, n_eps)
    }

    /// Marks every service of `state` as seen, checking the new ones on their own, and
    /// forgets the others; whether the state is clean (every service, and no name or VIP
    /// twice), with its totals.
    fn remembered_totals(&mut self, state: &DesiredState) -> Totals {
        self.calls += 1;
        let calls = self.calls;
        let (mut endpoints, mut vips, mut clean) = (0usize, 0u64, true);
        let Self {
            checked,
            counts,
            ports,
            endpoints: eps,
            ..
        } = self;
        for s in &state.services {
            let c = checked.entry(Arc::as_ptr(s) as usize).or_insert_with(|| {
                counts.add(s);
                Checked {
                    spec: Arc::clone(s),
                    problems: check_service(s, ports, eps),
                    seen: 0,
                }
            });
            // The same `Arc` twice is a duplicate name the counts cannot see.
            clean &= c.seen != calls && c.problems.is_empty() && !c.spec.name.is_empty();
            c.seen = calls;
            endpoints += c.spec.endpoints.len();
            vips += c.spec.vips.len() as u64;
        }
        checked.retain(|_, c| {
            let keep = c.seen == calls;
            if !keep {
                counts.remove(&c.spec);
            }
            keep
        });
        if clean && counts.repeated == 0 {
            Totals::Clean { endpoints, vips }
        } else {
            Totals::Unclean { endpoints }
        }
    }

    /// Every rule service by service, with paths by position.
    fn positional(&mut self, state: &DesiredState, cap: &Capacity, n_eps: usize) -> Vec<Invalid> {
        let n = state.services.len();
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
        let mut n_frontends = 0u64;
        for (i, s) in state.services.iter().enumerate() {
            let at = |f: &str| format!("services[{i}]{f}");
            if s.name.is_empty() {
                errs.push(invalid(at(".name"), "name must not be empty"));
            } else if !names.insert(s.name.as_str()) {
                errs.push(invalid(
                    at(".name"),
                    format!("duplicate service name {:?}", s.name),
                ));
            }
            for (j, vip) in s.vips.iter().enumerate() {
                if let Some(prev) = vips.insert(*vip, i) {
                    errs.push(invalid(
                        at(&format!(".vips[{j}]")),
                        format!("duplicate VIP {vip} (also used by services[{prev}])"),
                    ));
                }
            }
            let fresh;
            let own = match self.checked.get(&(Arc::as_ptr(s) as usize)) {
                Some(c) => &c.problems,
                None => {
                    fresh = check_service(s, &mut self.ports, &mut self.endpoints);
                    &fresh
                }
            };
            errs.extend(own.iter().map(|(f, r)| invalid(at(f), r.clone())));
            if count_backends {
                backends.extend(s.endpoints.iter().map(|e| (e.address, e.port)));
            }
            n_frontends += s.vips.len() as u64;
        }
        capacity(
            &mut errs,
            cap,
            n as u64,
            n_frontends,
            n_eps as u64,
            backends.len() as u64,
        );
        errs
    }
}

/// What the remembered services add up to.
enum Totals {
    /// No rule broken but perhaps a capacity.
    Clean { endpoints: usize, vips: u64 },
    /// Some rule broken: the positional pass names it.
    Unclean { endpoints: usize },
}

/// The map capacity rules.
fn capacity(
    errs: &mut Vec<Invalid>,
    cap: &Capacity,
    services: u64,
    vips: u64,
    endpoints: u64,
    backends: u64,
) {
    let over = |what: &str, n: u64, max: u32| {
        (n > u64::from(max)).then(|| {
            invalid(
                "services".into(),
                format!("{n} {what} exceed the map capacity of {max}"),
            )
        })
    };
    errs.extend(over("services", services, cap.services));
    errs.extend(over("VIPs", vips, cap.frontends));
    errs.extend(over("endpoints", endpoints, cap.endpoints));
    errs.extend(over("distinct backends", backends, cap.backends));
}

/// The rules of one service alone; `ports` and `endpoints` are scratch sets.
fn check_service(
    s: &ServiceSpec,
    ports: &mut FastSet<u16>,
    endpoints: &mut FastSet<(IpAddr, u16)>,
) -> Problems {
    let mut out = Problems::new();
    let mut push = |f: String, r: String| out.push((f, r));
    if s.vips.is_empty() {
        push(".vips".into(), "at least one VIP is required".into());
    }
    let v4 = s.vips.first().map(IpAddr::is_ipv4);
    for (j, vip) in s.vips.iter().enumerate() {
        if Some(vip.is_ipv4()) != v4 {
            push(
                format!(".vips[{j}]"),
                "all VIPs of a service must be of one address family".into(),
            );
        }
        if vip.is_unspecified() || vip.is_multicast() {
            push(format!(".vips[{j}]"), format!("{vip} cannot be a VIP"));
        }
    }
    if s.ports.is_empty() {
        push(".ports".into(), "at least one port is required".into());
    }
    if s.ports.len() > MAX_PORTS {
        push(
            ".ports".into(),
            format!("{} ports, at most {MAX_PORTS} are supported", s.ports.len()),
        );
    }
    ports.clear();
    for (j, p) in s.ports.iter().enumerate() {
        if p.port == 0 {
            push(
                format!(".ports[{j}].port"),
                "port must be in 1..=65535".into(),
            );
        }
        if !ports.insert(p.port) {
            push(
                format!(".ports[{j}].port"),
                format!("duplicate port {}", p.port),
            );
        }
    }
    endpoints.clear();
    for (j, e) in s.endpoints.iter().enumerate() {
        if Some(e.address.is_ipv4()) != v4 {
            push(
                format!(".endpoints[{j}].address"),
                "endpoint family differs from the service's VIPs".into(),
            );
        }
        if e.address.is_unspecified() || e.address.is_multicast() {
            push(
                format!(".endpoints[{j}].address"),
                format!("{} cannot be a backend", e.address),
            );
        }
        if usize::from(e.priority) >= PRIO_COUNT {
            push(
                format!(".endpoints[{j}].priority"),
                format!(
                    "priority {} out of range 0..={}",
                    e.priority,
                    PRIO_COUNT - 1
                ),
            );
        }
        if !endpoints.insert((e.address, e.port)) {
            push(
                format!(".endpoints[{j}]"),
                format!("duplicate endpoint {}:{}", e.address, e.port),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EndpointSpec, PortSpec, ServiceSpec};
    use baton_ebpf::LbPolicy;
    use std::net::Ipv4Addr;

    /// `n` services of `per` endpoints each, backends `10.1.0.<first + k>`
    /// (so services share backends when `first` repeats).
    fn state(n: u32, per: u32, first: impl Fn(u32) -> u32) -> DesiredState {
        let ip = |x: u32| IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + x));
        (0..n)
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
            .collect()
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
        let s0 = Arc::make_mut(&mut dup.services[0]);
        s0.endpoints[1] = s0.endpoints[0];
        assert_eq!(
            dup.validate(&cap)
                .iter()
                .map(|e| e.path.as_str())
                .collect::<Vec<_>>(),
            ["services[0].endpoints[1]"]
        );
    }

    #[test]
    fn a_remembering_validator_agrees_with_a_fresh_check() {
        let cap = Capacity::default();
        let mut v = Validator::new();
        let mut st = state(5, 2, |i| 2 * i);
        // Service 3 breaks a rule of its own; service 4 takes service 0's VIP.
        Arc::make_mut(&mut st.services[3]).ports.clear();
        let vip0 = st.services[0].vips[0];
        Arc::make_mut(&mut st.services[4]).vips = vec![vip0];
        let first = v.validate(&st, &cap);
        assert_eq!(first, st.validate(&cap));
        assert_eq!(first.len(), 2, "{first:?}");
        assert_eq!(v.checked.len(), 5);
        // Moved to the front, the remembered problem follows it.
        st.services.swap(0, 3);
        assert_eq!(v.validate(&st, &cap), st.validate(&cap));
        assert_eq!(v.validate(&st, &cap)[0].path, "services[0].ports");
        // Mended: a new `Arc` is checked, the old one forgotten.
        Arc::make_mut(&mut st.services[0]).ports = vec![PortSpec {
            port: 80,
            target_port: 80,
        }];
        let mended = v.validate(&st, &cap);
        assert_eq!(mended, st.validate(&cap));
        assert_eq!(v.checked.len(), 5);
        assert_eq!(mended.len(), 1);
        assert!(mended[0].reason.contains("duplicate VIP"), "{mended:?}");
    }

    #[test]
    fn random_edits_give_what_a_fresh_check_gives() {
        let mut rng = crate::testing::Rng(0x2545_F491_4F6C_DD1D);
        let mut below = |n: usize| rng.below(n);
        let cap = Capacity {
            endpoints: 70,
            backends: 60,
            ..Capacity::default()
        };
        let mut v = Validator::new();
        let mut st = state(12, 3, |i| 3 * i);
        // Valid states, invalid states.
        let mut outcomes = [0; 2];
        for step in 0..2000 {
            let i = below(st.services.len());
            let j = below(st.services.len());
            match below(9) {
                0 => {
                    let name = st.services[j].name.clone();
                    Arc::make_mut(&mut st.services[i]).name = name;
                }
                1 => {
                    let vip = st.services[j].vips[0];
                    Arc::make_mut(&mut st.services[i]).vips = vec![vip];
                }
                2 => Arc::make_mut(&mut st.services[i]).ports[0].port = below(3) as u16,
                3 => st.services.swap(i, j),
                4 if st.services.len() > 2 => {
                    st.services.remove(i);
                }
                5 => {
                    let again = Arc::clone(&st.services[i]);
                    st.services.push(again);
                }
                6 => {
                    let mut fresh = state(1, 1 + below(8) as u32, |_| 100 + step as u32);
                    let mut one = Arc::make_mut(&mut fresh.services[0]).clone();
                    one.name = format!("n{step}");
                    one.vips = vec![IpAddr::from([10, 9, (step >> 8) as u8, step as u8])];
                    st.services.push(Arc::new(one));
                }
                _ => {
                    let k = below(st.services.len());
                    let s = Arc::make_mut(&mut st.services[k]);
                    if let Some(e) = s.endpoints.first_mut() {
                        e.priority = below(PRIO_COUNT + 1) as u8;
                    }
                }
            }
            let got = v.validate(&st, &cap);
            assert_eq!(got, st.validate(&cap), "step {step}");
            outcomes[usize::from(!got.is_empty())] += 1;
            if step % 6 == 0 {
                // Start over clean now and then, so that both outcomes keep coming.
                st = state(12, 3, |i| 3 * i + step as u32);
            }
        }
        assert!(outcomes.iter().all(|&n| n > 100), "{outcomes:?}");
    }
}
