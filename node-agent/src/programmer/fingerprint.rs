//! What each service was last programmed from, so that a sync skips the
//! services that did not change without rebuilding them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::model::ServiceSpec;

/// The spec a service was last programmed from.
#[derive(Clone, Debug)]
pub struct Fingerprint {
    /// Hash of the spec's content.
    pub hash: u64,
    /// The spec itself: a source that hands the same `Arc` again changed nothing.
    pub spec: Arc<ServiceSpec>,
}

/// Fingerprints by service name, and the addresses of the spec `Arc`s they
/// hold: "is this the very `Arc` the maps were programmed from?" is one
/// lookup of an address in a table that stays in cache, where a lookup by
/// name reads the name's heap string (a cache miss per service per sync at
/// 10 000 services, most of a sync that changes a few).
#[derive(Clone, Debug, Default)]
pub struct Fingerprints {
    by_name: HashMap<String, Fingerprint>,
    specs: HashSet<usize, foldhash::fast::RandomState>,
}

fn addr(spec: &Arc<ServiceSpec>) -> usize {
    Arc::as_ptr(spec) as usize
}

impl Fingerprints {
    /// Whether the maps were programmed from this very `Arc` (held here, so
    /// its address cannot belong to another spec meanwhile).
    pub fn holds(&self, spec: &Arc<ServiceSpec>) -> bool {
        self.specs.contains(&addr(spec))
    }

    /// The content hash `name` was programmed from.
    pub fn hash_of(&self, name: &str) -> Option<u64> {
        self.by_name.get(name).map(|f| f.hash)
    }

    /// Records that the maps hold `spec`, whose content hashes to `hash`.
    pub fn insert(&mut self, spec: &Arc<ServiceSpec>, hash: u64) {
        let f = Fingerprint {
            hash,
            spec: Arc::clone(spec),
        };
        if let Some(old) = self.by_name.insert(spec.name.clone(), f) {
            self.specs.remove(&addr(&old.spec));
        }
        self.specs.insert(addr(spec));
    }

    /// Forgets `name` (the next sync compares it in full).
    pub fn remove(&mut self, name: &str) {
        if let Some(old) = self.by_name.remove(name) {
            self.specs.remove(&addr(&old.spec));
        }
    }
}

/// Hashes specs for the unchanged-service fast path. Keyed per process
/// (a source's user cannot aim for a collision that hides an update), and
/// fed one contiguous encoding per spec: one hasher call instead of dozens.
#[derive(Debug, Default)]
pub struct Fingerprinter {
    keys: std::hash::RandomState,
    buf: Vec<u8>,
}

impl Fingerprinter {
    /// The content hash of `spec`.
    pub fn of(&mut self, spec: &ServiceSpec) -> u64 {
        use std::hash::BuildHasher;
        let b = &mut self.buf;
        b.clear();
        b.extend_from_slice(&(spec.name.len() as u32).to_le_bytes());
        b.extend_from_slice(spec.name.as_bytes());
        b.push(spec.policy as u8);
        b.push(spec.vips.len() as u8);
        for ip in &spec.vips {
            b.extend_from_slice(&ip_bytes(ip));
        }
        b.push(spec.ports.len() as u8);
        for p in &spec.ports {
            b.extend_from_slice(&p.port.to_le_bytes());
            b.extend_from_slice(&p.target_port.to_le_bytes());
        }
        for e in &spec.endpoints {
            b.extend_from_slice(&ip_bytes(&e.address));
            b.extend_from_slice(&e.port.to_le_bytes());
            b.push(e.priority);
        }
        self.keys.hash_one(&b[..])
    }
}

/// 16 bytes plus the family, so a v4 address never equals its v4-mapped v6 twin.
fn ip_bytes(ip: &std::net::IpAddr) -> [u8; 17] {
    let mut out = [0u8; 17];
    match ip {
        std::net::IpAddr::V4(v4) => {
            out[0] = 4;
            out[13..].copy_from_slice(&v4.octets());
        }
        std::net::IpAddr::V6(v6) => {
            out[0] = 6;
            out[1..].copy_from_slice(&v6.octets());
        }
    }
    out
}
