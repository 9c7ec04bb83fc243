//! `bpf(2)` commands on raw file descriptors.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;

const BPF_MAP_LOOKUP_ELEM: u32 = 1;
const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_MAP_DELETE_ELEM: u32 = 3;
const BPF_MAP_GET_NEXT_KEY: u32 = 4;
const BPF_OBJ_PIN: u32 = 6;
const BPF_OBJ_GET: u32 = 7;
const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;
const BPF_LINK_CREATE: u32 = 28;
const BPF_LINK_UPDATE: u32 = 29;
const BPF_LINK_DETACH: u32 = 34;

/// `BPF_F_REPLACE`: link update only if the link still runs the expected program.
const BPF_F_REPLACE: u32 = 1 << 2;

/// Update flag: create or overwrite.
pub const BPF_ANY: u64 = 0;
/// Update flag: create only.
pub const BPF_NOEXIST: u64 = 1;
/// Update flag: overwrite only.
pub const BPF_EXIST: u64 = 2;

/// Cgroup attach points used by the datapath (`enum bpf_attach_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum AttachType {
    /// BPF_CGROUP_INET4_CONNECT
    Connect4 = 10,
    /// BPF_CGROUP_INET6_CONNECT
    Connect6 = 11,
}

/// A failed `bpf(2)` command.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[error("bpf({op}): {errno}")]
pub struct SysError {
    /// The command that failed.
    pub op: &'static str,
    /// The kernel's errno.
    pub errno: Errno,
}

use super::call::{bpf as sys_bpf, owned};

#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Reads `key` into `value`; `Ok(false)` when the key is absent.
pub fn map_lookup(fd: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> Result<bool, SysError> {
    let mut a = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        value: value.as_mut_ptr() as u64,
        ..Default::default()
    };
    match sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut a, "map_lookup_elem") {
        Ok(_) => Ok(true),
        Err(e) if e.errno == Errno::ENOENT => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes `key` → `value` with `flags` (BPF_ANY / BPF_NOEXIST / BPF_EXIST).
pub fn map_update(
    fd: BorrowedFd<'_>,
    key: &[u8],
    value: &[u8],
    flags: u64,
) -> Result<(), SysError> {
    let mut a = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        value: value.as_ptr() as u64,
        flags,
        ..Default::default()
    };
    sys_bpf(BPF_MAP_UPDATE_ELEM, &mut a, "map_update_elem").map(|_| ())
}

/// Deletes `key`; `Ok(false)` when it was absent.
pub fn map_delete(fd: BorrowedFd<'_>, key: &[u8]) -> Result<bool, SysError> {
    let mut a = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        ..Default::default()
    };
    match sys_bpf(BPF_MAP_DELETE_ELEM, &mut a, "map_delete_elem") {
        Ok(_) => Ok(true),
        Err(e) if e.errno == Errno::ENOENT => Ok(false),
        Err(e) => Err(e),
    }
}

/// The key after `key` (the first key when `None`); `Ok(false)` at the end.
pub fn map_next_key(
    fd: BorrowedFd<'_>,
    key: Option<&[u8]>,
    next: &mut [u8],
) -> Result<bool, SysError> {
    let mut a = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: key.map_or(0, |k| k.as_ptr() as u64),
        value: next.as_mut_ptr() as u64,
        ..Default::default()
    };
    match sys_bpf(BPF_MAP_GET_NEXT_KEY, &mut a, "map_get_next_key") {
        Ok(_) => Ok(true),
        Err(e) if e.errno == Errno::ENOENT => Ok(false),
        Err(e) => Err(e),
    }
}

#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Pins `fd` at `path` on a bpffs.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> Result<(), SysError> {
    let c = cpath(path, "obj_pin")?;
    let mut a = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
    };
    sys_bpf(BPF_OBJ_PIN, &mut a, "obj_pin").map(|_| ())
}

/// `BPF_F_RDONLY` (`file_flags` of `BPF_OBJ_GET`): a descriptor that can
/// read the map and not write it.
const BPF_F_RDONLY: u32 = 1 << 3;

/// Opens the object pinned at `path`.
pub fn obj_get(path: &Path) -> Result<OwnedFd, SysError> {
    obj_get_with(path, 0)
}

/// Opens the map pinned at `path` read-only: lookups (also batched), info
/// and BTF work, every write through the descriptor fails with `EPERM`.
/// The kernel refuses it for links (`EINVAL`): links need [`obj_get`].
pub fn obj_get_readonly(path: &Path) -> Result<OwnedFd, SysError> {
    obj_get_with(path, BPF_F_RDONLY)
}

fn obj_get_with(path: &Path, file_flags: u32) -> Result<OwnedFd, SysError> {
    let c = cpath(path, "obj_get")?;
    let mut a = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags,
    };
    sys_bpf(BPF_OBJ_GET, &mut a, "obj_get").map(owned)
}

fn cpath(path: &Path, op: &'static str) -> Result<CString, SysError> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).map_err(|_| SysError {
        op,
        errno: Errno::EINVAL,
    })
}

use super::call::InfoAttr;

