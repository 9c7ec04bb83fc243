//! [`MapLayout`]: what a map looks like, from this build or from the kernel.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd};

use baton_ebpf::btf::{Btf, Shape};
use baton_ebpf::MapSpec;
use serde::{Deserialize, Serialize};

use super::MigrateError;
use crate::sys;

/// `BPF_MAP_TYPE_PERCPU_HASH`.
pub const MAP_PERCPU_HASH: u32 = 5;
/// `BPF_MAP_TYPE_PERCPU_ARRAY`.
pub const MAP_PERCPU_ARRAY: u32 = 6;
/// `BPF_MAP_TYPE_LRU_PERCPU_HASH`.
pub const MAP_LRU_PERCPU_HASH: u32 = 10;
/// `BPF_MAP_TYPE_ARRAY`.
pub const MAP_ARRAY: u32 = 2;

/// Everything that decides whether two maps are interchangeable. Goes into
/// the handover manifest, hence serde.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapLayout {
    /// Map name (pin file name).
    pub name: String,
    /// `enum bpf_map_type`.
    pub map_type: u32,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes (per CPU for per-CPU maps).
    pub value_size: u32,
    /// Capacity.
    pub max_entries: u32,
    /// Creation flags.
    pub map_flags: u32,
    /// Shape of the key type.
    pub key: Shape,
    /// Shape of the value type.
    pub value: Shape,
}

impl MapLayout {
    /// Layout of one map described by `btf` (sizes from the BTF shapes),
    /// named and typed by `spec`.
    pub fn from_btf(spec: &MapSpec, btf: &Btf, max_entries: u32) -> Result<Self, MigrateError> {
        let shape = |ty: &str| {
            btf.shape_by_name(ty)
                .ok_or_else(|| MigrateError::MissingType {
                    map: spec.name.into(),
                    type_name: ty.into(),
                })
        };
        let (key, value) = (shape(spec.key_type)?, shape(spec.value_type)?);
        Ok(Self {
            name: spec.name.into(),
            map_type: spec.kind as u32,
            key_size: key.size(),
            value_size: value.size(),
            max_entries,
            map_flags: 0,
            key,
            value,
        })
    }

    /// Layout of one map of this build: its spec, the object's BTF and an
    /// optional max_entries override; the spec's sizes must match the BTF.
    pub fn from_spec(
        spec: &MapSpec,
        btf: &Btf,
        max_entries: Option<u32>,
    ) -> Result<Self, MigrateError> {
        let layout = Self::from_btf(spec, btf, max_entries.unwrap_or(spec.max_entries))?;
        if (layout.key_size, layout.value_size) != (spec.key_size, spec.value_size) {
            return Err(MigrateError::SizeMismatch {
                map: spec.name.into(),
                detail: format!(
                    "BTF key {}B value {}B, this build's mirrors key {}B value {}B",
                    layout.key_size, layout.value_size, spec.key_size, spec.value_size
                ),
            });
        }
        Ok(layout)
    }

    /// Layouts of every map of the running build (`baton_ebpf::MAPS` and the
    /// embedded object's BTF), with `--map-max-entries` style overrides.
    pub fn of_build(overrides: &BTreeMap<String, u32>) -> Result<Vec<Self>, MigrateError> {
        let btf = object_btf(baton_ebpf::object())?;
        baton_ebpf::MAPS
            .iter()
            .map(|s| Self::from_spec(s, &btf, overrides.get(s.name).copied()))
            .collect()
    }

    /// Layouts of the maps of layout generation `version` (the meta map's
    /// `layout_version`) when this build carries its object: the fallback for
    /// kernel maps without BTF. Capacities are this build's defaults; the
    /// kernel's own values replace them in [`from_fd_or_known`](Self::from_fd_or_known).
    pub fn known(version: u32) -> Result<Option<Vec<Self>>, MigrateError> {
        let Some(object) = baton_ebpf::object_of_layout(version) else {
            return Ok(None);
        };
        let btf = object_btf(object)?;
        baton_ebpf::MAPS
            .iter()
            .map(|s| Self::from_btf(s, &btf, s.max_entries))
            .collect::<Result<_, _>>()
            .map(Some)
    }

