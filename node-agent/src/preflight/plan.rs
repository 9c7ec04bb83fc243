//! The migration a takeover by this build would do, planned over the live
//! pins exactly as a takeover plans it (`datapath::recover::plan_map`:
//! layouts from the kernel, the per-map policy, the shrink check), with
//! every pin opened read-only. A migrated map's entries are all converted
//! (nothing written) so that a value that would not fit is found now, and a
//! sample copy ([`rate`](super::rate)) gives the copy time.

use std::os::fd::{AsFd, BorrowedFd};

use baton_api::preflight::{MapAction, MapPlan, MapsCheck, Outcome};
use baton_ebpf::MetaValue;

use super::{outcome, rate, PreflightConfig, PreflightError};
use crate::datapath::recover::{self, PlannedMap};
use crate::maps::set::map_pin_path;
use crate::maps::MapHandle;
use crate::migrate::{self, Decision, MapLayout};
use crate::sys;

/// Plans every map of this build against the pins under `--bpffs`.
pub fn check(cfg: &PreflightConfig) -> MapsCheck {
    let pins_found = baton_ebpf::MAPS
        .iter()
        .any(|s| map_pin_path(&cfg.pin_dir, s.name).exists());
    let meta = if pins_found { read_meta(cfg) } else { None };
    let mut check = MapsCheck {
        outcome: Outcome::Pass,
        summary: String::new(),
        pins_found,
        pinned_layout: meta.map(|m| m.layout_version),
        pinned_generation: meta.map(|m| m.generation),
        maps: Vec::new(),
        reused: 0,
        migrated: 0,
        recreated: 0,
        created: 0,
        entries_to_copy: 0,
        estimated_copy_us: 0,
        estimate_method: rate::method(),
    };
    let new = match MapLayout::of_build(&cfg.max_entries) {
        Ok(n) => n,
        Err(e) => {
            check.outcome = Outcome::Fail;
            check.summary = format!("this build's map layouts: {e}");
            return check;
        }
    };
    let known = recover::known_layouts();
    for spec in baton_ebpf::MAPS.iter() {
        let plan = recover::open_pin(&cfg.pin_dir, spec.name, sys::obj_get_readonly)
            .and_then(|old| recover::plan_map(spec.name, old, &new, &known));
        let m = match plan {
            Ok(p) => map_plan(&p, &new),
            Err(e) => refused(spec.name, &PreflightError::from(e)),
        };
        match m.action {
            MapAction::Create => check.created += 1,
            MapAction::Reuse => check.reused += 1,
            MapAction::Migrate => check.migrated += 1,
            MapAction::RecreateEmpty => check.recreated += 1,
            MapAction::Refused => {}
        }
        check.entries_to_copy += m.entries_to_copy;
        check.estimated_copy_us += m.estimated_copy_us;
        check.maps.push(m);
    }
    let errors: Vec<String> = check
        .maps
        .iter()
        .filter_map(|m| {
            // Migration errors name their map already.
            m.error.as_ref().map(|e| {
                if e.contains(&m.name) {
                    e.clone()
                } else {
                    format!("{}: {e}", m.name)
                }
            })
        })
        .collect();
    check.outcome = outcome(errors.is_empty());
    check.summary = if !errors.is_empty() {
        errors.join("; ")
    } else if !pins_found {
        format!(
            "no pins under {} (a fresh node): every map is created",
            cfg.pin_dir.display()
        )
    } else {
        let from = match check.pinned_layout {
            Some(l) => format!("pins of layout {l}"),
            None => "pins".into(),
        };
        format!(
            "{from} → layout {}: {} reused, {} migrated, {} recreated, {} created; \
             {} entries to copy, about {:.1} ms",
            baton_ebpf::LAYOUT_VERSION,
            check.reused,
            check.migrated,
            check.recreated,
            check.created,
            check.entries_to_copy,
            check.estimated_copy_us as f64 / 1000.0
        )
    };
    check
}

/// The plan of one map, with its entries counted, converted and sampled.
fn map_plan(p: &PlannedMap, new: &[MapLayout]) -> MapPlan {
    let mut m = MapPlan {
        name: p.name.into(),
        action: MapAction::Create,
        entries: None,
        entries_to_copy: 0,
        changes: Vec::new(),
        sample: None,
        estimated_copy_us: 0,
        error: None,
    };
    let (Some(old), Some(layout), Some(decision)) = (&p.old, &p.layout, &p.decision) else {
        return m;
    };
    let want = new.iter().find(|l| l.name == p.name);
    if let (Some(want), false) = (want, matches!(decision, Decision::Reuse)) {
        m.changes.push(migrate::summary(layout, want));
    }
    let res = match decision {
        Decision::Reuse => {
            m.action = MapAction::Reuse;
            count(old.as_fd(), layout).map(|n| m.entries = Some(n))
        }
        Decision::RecreateEmpty => {
            m.action = MapAction::RecreateEmpty;
            count(old.as_fd(), layout).map(|n| m.entries = Some(n))
        }
        Decision::Migrate(conv) => {
            m.action = MapAction::Migrate;
            m.changes.extend(conv.changes().map(String::from));
            migrated(&mut m, old.as_fd(), layout, want, conv)
        }
    };
    if let Err(e) = res {
        m.error = Some(e.to_string());
    }
    m
}

/// Converts every entry of a migrated map (nothing written), then samples
/// the copy for the estimate.
fn migrated(
    m: &mut MapPlan,
    old: BorrowedFd<'_>,
    layout: &MapLayout,
    want: Option<&MapLayout>,
    conv: &migrate::Converter,
) -> Result<(), PreflightError> {
    let dry = migrate::convert_all(old, conv)?;
    let copied = dry.entries as u64;
    m.entries = Some(if layout.is_array() {
        u64::from(layout.max_entries)
    } else {
        copied
    });
    m.entries_to_copy = copied;
    let want = want.ok_or_else(|| {
        PreflightError::Datapath(crate::datapath::DatapathError::Load(format!(
            "no layout for map {}",
            m.name
        )))
    })?;
    m.sample = rate::sample(old, want, conv, copied)?;
    m.estimated_copy_us = rate::estimate_us(copied, m.sample.as_ref());
    Ok(())
}

/// Entries a read of the map yields: the keys of a hash map, every slot of
/// an array.
fn count(fd: BorrowedFd<'_>, layout: &MapLayout) -> Result<u64, PreflightError> {
    if layout.is_array() {
        return Ok(u64::from(layout.max_entries));
    }
    Ok(migrate::live_entries(fd, layout)? as u64)
}

/// A map the takeover would refuse.
fn refused(name: &str, e: &PreflightError) -> MapPlan {
    MapPlan {
        name: name.into(),
        action: MapAction::Refused,
        entries: None,
        entries_to_copy: 0,
        changes: Vec::new(),
        sample: None,
        estimated_copy_us: 0,
        error: Some(e.to_string()),
    }
}

/// The pinned meta entry (layout and generation of whoever owns the pins).
fn read_meta(cfg: &PreflightConfig) -> Option<MetaValue> {
    let spec = baton_ebpf::map_spec("meta")?;
    let fd = recover::open_pin(&cfg.pin_dir, spec.name, sys::obj_get_readonly)
        .ok()
        .flatten()?;
    let h = MapHandle::open(spec, fd).ok()?;
    h.get::<u32, MetaValue>(&0).ok().flatten()
}
