//! BPF_MAP_CREATE.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use super::call::{bpf, einval, owned};
use super::SysError;

const BPF_MAP_CREATE: u32 = 0;

#[repr(C)]
#[derive(Default)]
struct CreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    map_ifindex: u32,
    btf_fd: u32,
    btf_key_type_id: u32,
    btf_value_type_id: u32,
    btf_vmlinux_value_type_id: u32,
    map_extra: u64,
}

/// BTF describing a new map's key and value.
#[derive(Clone, Copy, Debug)]
pub struct MapBtf<'a> {
    /// Loaded BTF object.
    pub fd: BorrowedFd<'a>,
    /// Key type id in it.
    pub key_type_id: u32,
    /// Value type id in it.
    pub value_type_id: u32,
}

/// What to create.
#[derive(Clone, Copy, Debug)]
pub struct MapCreate<'a> {
    /// Map name (at most 15 bytes of `[A-Za-z0-9_.]` are kept).
    pub name: &'a str,
    /// `enum bpf_map_type`.
    pub map_type: u32,
    /// Key size.
    pub key_size: u32,
    /// Value size (per CPU for per-CPU maps).
    pub value_size: u32,
    /// Capacity.
    pub max_entries: u32,
    /// Creation flags.
    pub map_flags: u32,
    /// Optional key/value BTF.
    pub btf: Option<MapBtf<'a>>,
}

/// Creates a map.
pub fn map_create(spec: &MapCreate<'_>) -> Result<OwnedFd, SysError> {
    let mut name = [0u8; 16];
    let bytes = spec.name.as_bytes();
    // The kernel refuses any other character in map names.
    if bytes
        .iter()
        .any(|c| !(c.is_ascii_alphanumeric() || *c == b'_' || *c == b'.'))
    {
        return Err(einval("map_create"));
    }
    let n = bytes.len().min(15);
    name[..n].copy_from_slice(&bytes[..n]);
    let mut a = CreateAttr {
        map_type: spec.map_type,
        key_size: spec.key_size,
        value_size: spec.value_size,
        max_entries: spec.max_entries,
        map_flags: spec.map_flags,
        map_name: name,
        ..Default::default()
    };
    if let Some(btf) = spec.btf {
        a.btf_fd = btf.fd.as_raw_fd() as u32;
        a.btf_key_type_id = btf.key_type_id;
        a.btf_value_type_id = btf.value_type_id;
    }
    bpf(BPF_MAP_CREATE, &mut a, "map_create").map(owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_size_matches_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<CreateAttr>(), 72);
    }
}
