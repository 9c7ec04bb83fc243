//! The raw `bpf(2)` entry point every command in `sys/` goes through.

use std::os::fd::{FromRawFd, OwnedFd};

use nix::errno::Errno;

use super::SysError;

/// Issues `bpf(cmd, attr, sizeof attr)`.
pub(super) fn bpf<T>(cmd: u32, attr: &mut T, op: &'static str) -> Result<i64, SysError> {
    // SAFETY: attr is a properly sized, zero-padded #[repr(C)] bpf_attr variant
    // whose pointers (if any) the callers made valid for the lengths they pass.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>(),
        )
    };
    if ret < 0 {
        Err(SysError {
            op,
            errno: Errno::last(),
        })
    } else {
        Ok(ret)
    }
}

/// `BPF_OBJ_GET_INFO_BY_FD` attributes (maps, programs, links, BTF).
#[repr(C)]
#[derive(Default)]
pub(super) struct InfoAttr {
    /// The object.
    pub bpf_fd: u32,
    /// Size of the info buffer.
    pub info_len: u32,
    /// Pointer to the info buffer.
    pub info: u64,
}

/// Takes ownership of a descriptor the kernel just returned.
pub(super) fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// An `EINVAL` for arguments refused before reaching the kernel.
pub(super) fn einval(op: &'static str) -> SysError {
    SysError {
        op,
        errno: Errno::EINVAL,
    }
}
