//! How long a migration's copy would take on this node: per migrated map,
//! the first entries of the live map are copied into a scratch map of this
//! build's layout (created unpinned, dropped at once) by the takeover's own
//! copy code, timed, and the rest extrapolated at that rate.

use std::os::fd::{AsFd, BorrowedFd};

use baton_api::preflight::CopySample;

use super::{micros, PreflightError};
use crate::migrate::{self, Converter, MapLayout};

/// Entries copied per sample at most.
pub const SAMPLE_ENTRIES: usize = 16_384;

/// How [`estimate_us`] estimates, for the report.
pub fn method() -> String {
    format!(
        "per migrated map: its first min(entries, {SAMPLE_ENTRIES}) entries copied from the live \
         map (opened read-only) into an unpinned scratch map of this build's layout, read, \
         converted and written by the takeover's copy code, timed; the copy time extrapolated \
         linearly from that rate. Reused, recreated and created maps copy nothing"
    )
}

/// Copies a sample of `old` (`entries` of them live) into a scratch map of
/// layout `new` (as the takeover would create it) through `conv`. `None`
/// when there is nothing to copy.
pub fn sample(
    old: BorrowedFd<'_>,
    new: &MapLayout,
    conv: &Converter,
    entries: u64,
) -> Result<Option<CopySample>, PreflightError> {
    let limit = usize::try_from(entries)
        .unwrap_or(usize::MAX)
        .min(SAMPLE_ENTRIES);
    if limit == 0 {
        return Ok(None);
    }
    // The map the takeover would copy into, capacity included (a hash
    // table's size changes the cost of its writes).
    let map = migrate::create_map(new)?;
    let st = migrate::copy_sample(old, map.as_fd(), conv, limit)?;
    drop(map);
    Ok(Some(CopySample {
        entries: st.entries as u64,
        micros: micros(st.duration),
        batch: st.batch,
    }))
}

/// `entries` at the sample's rate, microseconds.
pub fn estimate_us(entries: u64, sample: Option<&CopySample>) -> u64 {
    match sample {
        Some(s) if s.entries > 0 => {
            let us = u128::from(s.micros) * u128::from(entries) / u128::from(s.entries);
            u64::try_from(us).unwrap_or(u64::MAX)
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_is_linear_in_the_entries() {
        let s = CopySample {
            entries: 1000,
            micros: 500,
            batch: true,
        };
        assert_eq!(estimate_us(1000, Some(&s)), 500);
        assert_eq!(estimate_us(100_000, Some(&s)), 50_000);
        assert_eq!(estimate_us(0, Some(&s)), 0);
        assert_eq!(estimate_us(1000, None), 0);
    }
}