    /// Layout of a live kernel map, from its info and the kernel's copy of its
    /// BTF (works with nothing but a pin: the recovery path). `name` defaults
    /// to the kernel's (15-byte) map name.
    pub fn from_fd(fd: BorrowedFd<'_>, name: Option<&str>) -> Result<Self, MigrateError> {
        let info = sys::map_info(fd).map_err(|source| MigrateError::Sys {
            map: name.map_or_else(|| "?".into(), Into::into),
            what: "map info",
            source,
        })?;
        let name = name.map_or_else(|| info.name(), Into::into);
        let sys_err = |what: &'static str| {
            let map = name.clone();
            move |source| MigrateError::Sys { map, what, source }
        };
        if info.btf_id == 0 || info.btf_value_type_id == 0 {
            return Err(MigrateError::NoBtf { map: name });
        }
        let btf_fd = sys::btf_get_fd_by_id(info.btf_id).map_err(sys_err("open map BTF"))?;
        let blob = sys::btf_blob(btf_fd.as_fd()).map_err(sys_err("read map BTF"))?;
        let btf_err = |source| MigrateError::Btf {
            map: name.clone(),
            source,
        };
        let btf = Btf::parse(&blob).map_err(btf_err)?;
        // Key type id 0 is legal (keyless or array maps created without one):
        // arrays are indexed by a u32.
        let key = if info.btf_key_type_id == 0 {
            Shape::Int {
                size: info.key_size,
                signed: false,
            }
        } else {
            btf.shape(info.btf_key_type_id).map_err(btf_err)?
        };
        let value = btf.shape(info.btf_value_type_id).map_err(btf_err)?;
        let layout = Self {
            map_type: info.map_type,
            key_size: info.key_size,
            value_size: info.value_size,
            max_entries: info.max_entries,
            map_flags: info.map_flags,
            key,
            value,
            name,
        };
        layout.check_sizes()?;
        Ok(layout)
    }

    /// Like [`from_fd`](Self::from_fd), but a map without BTF falls back to
    /// `known` (the layouts this build knows for the meta map's
    /// `layout_version`), taking capacity and flags from the kernel.
    pub fn from_fd_or_known(
        fd: BorrowedFd<'_>,
        name: &str,
        known: &[MapLayout],
    ) -> Result<Self, MigrateError> {
        match Self::from_fd(fd, Some(name)) {
            Err(MigrateError::NoBtf { .. }) => {
                let info = sys::map_info(fd).map_err(|source| MigrateError::Sys {
                    map: name.into(),
                    what: "map info",
                    source,
                })?;
                let base = known
                    .iter()
                    .find(|l| l.name == name)
                    .ok_or_else(|| MigrateError::NoBtf { map: name.into() })?;
                tracing::warn!(map = name, "map has no BTF; assuming the known layout");
                let layout = Self {
                    max_entries: info.max_entries,
                    map_flags: info.map_flags,
                    ..base.clone()
                };
                if (info.map_type, info.key_size, info.value_size)
                    != (layout.map_type, layout.key_size, layout.value_size)
                {
                    return Err(MigrateError::SizeMismatch {
                        map: name.into(),
                        detail: format!(
                            "kernel has type {} key {}B value {}B, the known layout type {} key {}B value {}B",
                            info.map_type,
                            info.key_size,
                            info.value_size,
                            layout.map_type,
                            layout.key_size,
                            layout.value_size
                        ),
                    });
                }
                Ok(layout)
            }
            other => other,
        }
    }

    /// Whether values are stored once per possible CPU.
    pub fn is_percpu(&self) -> bool {
        matches!(
            self.map_type,
            MAP_PERCPU_HASH | MAP_PERCPU_ARRAY | MAP_LRU_PERCPU_HASH
        )
    }

    /// Whether the map is an array (every slot always exists, no delete).
    pub fn is_array(&self) -> bool {
        matches!(self.map_type, MAP_ARRAY | MAP_PERCPU_ARRAY)
    }

    /// Bytes per value as the kernel copies it to user space.
    pub fn value_stride(&self, cpus: usize) -> usize {
        if self.is_percpu() {
            cpus * (self.value_size as usize).next_multiple_of(8)
        } else {
            self.value_size as usize
        }
    }

    /// The same layout ignoring C type names (a renamed struct with the same
    /// members holds the same bytes).
    pub fn same_as(&self, other: &Self) -> bool {
        (
            self.map_type,
            self.key_size,
            self.value_size,
            self.max_entries,
            self.map_flags,
        ) == (
            other.map_type,
            other.key_size,
            other.value_size,
            other.max_entries,
            other.map_flags,
        ) && same_shape(&self.key, &other.key)
            && same_shape(&self.value, &other.value)
    }

    fn check_sizes(&self) -> Result<(), MigrateError> {
        if self.key.size() != self.key_size || self.value.size() != self.value_size {
            return Err(MigrateError::SizeMismatch {
                map: self.name.clone(),
                detail: format!(
                    "BTF key {}B value {}B, map key {}B value {}B",
                    self.key.size(),
                    self.value.size(),
                    self.key_size,
                    self.value_size
                ),
            });
        }
        Ok(())
    }
}

/// Shape equality ignoring struct type names.
pub fn same_shape(a: &Shape, b: &Shape) -> bool {
    match (a, b) {
        (
            Shape::Struct {
                size: sa,
                members: ma,
                ..
            },
            Shape::Struct {
                size: sb,
                members: mb,
                ..
            },
        ) => {
            sa == sb
                && ma.len() == mb.len()
                && ma.iter().zip(mb).all(|(x, y)| {
                    (&x.name, x.offset, x.size, x.bitfield_size, x.bit_offset)
                        == (&y.name, y.offset, y.size, y.bitfield_size, y.bit_offset)
                        && same_shape(&x.shape, &y.shape)
                })
        }
        (Shape::Array { elem: ea, len: la }, Shape::Array { elem: eb, len: lb }) => {
            la == lb && same_shape(ea, eb)
        }
        _ => a == b,
    }
}

fn object_btf(object: &[u8]) -> Result<Btf, MigrateError> {
    Btf::from_elf(object).map_err(|source| MigrateError::Btf {
        map: "*".into(),
        source,
    })
}
