//! Per-map policy and the reuse / migrate / recreate decision.

use super::convert::Converter;
use super::layout::MapLayout;
use super::MigrateError;

/// What may happen to a map whose layout changed between builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Policy {
    /// Convert every entry into a new map.
    Migrate,
    /// Start the new map empty (its contents are rebuilt by the new agent).
    RecreateEmpty,
    /// Never replaced: a differing layout refuses the upgrade (for maps other
    /// parties hold; the default for maps this build does not know).
    NeverReuse,
}

/// The policy table (documented in docs/migration.md).
pub fn policy(map: &str) -> Policy {
    match map {
        "frontend" | "service" | "endpoint" | "backend" | "counters" => Policy::Migrate,
        // layout_version + generation: rewritten by every agent that starts.
        "meta" => Policy::RecreateEmpty,
        _ => Policy::NeverReuse,
    }
}

/// What to do with one map.
#[derive(Clone, Debug)]
pub enum Decision {
    /// Same layout: hand the old fd to the new build.
    Reuse,
    /// Create the new map and copy every entry through the converter.
    Migrate(Box<Converter>),
    /// Use the new build's map, empty.
    RecreateEmpty,
}

impl Decision {
    /// Short name for logs and the manifest.
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::Reuse => "reuse",
            Decision::Migrate(_) => "migrate",
            Decision::RecreateEmpty => "recreate-empty",
        }
    }
}

/// Decides for one map. `live_entries` is the old map's entry count (see
/// [`live_entries`](super::live_entries)); a shrink below it is refused.
/// `None` skips that check (the copy still fails cleanly on a full map).
pub fn decide(
    old: &MapLayout,
    new: &MapLayout,
    live_entries: Option<usize>,
) -> Result<Decision, MigrateError> {
    if old.same_as(new) {
        return Ok(Decision::Reuse);
    }
    let map = new.name.clone();
    match policy(&new.name) {
        Policy::NeverReuse => Err(MigrateError::NeverReuse {
            map,
            detail: summary(old, new),
        }),
        Policy::RecreateEmpty => Ok(Decision::RecreateEmpty),
        Policy::Migrate => {
            if old.map_type != new.map_type {
                return Err(MigrateError::IncompatibleType {
                    map,
                    old: old.map_type,
                    new: new.map_type,
                });
            }
            if let Some(live) = live_entries {
                if (new.max_entries as usize) < live {
                    return Err(MigrateError::Shrink {
                        map,
                        max_entries: new.max_entries,
                        live,
                    });
                }
            }
            let conv = Converter::new(old, new)?;
            tracing::info!(
                map = %new.name,
                changes = ?conv.changes().collect::<Vec<_>>(),
                max_entries = new.max_entries,
                "map layout changed: migrating"
            );
            Ok(Decision::Migrate(Box::new(conv)))
        }
    }
}

/// [`decide`] for the live map `old_fd` of layout `old`: its entries are
/// counted (for the shrink check) only when the layouts differ.
pub fn decide_live(
    old_fd: std::os::fd::BorrowedFd<'_>,
    old: &MapLayout,
    new: &MapLayout,
) -> Result<Decision, MigrateError> {
    let live = if old.same_as(new) {
        None
    } else {
        Some(super::live_entries(old_fd, old)?)
    };
    decide(old, new, live)
}

/// One line saying what differs between two layouts.
pub fn summary(old: &MapLayout, new: &MapLayout) -> String {
    let mut d = Vec::new();
    let mut field = |what: &str, a: u32, b: u32| {
        if a != b {
            d.push(format!("{what} {a} → {b}"));
        }
    };
    field("type", old.map_type, new.map_type);
    field("key size", old.key_size, new.key_size);
    field("value size", old.value_size, new.value_size);
    field("max_entries", old.max_entries, new.max_entries);
    field("flags", old.map_flags, new.map_flags);
    if !super::layout::same_shape(&old.key, &new.key) {
        d.push("key members".into());
    }
    if !super::layout::same_shape(&old.value, &new.value) {
        d.push("value members".into());
    }
    d.join(", ")
}