/// `struct bpf_map_info` (prefix we use).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapInfo {
    /// `enum bpf_map_type`.
    pub map_type: u32,
    /// Kernel id.
    pub id: u32,
    /// Key size.
    pub key_size: u32,
    /// Value size.
    pub value_size: u32,
    /// Capacity.
    pub max_entries: u32,
    /// Creation flags.
    pub map_flags: u32,
    /// Name (NUL padded).
    pub name: [u8; 16],
    /// Offload ifindex.
    pub ifindex: u32,
    /// For struct_ops.
    pub btf_vmlinux_value_type_id: u32,
    /// Offload netns dev.
    pub netns_dev: u64,
    /// Offload netns inode.
    pub netns_ino: u64,
    /// BTF object id.
    pub btf_id: u32,
    /// BTF type of the key.
    pub btf_key_type_id: u32,
    /// BTF type of the value.
    pub btf_value_type_id: u32,
    _pad: u32,
    /// Map extra.
    pub map_extra: u64,
}

impl MapInfo {
    /// The map's name as a string.
    pub fn name(&self) -> String {
        let end = self
            .name
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(self.name.len());
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

/// `struct bpf_link_info` (prefix + cgroup part).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkInfo {
    /// `enum bpf_link_type`.
    pub link_type: u32,
    /// Link id.
    pub id: u32,
    /// Id of the program the link runs.
    pub prog_id: u32,
    _pad: u32,
    /// For cgroup links: the cgroup id.
    pub cgroup_id: u64,
    /// For cgroup links: the attach type.
    pub attach_type: u32,
    _tail: [u32; 9],
}

/// `struct bpf_prog_info` prefix: type, id, tag.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProgInfo {
    /// `enum bpf_prog_type`.
    pub prog_type: u32,
    /// Program id.
    pub id: u32,
    /// Program tag.
    pub tag: [u8; 8],
}

fn obj_info<T: Default>(fd: BorrowedFd<'_>, op: &'static str) -> Result<T, SysError> {
    let mut info = T::default();
    let mut a = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<T>() as u32,
        info: &mut info as *mut T as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a, op)?;
    Ok(info)
}

/// Kernel's description of a map.
pub fn map_info(fd: BorrowedFd<'_>) -> Result<MapInfo, SysError> {
    obj_info(fd, "map_info")
}

/// Kernel's description of a link.
pub fn link_info(fd: BorrowedFd<'_>) -> Result<LinkInfo, SysError> {
    obj_info(fd, "link_info")
}

/// Kernel's description of a program.
pub fn prog_info(fd: BorrowedFd<'_>) -> Result<ProgInfo, SysError> {
    obj_info(fd, "prog_info")
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 4],
}

/// Attaches `prog` to the cgroup `cgroup` with a new bpf_link.
pub fn link_create(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach: AttachType,
) -> Result<OwnedFd, SysError> {
    let mut a = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type: attach as u32,
        ..Default::default()
    };
    sys_bpf(BPF_LINK_CREATE, &mut a, "link_create").map(owned)
}

#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// Atomically replaces the program of a link. With `expected_old`, the kernel
/// refuses (EPERM) when the link no longer runs that program.
pub fn link_update(
    link: BorrowedFd<'_>,
    new_prog: BorrowedFd<'_>,
    expected_old: Option<BorrowedFd<'_>>,
) -> Result<(), SysError> {
    let mut a = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: new_prog.as_raw_fd() as u32,
        flags: if expected_old.is_some() {
            BPF_F_REPLACE
        } else {
            0
        },
        old_prog_fd: expected_old.map_or(0, |f| f.as_raw_fd() as u32),
    };
    sys_bpf(BPF_LINK_UPDATE, &mut a, "link_update").map(|_| ())
}

#[repr(C)]
#[derive(Default)]
struct LinkDetachAttr {
    link_fd: u32,
}

/// Detaches a link from its hook now (kernel >= 5.9). Closing the last
/// descriptor of a link detaches it too, but from a kernel work item, so
/// its program may still run for a moment after the owner has exited.
pub fn link_detach(link: BorrowedFd<'_>) -> Result<(), SysError> {
    let mut a = LinkDetachAttr {
        link_fd: link.as_raw_fd() as u32,
    };
    sys_bpf(BPF_LINK_DETACH, &mut a, "link_detach").map(|_| ())
}

/// Number of possible CPUs (the per-CPU map value multiplier).
pub fn possible_cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| parse_cpu_list(s.trim()))
        .unwrap_or(1)
}

fn parse_cpu_list(s: &str) -> Option<usize> {
    let mut max = 0usize;
    for part in s.split(',') {
        let hi = part.rsplit('-').next()?.trim().parse::<usize>().ok()?;
        max = max.max(hi + 1);
    }
    Some(max)
}

/// Borrow helper for owned descriptors.
pub fn fd_of(f: &impl AsFd) -> BorrowedFd<'_> {
    f.as_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-1"), Some(2));
        assert_eq!(parse_cpu_list("0-3,8-11"), Some(12));
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn attr_sizes_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<ElemAttr>(), 32);
        assert_eq!(std::mem::size_of::<MapInfo>(), 88);
        assert_eq!(std::mem::size_of::<LinkUpdateAttr>(), 16);
    }
}
