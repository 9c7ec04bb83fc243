//! Map migration across agent builds (docs/migration.md).
//!
//! The handover (and recovery from pins) calls, per map:
//!
//! 1. [`MapLayout::of_build`] for the new build's layouts and
//!    [`MapLayout::from_fd`] (kernel BTF; [`MapLayout::from_fd_or_known`] with
//!    [`MapLayout::known`] for maps without BTF) for the old maps, and
//!    [`live_entries`] of each old map;
//! 2. [`decide`]`(old, new, live) -> `[`Decision`]: `Reuse` (hand the old fd
//!    over), `RecreateEmpty` (keep the new build's empty map) or
//!    `Migrate(`[`Converter`]`)`; refusals are [`MigrateError`]s. The policy
//!    per map is [`policy`];
//! 3. for `Migrate`: [`copy_all`]`(old, new, &conv)` while the old agent
//!    still serves (it journals the keys it writes from then on), then,
//!    under the control-plane freeze, [`replay`]`(old, new, &conv, &keys)`
//!    with the journal tail (old-layout key bytes).
//!
//! [`copy_all_with`] takes [`CopyOptions`] (force the per-element path,
//! batch size; `BATON_MIGRATE_BATCH=off` does the former for `copy_all`).
//! Without writing the new map: [`convert_all`] converts every entry and
//! writes nothing; [`copy_sample`] copies the first entries only (preflight
//! measures the copy rate with it, into a scratch map).
//! [`create_map`] creates a map for a layout, with BTF (aya normally creates
//! the new build's maps when it loads the object). [`dump`] reads a whole map.

mod btfgen;
mod convert;
mod copy;
mod create;
mod decide;
mod io;
mod layout;
mod plan;

#[cfg(test)]
mod tests;

pub use convert::Converter;
pub use copy::{
    convert_all, copy_all, copy_all_with, copy_sample, dump, dump_with, live_entries, replay,
    CopyStats, RawEntry,
};
pub use create::create_map;
pub use decide::{decide, decide_live, policy, summary, Decision, Policy};
pub use io::{BatchMode, CopyOptions, BATCH_ENV};
pub use layout::{same_shape, MapLayout};

use baton_ebpf::btf::BtfError;

use crate::sys::SysError;

/// Why a map cannot be migrated (every variant names the map).
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A bpf syscall failed.
    #[error("map {map}: {what}: {source}")]
    Sys {
        /// Map name.
        map: String,
        /// What we were doing.
        what: &'static str,
        /// Cause.
        source: SysError,
    },
    /// BTF could not be read.
    #[error("map {map}: BTF: {source}")]
    Btf {
        /// Map name.
        map: String,
        /// Cause.
        source: BtfError,
    },
    /// The build's BTF lacks a key or value type.
    #[error("map {map}: type {type_name} is not in the object's BTF")]
    MissingType {
        /// Map name.
        map: String,
        /// C type name.
        type_name: String,
    },
    /// The kernel map carries no BTF and no known layout applies.
    #[error("map {map}: the kernel map has no key/value BTF and no known layout applies")]
    NoBtf {
        /// Map name.
        map: String,
    },
    /// Sizes disagree (BTF vs map, or buffers).
    #[error("map {map}: size mismatch: {detail}")]
    SizeMismatch {
        /// Map name.
        map: String,
        /// What differs.
        detail: String,
    },
    /// Map types differ (a hash cannot become an array).
    #[error("map {map}: map type {old} cannot become {new}")]
    IncompatibleType {
        /// Map name.
        map: String,
        /// Old `bpf_map_type`.
        old: u32,
        /// New `bpf_map_type`.
        new: u32,
    },
    /// The new capacity is below what the old map holds.
    #[error(
        "map {map}: max_entries {max_entries} is below the {live} live entries; refusing to shrink"
    )]
    Shrink {
        /// Map name.
        map: String,
        /// New capacity.
        max_entries: u32,
        /// Entries (array: highest used slot + 1) in the old map.
        live: usize,
    },
    /// The policy forbids replacing this map and its layout differs.
    #[error("map {map}: layout differs ({detail}) and its policy is never-reuse")]
    NeverReuse {
        /// Map name.
        map: String,
        /// What differs.
        detail: String,
    },
    /// A member has no conversion (struct ↔ int, unions…).
    #[error("map {map}: {side} member {member}: {reason}")]
    Incompatible {
        /// Map name.
        map: String,
        /// "key" or "value".
        side: &'static str,
        /// Member path.
        member: String,
        /// Why.
        reason: String,
    },
    /// A value does not survive narrowing.
    #[error("map {map}: {side} member {member}: value {value} does not fit in {target}")]
    DoesNotFit {
        /// Map name.
        map: String,
        /// "key" or "value".
        side: &'static str,
        /// Member path.
        member: String,
        /// The value.
        value: String,
        /// The new type.
        target: String,
    },
    /// Two old keys became the same new key (dropped key members).
    #[error("map {map}: two old keys convert to the same new key")]
    KeyCollision {
        /// Map name.
        map: String,
    },
    /// The new map filled up during the copy.
    #[error("map {map}: new map full (max_entries {max_entries}) after {written} entries")]
    Full {
        /// Map name.
        map: String,
        /// New capacity.
        max_entries: u32,
        /// Entries written before.
        written: usize,
    },
}
