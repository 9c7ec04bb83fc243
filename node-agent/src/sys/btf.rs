//! BTF objects in the kernel: load a blob, open one by id, read one back.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use super::call::{bpf, owned};
use super::SysError;

const BPF_BTF_LOAD: u32 = 18;
const BPF_BTF_GET_FD_BY_ID: u32 = 19;
const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;

#[repr(C)]
#[derive(Default)]
struct LoadAttr {
    btf: u64,
    log_buf: u64,
    btf_size: u32,
    log_size: u32,
    log_level: u32,
    _pad: u32,
}

/// A BTF blob the kernel refused, with its verifier log.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("{source}: {log}")]
pub struct BtfLoadError {
    /// The failed call.
    pub source: SysError,
    /// The kernel's explanation (empty when it gave none).
    pub log: String,
}

fn load(blob: &[u8], log: &mut [u8]) -> Result<OwnedFd, SysError> {
    let mut a = LoadAttr {
        btf: blob.as_ptr() as u64,
        btf_size: blob.len() as u32,
        ..Default::default()
    };
    if !log.is_empty() {
        a.log_buf = log.as_mut_ptr() as u64;
        a.log_size = log.len() as u32;
        a.log_level = 1;
    }
    bpf(BPF_BTF_LOAD, &mut a, "btf_load").map(owned)
}

/// Loads a raw BTF blob; on refusal, retries once to fetch the kernel's log.
pub fn btf_load(blob: &[u8]) -> Result<OwnedFd, BtfLoadError> {
    load(blob, &mut []).map_err(|source| {
        let mut log = vec![0u8; 64 * 1024];
        let _ = load(blob, &mut log);
        let end = log.iter().position(|&c| c == 0).unwrap_or(log.len());
        BtfLoadError {
            source,
            log: String::from_utf8_lossy(&log[..end]).trim().to_string(),
        }
    })
}

#[repr(C)]
#[derive(Default)]
struct GetByIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// Opens the kernel BTF object with this id (e.g. a map's `btf_id`).
pub fn btf_get_fd_by_id(id: u32) -> Result<OwnedFd, SysError> {
    let mut a = GetByIdAttr {
        id,
        ..Default::default()
    };
    bpf(BPF_BTF_GET_FD_BY_ID, &mut a, "btf_get_fd_by_id").map(owned)
}

use super::call::InfoAttr;

/// `struct bpf_btf_info`.
#[repr(C)]
#[derive(Default)]
struct BtfInfo {
    btf: u64,
    btf_size: u32,
    id: u32,
    name: u64,
    name_len: u32,
    kernel_btf: u32,
}

fn btf_info(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<BtfInfo, SysError> {
    let mut info = BtfInfo {
        btf: if buf.is_empty() {
            0
        } else {
            buf.as_mut_ptr() as u64
        },
        btf_size: buf.len() as u32,
        ..Default::default()
    };
    let mut a = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<BtfInfo>() as u32,
        info: &mut info as *mut BtfInfo as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a, "btf_info")?;
    Ok(info)
}

/// The raw BTF blob of a kernel BTF object (as it was loaded).
pub fn btf_blob(fd: BorrowedFd<'_>) -> Result<Vec<u8>, SysError> {
    // First ask for the size, then fetch; the kernel copies min(size, buffer).
    let size = btf_info(fd, &mut [])?.btf_size as usize;
    let mut buf = vec![0u8; size];
    let got = btf_info(fd, &mut buf)?.btf_size as usize;
    buf.truncate(got.min(size));
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_sizes_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<BtfInfo>(), 32);
        assert_eq!(std::mem::size_of::<LoadAttr>(), 32);
    }
}
