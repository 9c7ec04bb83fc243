//! The six datapath maps together, and a point-in-time copy of their contents.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Journal, MapError, MapHandle};
use crate::sys;
use baton_ebpf::{
    map_spec, BackendKey, BackendValue, Counter, EndpointKey, EndpointValue, FrontendKey,
    FrontendValue, MapPod, MetaValue, ServiceKey, ServiceValue, MAPS,
};

/// Handles on every datapath map.
#[derive(Debug)]
pub struct MapSet {
    /// VIP → service id.
    pub frontend: MapHandle,
    /// Service id → counts, policy, ports.
    pub service: MapHandle,
    /// (service, prio, index) → backend uid.
    pub endpoint: MapHandle,
    /// Backend uid → address.
    pub backend: MapHandle,
    /// Per-CPU counters.
    pub counters: MapHandle,
    /// Layout version and generation.
    pub meta: MapHandle,
    cpus: usize,
    journal: Arc<Journal>,
}

/// Where map `name` is pinned under `pin_dir`.
pub fn map_pin_path(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join("maps").join(name)
}

impl MapSet {
    /// Builds the set from one fd per map (in [`MAPS`] order), checking layouts.
    pub fn from_fds(mut fds: BTreeMap<&'static str, OwnedFd>) -> Result<Self, MapError> {
        let mut take = |name: &'static str| -> Result<MapHandle, MapError> {
            let spec = map_spec(name).ok_or_else(|| MapError::Layout {
                map: name.into(),
                found: "unknown map".into(),
                expected: "a map of this build".into(),
            })?;
            let fd = fds.remove(name).ok_or_else(|| MapError::Layout {
                map: name.into(),
                found: "nothing".into(),
                expected: "a map fd".into(),
            })?;
            MapHandle::open(spec, fd)
        };
        let mut set = Self {
            frontend: take("frontend")?,
            service: take("service")?,
            endpoint: take("endpoint")?,
            backend: take("backend")?,
            counters: take("counters")?,
            meta: take("meta")?,
            cpus: sys::possible_cpus(),
            journal: Arc::default(),
        };
        let j = set.journal.clone();
        for h in [
            &mut set.frontend,
            &mut set.service,
            &mut set.endpoint,
            &mut set.backend,
            &mut set.counters,
            &mut set.meta,
        ] {
            h.set_journal(j.clone());
        }
        Ok(set)
    }

    /// The journal every write to these maps is recorded in (while on).
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Opens the maps pinned under `pin_dir`.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self, MapError> {
        let mut fds = BTreeMap::new();
        for spec in MAPS.iter() {
            let fd = sys::obj_get(&map_pin_path(pin_dir, spec.name)).map_err(|source| {
                MapError::Sys {
                    map: spec.name.into(),
                    source,
                }
            })?;
            fds.insert(spec.name, fd);
        }
        Self::from_fds(fds)
    }

    /// The handle of map `name`.
    pub fn by_name(&self, name: &str) -> Option<&MapHandle> {
        self.all().into_iter().find(|h| h.name() == name)
    }

    /// Every handle, in [`MAPS`] order.
    pub fn all(&self) -> [&MapHandle; 6] {
        [
            &self.frontend,
            &self.service,
            &self.endpoint,
            &self.backend,
            &self.counters,
            &self.meta,
        ]
    }

    /// Reads one counter summed over CPUs.
    pub fn counter(&self, c: Counter) -> Result<u64, MapError> {
        self.counters.percpu_sum(c as u32, self.cpus)
    }

    /// Reads the meta entry.
    pub fn meta(&self) -> Result<MetaValue, MapError> {
        Ok(self.meta.get::<u32, MetaValue>(&0)?.unwrap_or_default())
    }

    /// Writes the meta entry.
    pub fn set_meta(&self, meta: &MetaValue) -> Result<(), MapError> {
        self.meta.put(&0u32, meta)
    }

    /// Copies the contents of the four lookup maps.
    pub fn snapshot(&self) -> Result<Snapshot, MapError> {
        Ok(Snapshot {
            frontends: self
                .frontend
                .entries::<FrontendKey, FrontendValue>()?
                .into_iter()
                .collect(),
            services: self
                .service
                .entries::<ServiceKey, ServiceValue>()?
                .into_iter()
                .collect(),
            endpoints: self
                .endpoint
                .entries::<EndpointKey, EndpointValue>()?
                .into_iter()
                .collect(),
            backends: self
                .backend
                .entries::<BackendKey, BackendValue>()?
                .into_iter()
                .collect(),
        })
    }

    /// Entry counts per map (frontend, service, endpoint, backend).
    pub fn entry_counts(&self) -> Result<[(&'static str, usize); 4], MapError> {
        Ok([
            ("frontend", self.frontend.keys::<FrontendKey>()?.len()),
            ("service", self.service.keys::<ServiceKey>()?.len()),
            ("endpoint", self.endpoint.keys::<EndpointKey>()?.len()),
            ("backend", self.backend.keys::<BackendKey>()?.len()),
        ])
    }
}

/// A copy of the lookup maps' contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// frontend map.
    pub frontends: BTreeMap<FrontendKey, FrontendValue>,
    /// service map.
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    /// endpoint map.
    pub endpoints: BTreeMap<EndpointKey, EndpointValue>,
    /// backend map.
    pub backends: BTreeMap<BackendKey, BackendValue>,
}

/// Sets `key`'s entry in `view` to what `map` holds now (removes it when absent).
fn refresh_one<K: MapPod + Ord, V: MapPod>(
    view: &mut BTreeMap<K, V>,
    map: &MapHandle,
    key: &[u8],
) -> Result<(), MapError> {
    let mut k = K::default();
    if key.len() != k.as_bytes().len() {
        return Err(MapError::Layout {
            map: map.name().into(),
            found: format!("a {}B key", key.len()),
            expected: format!("{}B keys", k.as_bytes().len()),
        });
    }
    k.as_bytes_mut().copy_from_slice(key);
    match map.get::<K, V>(&k)? {
        Some(v) => {
            view.insert(k, v);
        }
        None => {
            view.remove(&k);
        }
    }
    Ok(())
}

impl Snapshot {
    /// Re-reads the entry of `key` (this build's key bytes) in `map` from
    /// `maps`: after a snapshot taken while someone else wrote, refreshing
    /// every key they wrote (a handover's journal) makes the snapshot equal
    /// the maps. Maps outside the four lookup maps are ignored.
    pub fn refresh(&mut self, maps: &MapSet, map: &str, key: &[u8]) -> Result<(), MapError> {
        match map {
            "frontend" => refresh_one(&mut self.frontends, &maps.frontend, key),
            "service" => refresh_one(&mut self.services, &maps.service, key),
            "endpoint" => refresh_one(&mut self.endpoints, &maps.endpoint, key),
            "backend" => refresh_one(&mut self.backends, &maps.backend, key),
            _ => Ok(()),
        }
    }

    /// Entries in the four maps.
    pub fn len(&self) -> usize {
        self.frontends.len() + self.services.len() + self.endpoints.len() + self.backends.len()
    }

    /// Whether the four maps are empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
