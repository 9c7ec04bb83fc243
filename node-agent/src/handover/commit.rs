//! What the incumbent checks before it acts on a `Commit`: that the message
//! carries a real successor's staged datapath, not its own programs sent
//! back by a peer that staged nothing (docs/handover.md, "Commit").
//!
//! A `Commit` is acted on only when
//! 1. the staging directory is the peer's own (`staging-<peer pid>` when the
//!    peer's pid is visible) and exists under the pin directory;
//! 2. no program is one of the incumbent's own (kernel ids differ: every
//!    successor loads its programs afresh, even from the same build);
//! 3. every map the incumbent runs is pinned in that staging directory,
//!    either as the incumbent's own map (reused) or as the map the commit
//!    names for it (migrated / recreated), and the commit names no map the
//!    incumbent does not have;
//! 4. each program runs against the staged maps (`BPF_OBJ_GET_INFO_BY_FD`
//!    map ids): at least one of its maps is staged and none is a map of the
//!    incumbent that the commit replaces.
//!
//! Staging and loading against staged maps is exactly the work a successor
//! does; a peer that skipped it fails 1, 3 or 4, and one that sends the
//! incumbent's programs back fails 2.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use super::msg::{CommitMap, Entry, Role};
use crate::datapath::stage;
use crate::maps::set::map_pin_path;
use crate::sys;

