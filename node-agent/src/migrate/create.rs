//! Creating a map for a layout (tests, recovery); aya creates the new
//! build's maps itself when it loads the object.

use std::os::fd::{AsFd, OwnedFd};

use super::{btfgen, MapLayout, MigrateError};
use crate::sys::{self, MapBtf, MapCreate};

/// Creates an empty map with `layout`, carrying BTF for its key and value
/// (so [`MapLayout::from_fd`] reads the same layout back). When the kernel
/// refuses the BTF the map is created without it, with a warning.
pub fn create_map(layout: &MapLayout) -> Result<OwnedFd, MigrateError> {
    let btf = match btfgen::encode(&layout.key, &layout.value) {
        Ok((blob, k, v)) => match sys::btf_load(&blob) {
            Ok(fd) => Some((fd, k, v)),
            Err(e) => {
                tracing::warn!(map = %layout.name, error = %e, "BTF refused; creating the map without it");
                None
            }
        },
        Err(e) => {
            tracing::warn!(map = %layout.name, error = %e, "creating the map without BTF");
            None
        }
    };
    let spec = MapCreate {
        name: &layout.name,
        map_type: layout.map_type,
        key_size: layout.key_size,
        value_size: layout.value_size,
        max_entries: layout.max_entries,
        map_flags: layout.map_flags,
        btf: btf.as_ref().map(|(fd, k, v)| MapBtf {
            fd: fd.as_fd(),
            key_type_id: *k,
            value_type_id: *v,
        }),
    };
    // The map keeps its own reference to the BTF object; our fd can go.
    sys::map_create(&spec).map_err(|source| MigrateError::Sys {
        map: layout.name.clone(),
        what: "create map",
        source,
    })
}
