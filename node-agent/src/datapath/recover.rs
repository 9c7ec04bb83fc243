//! Starting over existing pins (the previous agent died, restarted, or was
//! a different build): each pinned map is compared with this build's layout
//! and reused, migrated entry by entry, or recreated, per migrate::policy.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::load::{self, Loaded};
use super::stage::{self, Stage};
use super::{DatapathConfig, DatapathError};
use crate::maps::set::map_pin_path;
use crate::maps::MapSet;
use crate::migrate::{self, Decision, MapLayout};
use crate::sys;

/// What happened to each map when the datapath started or was handed over.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct MigrationSummary {
    /// Maps whose descriptor was reused as is.
    pub reused: usize,
    /// Maps converted into a new map.
    pub migrated: usize,
    /// Maps started empty by policy.
    pub recreated: usize,
    /// Maps created because none existed.
    pub created: usize,
    /// Entries copied into migrated maps (pre-copy plus journal replay).
    pub entries_copied: usize,
    /// Time spent copying, microseconds.
    pub copy_us: u64,
    /// Names of the migrated or recreated maps (their pins move at the end).
    #[serde(skip)]
    pub replaced: Vec<String>,
}

impl MigrationSummary {
    /// Whether existing map contents were carried over (the agent must adopt them).
    pub fn adopted(&self) -> bool {
        self.reused + self.migrated > 0
    }
}

/// One map of this build and what exists for it.
pub struct PlannedMap {
    /// Map name.
    pub name: &'static str,
    /// The existing map, if pinned.
    pub old: Option<OwnedFd>,
    /// The existing map's layout, as the kernel describes it.
    pub layout: Option<MapLayout>,
    /// What to do (`None`: nothing pinned, create it).
    pub decision: Option<Decision>,
}

/// Decisions for every map of this build.
pub struct Plan {
    /// Per map, in build order.
    pub maps: Vec<PlannedMap>,
}

impl Plan {
    /// Whether no map needs converting or replacing.
    pub fn all_reused(&self) -> bool {
        self.maps
            .iter()
            .all(|m| matches!(m.decision, None | Some(Decision::Reuse)))
    }

    /// Counts per decision, and the maps whose pins move at the end.
    pub fn summary(&self) -> MigrationSummary {
        MigrationSummary::of(self.maps.iter().map(|m| (m.name, m.decision.as_ref())))
    }
}

impl MigrationSummary {
    /// Counts per decision (`None`: no such map existed, created); migrated
    /// and recreated maps are the `replaced` ones.
    pub fn of<'a>(decisions: impl IntoIterator<Item = (&'a str, Option<&'a Decision>)>) -> Self {
        let mut s = Self::default();
        for (name, d) in decisions {
            match d {
                None => s.created += 1,
                Some(Decision::Reuse) => s.reused += 1,
                Some(Decision::Migrate(_)) => s.migrated += 1,
                Some(Decision::RecreateEmpty) => s.recreated += 1,
            }
            if matches!(d, Some(Decision::Migrate(_) | Decision::RecreateEmpty)) {
                s.replaced.push(name.to_string());
            }
        }
        s
    }
}

/// Decides, for every map of this build, against whatever is pinned.
pub fn plan(cfg: &DatapathConfig) -> Result<Plan, DatapathError> {
    let new = MapLayout::of_build(&cfg.max_entries)?;
    let known = known_layouts();
    let mut maps = Vec::new();
    for spec in baton_ebpf::MAPS.iter() {
        let old = open_pin(&cfg.pin_dir, spec.name, sys::obj_get)?;
        maps.push(plan_map(spec.name, old, &new, &known)?);
    }
    Ok(Plan { maps })
}

/// Opens the pin of map `name` under `pin_dir` with `open` ([`sys::obj_get`],
/// or [`sys::obj_get_readonly`] for a look that cannot write); `None` when
/// nothing is pinned there.
pub fn open_pin(
    pin_dir: &Path,
    name: &str,
    open: fn(&Path) -> Result<OwnedFd, sys::SysError>,
) -> Result<Option<OwnedFd>, DatapathError> {
    let path = map_pin_path(pin_dir, name);
    if !path.exists() {
        return Ok(None);
    }
    open(&path).map(Some).map_err(|source| DatapathError::Sys {
        what: format!("open {}", path.display()),
        source,
    })
}

