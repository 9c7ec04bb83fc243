//! BPF_MAP_LOOKUP_BATCH / BPF_MAP_UPDATE_BATCH (Linux ≥ 5.6).

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

use super::call::{bpf, einval};
use super::SysError;

const BPF_MAP_LOOKUP_BATCH: u32 = 24;
const BPF_MAP_UPDATE_BATCH: u32 = 26;

/// `ENOTSUPP` (kernel-internal 524), what some map types answer for batch ops.
pub const ENOTSUPP: i32 = 524;

/// Whether a batch command's error means "this kernel or map type has no
/// batch support" (so the caller should fall back to per-element calls).
pub fn batch_unsupported(e: &SysError) -> bool {
    // nix has no ENOTSUPP: Errno::last() turns 524 into UnknownErrno.
    matches!(
        e.errno,
        Errno::EINVAL | Errno::EOPNOTSUPP | Errno::UnknownErrno
    ) || e.errno as i32 == ENOTSUPP
}

#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Size of the opaque batch token buffers (`in_batch` / `out_batch`): hash
/// maps use a u32 bucket index, array maps a key.
pub fn batch_token_len(key_size: usize) -> usize {
    key_size.max(8)
}

/// Result of one lookup batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchRead {
    /// Entries written to the key and value buffers.
    pub count: u32,
    /// The map has no entries past this batch.
    pub done: bool,
}

/// Reads up to `max` entries after the token `in_batch` (from the start when
/// `None`); the next token lands in `out_batch`. `value_len` is the bytes per
/// value as the kernel copies them (per-CPU maps: CPUs × round_up(size, 8)).
/// `ENOSPC` means one hash bucket holds more than `max` entries.
#[allow(clippy::too_many_arguments)]
pub fn map_lookup_batch(
    fd: BorrowedFd<'_>,
    in_batch: Option<&[u8]>,
    out_batch: &mut [u8],
    keys: &mut [u8],
    key_len: usize,
    values: &mut [u8],
    value_len: usize,
    max: u32,
) -> Result<BatchRead, SysError> {
    let op = "map_lookup_batch";
    let n = max as usize;
    let tok = batch_token_len(key_len);
    // The kernel writes max × len bytes: refuse buffers that cannot hold them.
    if keys.len() < n * key_len
        || values.len() < n * value_len
        || out_batch.len() < tok
        || in_batch.is_some_and(|b| b.len() < tok)
    {
        return Err(einval(op));
    }
    let mut a = BatchAttr {
        in_batch: in_batch.map_or(0, |b| b.as_ptr() as u64),
        out_batch: out_batch.as_mut_ptr() as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: max,
        map_fd: fd.as_raw_fd() as u32,
        ..Default::default()
    };
    match bpf(BPF_MAP_LOOKUP_BATCH, &mut a, op) {
        Ok(_) => Ok(BatchRead {
            count: a.count,
            done: false,
        }),
        // ENOENT: end of map; count still says how many entries were filled.
        Err(e) if e.errno == Errno::ENOENT => Ok(BatchRead {
            count: a.count,
            done: true,
        }),
        Err(e) => Err(e),
    }
}

/// A failed update batch: `done` entries were written before `source`.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[error("{source} after {done} entries")]
pub struct BatchUpdateError {
    /// Entries written before the failure.
    pub done: u32,
    /// The failure.
    pub source: SysError,
}

/// Writes `count` entries (keys and values packed back to back). The generic
/// kernel implementation refuses every `elem_flags` but `BPF_F_LOCK` (EINVAL):
/// a batch write is always create-or-overwrite.
pub fn map_update_batch(
    fd: BorrowedFd<'_>,
    keys: &[u8],
    key_len: usize,
    values: &[u8],
    value_len: usize,
    count: u32,
    elem_flags: u64,
) -> Result<(), BatchUpdateError> {
    let op = "map_update_batch";
    let n = count as usize;
    if keys.len() < n * key_len || values.len() < n * value_len {
        return Err(BatchUpdateError {
            done: 0,
            source: einval(op),
        });
    }
    let mut a = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count,
        map_fd: fd.as_raw_fd() as u32,
        elem_flags,
        ..Default::default()
    };
    bpf(BPF_MAP_UPDATE_BATCH, &mut a, op)
        .map(|_| ())
        .map_err(|source| BatchUpdateError {
            // The kernel reports the entries written in `count`, but leaves it
            // untouched when it refuses the call before the first entry.
            done: if a.count >= count { 0 } else { a.count },
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_size_matches_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<BatchAttr>(), 56);
    }

    #[test]
    fn unsupported_errnos() {
        let e = |errno| SysError { op: "x", errno };
        assert!(batch_unsupported(&e(Errno::EINVAL)));
        assert!(batch_unsupported(&e(Errno::EOPNOTSUPP)));
        assert!(batch_unsupported(&e(Errno::from_raw(ENOTSUPP))));
        assert!(!batch_unsupported(&e(Errno::E2BIG)));
    }
}