/// Why a `Commit` was refused before anything changed.
#[derive(Debug, thiserror::Error)]
pub enum CommitRefused {
    /// The staging directory is not the peer's.
    #[error("staging directory {staging:?} is not the peer's (pid {pid})")]
    ForeignStaging {
        /// Name sent.
        staging: String,
        /// The peer's pid (SO_PEERCRED).
        pid: i32,
    },
    /// The staging directory name is malformed.
    #[error("bad staging directory {0:?}")]
    BadStaging(String),
    /// A program of the commit is one the incumbent runs itself.
    #[error("{attach}: program id {id} is this agent's own: nothing was staged")]
    OwnProgram {
        /// Attach point.
        attach: String,
        /// Program id.
        id: u32,
    },
    /// A map of the incumbent has no pin in the staging directory.
    #[error("map {name} is not staged in {staging}: {source}")]
    NotStaged {
        /// Map name.
        name: String,
        /// Staging directory.
        staging: String,
        /// Why it could not be opened.
        source: sys::SysError,
    },
    /// A staged pin is not the map it should be.
    #[error("staged map {name} has id {found}, expected {expected}")]
    WrongStagedMap {
        /// Map name.
        name: String,
        /// Id of the staged pin.
        found: u32,
        /// The id it must have.
        expected: u32,
    },
    /// The commit names a map the incumbent does not run, or names one as
    /// replaced by itself.
    #[error("commit map {name} (id {id}) is not a replacement of one of this agent's maps")]
    BadCommitMap {
        /// Map name.
        name: String,
        /// Id claimed.
        id: u32,
    },
    /// A program's map ids could not be read.
    #[error("{attach}: reading the program's maps: {source}")]
    ProgInfo {
        /// Attach point.
        attach: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A program does not run against the staged maps.
    #[error("{attach}: program {id} does not use the staged maps ({detail})")]
    NotLoadedAgainstStage {
        /// Attach point.
        attach: String,
        /// Program id.
        id: u32,
        /// Which condition failed.
        detail: String,
    },
}

/// What the incumbent offered (and so runs): program ids by attach point,
/// map ids by name.
#[derive(Clone, Debug, Default)]
pub struct Own {
    /// Program id per attach point.
    pub programs: BTreeMap<String, u32>,
    /// Map id per name.
    pub maps: BTreeMap<String, u32>,
}

impl Own {
    /// Collects the incumbent's programs and maps from its offer.
    pub fn of<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Self {
        let mut own = Self::default();
        for e in entries {
            match e.role {
                Role::Program => {
                    own.programs.insert(e.name.clone(), e.id);
                }
                Role::Map => {
                    own.maps.insert(e.name.clone(), e.id);
                }
                Role::Link | Role::Listener => {}
            }
        }
        own
    }
}

/// Runs checks 1–4 of the module doc on a `Commit` whose program
/// descriptors were already matched to their ids.
pub fn check(
    pin_dir: &Path,
    peer_pid: i32,
    own: &Own,
    programs: &[(String, OwnedFd, u32)],
    maps: &[CommitMap],
    staging: &str,
) -> Result<(), CommitRefused> {
    if !stage::is_stage_name(staging) {
        return Err(CommitRefused::BadStaging(staging.to_string()));
    }
    // A peer in another pid namespace reads as pid 0: its staging directory
    // carries a pid we cannot compare, so only its existence is checked (3).
    if peer_pid > 0 && staging != format!("staging-{peer_pid}") {
        return Err(CommitRefused::ForeignStaging {
            staging: staging.to_string(),
            pid: peer_pid,
        });
    }
    for (attach, _, id) in programs {
        if own.programs.values().any(|own_id| own_id == id) {
            return Err(CommitRefused::OwnProgram {
                attach: attach.clone(),
                id: *id,
            });
        }
    }
    let replaced: BTreeMap<&str, u32> = maps.iter().map(|m| (m.name.as_str(), m.id)).collect();
    for m in maps {
        if own.maps.get(&m.name).is_none_or(|own_id| *own_id == m.id) {
            return Err(CommitRefused::BadCommitMap {
                name: m.name.clone(),
                id: m.id,
            });
        }
    }
    let dir = pin_dir.join(staging);
    let mut staged = BTreeSet::new();
    for (name, own_id) in &own.maps {
        let path = map_pin_path(&dir, name);
        let fd = sys::obj_get(&path).map_err(|source| CommitRefused::NotStaged {
            name: name.clone(),
            staging: staging.to_string(),
            source,
        })?;
        let found = sys::map_info(fd.as_fd())
            .map_err(|source| CommitRefused::NotStaged {
                name: name.clone(),
                staging: staging.to_string(),
                source,
            })?
            .id;
        let expected = replaced.get(name.as_str()).copied().unwrap_or(*own_id);
        if found != expected {
            return Err(CommitRefused::WrongStagedMap {
                name: name.clone(),
                found,
                expected,
            });
        }
        staged.insert(found);
    }
    let replaced_own: BTreeSet<u32> = maps
        .iter()
        .filter_map(|m| own.maps.get(&m.name).copied())
        .collect();
    for (attach, fd, id) in programs {
        let used = prog_map_ids(fd.as_fd()).map_err(|source| CommitRefused::ProgInfo {
            attach: attach.clone(),
            source,
        })?;
        let fail = |detail: String| CommitRefused::NotLoadedAgainstStage {
            attach: attach.clone(),
            id: *id,
            detail,
        };
        if !used.iter().any(|m| staged.contains(m)) {
            return Err(fail(format!("its maps {used:?} include none staged")));
        }
        if let Some(old) = used.iter().find(|m| replaced_own.contains(m)) {
            return Err(fail(format!(
                "it uses map {old}, which the commit replaces"
            )));
        }
    }
    Ok(())
}

/// The `struct bpf_prog_info` prefix up to `map_ids` (uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct ProgInfoMaps {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
}

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// Most map ids read per program (the datapath uses 6 plus global data).
const MAX_MAP_IDS: usize = 64;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// Ids of the maps a loaded program uses.
pub fn prog_map_ids(fd: BorrowedFd<'_>) -> Result<Vec<u32>, std::io::Error> {
    let mut ids = [0u32; MAX_MAP_IDS];
    let mut info = ProgInfoMaps {
        nr_map_ids: MAX_MAP_IDS as u32,
        map_ids: ids.as_mut_ptr() as u64,
        ..Default::default()
    };
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<ProgInfoMaps>() as u32,
        info: &mut info as *mut ProgInfoMaps as u64,
    };
    // SAFETY: `attr` points at `info`, which points at `ids`; all three live
    // across the call and the sizes passed are theirs.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let n = (info.nr_map_ids as usize).min(MAX_MAP_IDS);
    Ok(ids[..n].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> Own {
        let mut o = Own::default();
        o.programs.insert("connect4".into(), 10);
        o.programs.insert("connect6".into(), 11);
        o.maps.insert("endpoint".into(), 20);
        o
    }

    #[test]
    fn a_commit_of_the_incumbents_own_programs_is_refused() {
        let dev_null = std::fs::File::open("/dev/null").expect("/dev/null");
        let fd: OwnedFd = dev_null.into();
        let dir = tempfile::tempdir().expect("tempdir");
        let progs = vec![("connect4".to_string(), fd, 10)];
        let pid = std::process::id() as i32;
        let r = check(
            dir.path(),
            pid,
            &own(),
            &progs,
            &[],
            &format!("staging-{pid}"),
        );
        assert!(
            matches!(r, Err(CommitRefused::OwnProgram { id: 10, .. })),
            "{r:?}"
        );
    }

    #[test]
    fn staging_must_be_the_peers_and_maps_must_replace_own_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = check(dir.path(), 42, &own(), &[], &[], "staging-43");
        assert!(
            matches!(r, Err(CommitRefused::ForeignStaging { pid: 42, .. })),
            "{r:?}"
        );
        let r = check(dir.path(), 42, &own(), &[], &[], "../etc");
        assert!(matches!(r, Err(CommitRefused::BadStaging(_))), "{r:?}");
        for (name, id) in [("endpoint", 20), ("nosuchmap", 99)] {
            let m = [CommitMap {
                name: name.into(),
                id,
            }];
            let r = check(dir.path(), 42, &own(), &[], &m, "staging-42");
            assert!(
                matches!(r, Err(CommitRefused::BadCommitMap { .. })),
                "{r:?}"
            );
        }
        // Nothing pinned in the staging directory.
        let r = check(dir.path(), 0, &own(), &[], &[], "staging-42");
        assert!(matches!(r, Err(CommitRefused::NotStaged { .. })), "{r:?}");
    }
}