/// The decision for map `name` of this build (layouts `new`) against its
/// pinned map `old` (`None`: nothing pinned, create it). Only reads `old`.
pub fn plan_map(
    name: &'static str,
    old: Option<OwnedFd>,
    new: &[MapLayout],
    known: &[MapLayout],
) -> Result<PlannedMap, DatapathError> {
    let Some(fd) = old else {
        return Ok(PlannedMap {
            name,
            old: None,
            layout: None,
            decision: None,
        });
    };
    let want = new
        .iter()
        .find(|l| l.name == name)
        .ok_or_else(|| DatapathError::Load(format!("no layout for map {name}")))?;
    let layout = MapLayout::from_fd_or_known(fd.as_fd(), name, known)?;
    let decision = migrate::decide_live(fd.as_fd(), &layout, want)?;
    Ok(PlannedMap {
        name,
        old: Some(fd),
        layout: Some(layout),
        decision: Some(decision),
    })
}

/// Layouts of every build generation this binary knows (fallback for maps
/// without kernel BTF).
pub fn known_layouts() -> Vec<MapLayout> {
    let mut all = Vec::new();
    for &v in baton_ebpf::LAYOUTS.iter() {
        if let Ok(Some(mut l)) = MapLayout::known(v) {
            all.append(&mut l);
        }
    }
    all
}

/// The decision for one existing map against this build's layout.
pub fn decide_for(
    fd: std::os::fd::BorrowedFd<'_>,
    name: &str,
    want: &MapLayout,
    known: &[MapLayout],
) -> Result<Decision, DatapathError> {
    let old = MapLayout::from_fd_or_known(fd, name, known)?;
    Ok(migrate::decide_live(fd, &old, want)?)
}

/// Loads the build in a staging directory, reusing and migrating as planned.
pub fn migrate(
    cfg: &DatapathConfig,
    plan: Plan,
) -> Result<(Loaded, MapSet, MigrationSummary, Stage), DatapathError> {
    let stage = Stage::create(&cfg.pin_dir)?;
    let res = (|| {
        let mut summary = plan.summary();
        for m in &plan.maps {
            if let (Some(fd), Some(Decision::Reuse)) = (&m.old, &m.decision) {
                stage.pin(m.name, fd.as_fd())?;
            }
        }
        let loaded = load::load(&stage.dir, &cfg.max_entries)?;
        let maps = MapSet::open_pinned(&stage.dir)?;
        let t0 = Instant::now();
        for m in &plan.maps {
            if let (Some(old), Some(Decision::Migrate(conv))) = (&m.old, &m.decision) {
                let new = maps.by_name(m.name).ok_or_else(|| {
                    DatapathError::Load(format!("map {} missing after load", m.name))
                })?;
                let st = migrate::copy_all(old.as_fd(), new.fd(), conv)?;
                tracing::info!(
                    map = m.name,
                    entries = st.entries,
                    batch = st.batch,
                    micros = st.duration.as_micros() as u64,
                    "migrated map from pins"
                );
                summary.entries_copied += st.entries;
            }
        }
        summary.copy_us = t0.elapsed().as_micros() as u64;
        Ok((loaded, maps, summary))
    })();
    match res {
        Ok((l, m, s)) => Ok((l, m, s, stage)),
        Err(e) => {
            stage.remove();
            Err(e)
        }
    }
}

/// Moves every replaced map's staged pin over the live one, then removes
/// the staging directory. Called once the links run the new programs.
pub fn promote_all(
    cfg: &DatapathConfig,
    stage: Stage,
    maps: &MapSet,
    summary: &MigrationSummary,
) -> Result<(), DatapathError> {
    for name in &summary.replaced {
        let id = maps
            .by_name(name)
            .map(|h| h.info().id)
            .ok_or_else(|| DatapathError::Load(format!("map {name} missing")))?;
        stage::promote(&cfg.pin_dir, &stage.name, name, id)?;
    }
    stage.remove();
    Ok(())
}
