//! [`Converter`]: turns old-layout entries into new-layout entries.

use super::layout::MapLayout;
use super::plan::{compile, Fault, Plan};
use super::MigrateError;
use crate::sys;

/// Converts keys and values of one map from an old layout to a new one,
/// member by member (see `plan.rs`). Per-CPU values are converted per CPU.
#[derive(Clone, Debug)]
pub struct Converter {
    map: String,
    key: Plan,
    value: Plan,
    old_key: usize,
    new_key: usize,
    old_value: usize,
    new_value: usize,
    cpus: usize,
    old_stride: usize,
    new_stride: usize,
    /// New map is an array: keys at or past this index have no slot.
    array_slots: Option<u32>,
    /// Layouts are the same apart from capacity and flags.
    identity: bool,
}

/// What happened to one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Converted; write it.
    Write,
    /// An all-zero array slot past the new capacity: nothing to write.
    Skip,
}

impl Converter {
    /// Builds the converter from `old` to `new` (same map type assumed; the
    /// policy and capacity checks are [`decide`](super::decide)'s job).
    pub fn new(old: &MapLayout, new: &MapLayout) -> Result<Self, MigrateError> {
        let incompatible = |side: &'static str| {
            let map = new.name.clone();
            move |e: super::plan::Incompatible| MigrateError::Incompatible {
                map,
                side,
                member: e.path,
                reason: e.reason,
            }
        };
        let key = compile(&old.key, &new.key, "key").map_err(incompatible("key"))?;
        let value = compile(&old.value, &new.value, "value").map_err(incompatible("value"))?;
        let cpus = if new.is_percpu() {
            sys::possible_cpus()
        } else {
            1
        };
        let conv = Self {
            map: new.name.clone(),
            identity: key.identity
                && value.identity
                && old.key_size == new.key_size
                && old.value_size == new.value_size,
            key,
            value,
            old_key: old.key_size as usize,
            new_key: new.key_size as usize,
            old_value: old.value_size as usize,
            new_value: new.value_size as usize,
            cpus,
            old_stride: old.value_stride(cpus) / cpus,
            new_stride: new.value_stride(cpus) / cpus,
            array_slots: new.is_array().then_some(new.max_entries),
        };
        if conv.array_slots.is_some() && conv.new_key != 4 {
            return Err(MigrateError::SizeMismatch {
                map: conv.map,
                detail: format!(
                    "array key of {}B, the kernel uses u32 indexes",
                    new.key_size
                ),
            });
        }
        for c in conv.changes() {
            tracing::debug!(map = %conv.map, change = %c, "layout change");
        }
        Ok(conv)
    }

    /// Map name (the new layout's).
    pub fn map(&self) -> &str {
        &self.map
    }

    /// Keys and values are copied byte for byte.
    pub fn is_identity(&self) -> bool {
        self.identity
    }

    /// The maps are arrays (every slot exists; keys are u32 indexes).
    pub fn is_array(&self) -> bool {
        self.array_slots.is_some()
    }

    /// Dropped key members: distinct old keys may collide in the new map.
    pub fn lossy_key(&self) -> bool {
        self.key.lossy
    }

    /// What changes, one line per member (`+value.weight (zero)`…).
    pub fn changes(&self) -> impl Iterator<Item = &str> {
        self.key
            .changes
            .iter()
            .chain(&self.value.changes)
            .map(String::as_str)
    }

    /// Old key size.
    pub fn old_key_len(&self) -> usize {
        self.old_key
    }

    /// New key size.
    pub fn new_key_len(&self) -> usize {
        self.new_key
    }

    /// Old value bytes as the kernel copies them (all CPUs for per-CPU maps).
    pub fn old_value_len(&self) -> usize {
        self.old_stride * self.cpus
    }

    /// New value bytes as the kernel copies them.
    pub fn new_value_len(&self) -> usize {
        self.new_stride * self.cpus
    }

    fn fault(&self, side: &'static str, f: Fault) -> MigrateError {
        MigrateError::DoesNotFit {
            map: self.map.clone(),
            side,
            member: f.path,
            value: f.value,
            target: f.target,
        }
    }

    /// Converts an old key into `out` (`new_key_len` bytes).
    pub fn convert_key(&self, old: &[u8], out: &mut [u8]) -> Result<(), MigrateError> {
        self.check_lens(old.len(), self.old_key, out.len(), self.new_key)?;
        out.fill(0);
        self.key.apply(old, out).map_err(|f| self.fault("key", f))
    }

    /// Converts an old value (all CPUs) into `out` (`new_value_len` bytes).
    pub fn convert_value(&self, old: &[u8], out: &mut [u8]) -> Result<(), MigrateError> {
        self.check_lens(
            old.len(),
            self.old_value_len(),
            out.len(),
            self.new_value_len(),
        )?;
        out.fill(0);
        self.value_into(old, out)
            .map_err(|f| self.fault("value", f))
    }

    /// Converts one entry into zeroed `nk`/`nv`; the hot path of the copy.
    pub(super) fn entry(
        &self,
        ok: &[u8],
        ov: &[u8],
        nk: &mut [u8],
        nv: &mut [u8],
    ) -> Result<Outcome, MigrateError> {
        if self.identity {
            nk.copy_from_slice(ok);
            nv.copy_from_slice(ov);
        } else {
            self.key.apply(ok, nk).map_err(|f| self.fault("key", f))?;
            self.value_into(ov, nv)
                .map_err(|f| self.fault("value", f))?;
        }
        if let Some(slots) = self.array_slots {
            let idx = u32::from_ne_bytes([nk[0], nk[1], nk[2], nk[3]]);
            if idx >= slots {
                if ov.iter().all(|&b| b == 0) {
                    return Ok(Outcome::Skip);
                }
                return Err(MigrateError::Shrink {
                    map: self.map.clone(),
                    max_entries: slots,
                    live: idx as usize + 1,
                });
            }
        }
        Ok(Outcome::Write)
    }

    fn value_into(&self, ov: &[u8], nv: &mut [u8]) -> Result<(), Fault> {
        for cpu in 0..self.cpus {
            let src = &ov[cpu * self.old_stride..][..self.old_value];
            let dst = &mut nv[cpu * self.new_stride..][..self.new_value];
            self.value.apply(src, dst)?;
        }
        Ok(())
    }

    fn check_lens(
        &self,
        a: usize,
        want_a: usize,
        b: usize,
        want_b: usize,
    ) -> Result<(), MigrateError> {
        if a != want_a || b != want_b {
            return Err(MigrateError::SizeMismatch {
                map: self.map.clone(),
                detail: format!("buffers of {a}B and {b}B, expected {want_a}B and {want_b}B"),
            });
        }
        Ok(())
    }
}
