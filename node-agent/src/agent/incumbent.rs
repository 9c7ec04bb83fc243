//! What the running agent lends a handover: its descriptors, its journal,
//! its freeze, and the commit (link swap with the expected old program,
//! staged pins promoted; all or nothing).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;

use super::Shared;
use crate::datapath::recover::known_layouts;
use crate::datapath::stage;
use crate::handover::incumbent::Incumbent;
use crate::handover::manifest;
use crate::handover::msg::{CommitMap, Entry};
use crate::handover::successor::attach_name;
use crate::migrate::MapLayout;
use crate::sys;

fn dup(fd: std::os::fd::BorrowedFd<'_>, what: &str) -> Result<OwnedFd, String> {
    fd.try_clone_to_owned()
        .map_err(|e| format!("dup {what}: {e}"))
}

impl Incumbent for Shared {
    fn offer(&self) -> Result<Vec<(Entry, OwnedFd)>, String> {
        let known = known_layouts();
        let mut out = Vec::new();
        for h in self.dp.maps.all() {
            let layout =
                MapLayout::from_fd_or_known(h.fd(), h.name(), &known).map_err(|e| e.to_string())?;
            let e = manifest::map_entry(h.name(), h.fd(), layout).map_err(|e| e.to_string())?;
            out.push((e, dup(h.fd(), h.name())?));
        }
        for (attach, fd) in &self.dp.progs {
            let name = attach_name(*attach);
            let e = manifest::program_entry(name, fd.as_fd()).map_err(|e| e.to_string())?;
            out.push((e, dup(fd.as_fd(), name)?));
        }
        for l in &self.dp.links {
            let name = attach_name(l.attach);
            let e = manifest::link_entry(name, l.fd.as_fd()).map_err(|e| e.to_string())?;
            out.push((e, dup(l.fd.as_fd(), name)?));
        }
        let ls: Vec<_> = self
            .listeners
            .iter()
            .map(|(n, fd)| (*n, fd.as_fd()))
            .collect();
        out.extend(crate::handover::incumbent::listener_entries(&ls)?);
        Ok(out)
    }

    fn generation(&self) -> u64 {
        self.dp.generation
    }

    fn start_journal(&self) {
        // Under the lock: no sync is half way through when recording starts.
        let _g = self.lock();
        self.dp.maps.journal().start();
    }

    fn freeze(&self) -> Vec<(&'static str, Vec<u8>)> {
        let mut g = self.lock();
        g.frozen = true;
        self.dp.maps.journal().stop()
    }

    fn unfreeze(&self) {
        let mut g = self.lock();
        g.frozen = false;
        self.dp.maps.journal().stop();
        tracing::info!("handover did not commit: resuming writes");
    }

    fn commit(
        &self,
        programs: &[(String, OwnedFd, u32)],
        maps: &[CommitMap],
        staging: &str,
    ) -> Result<(), String> {
        if !stage::is_stage_name(staging) {
            return Err(format!("bad staging directory {staging:?}"));
        }
        // 1. Links, each with the program we run now as the expected old one.
        let mut swapped = Vec::new();
        let mut failure = None;
        for l in &self.dp.links {
            let name = attach_name(l.attach);
            let Some((_, new, _)) = programs.iter().find(|(a, _, _)| a == name) else {
                failure = Some(format!("no program for {name}"));
                break;
            };
            let Some(old) = self.dp.prog(l.attach) else {
                failure = Some(format!("no own program for {name}"));
                break;
            };
            match sys::link_update(l.fd.as_fd(), new.as_fd(), Some(old)) {
                Ok(()) => swapped.push((l, new, old)),
                Err(e) => {
                    failure = Some(format!("link update {name}: {e}"));
                    break;
                }
            }
            // Retire only once the kernel says the link runs the successor's
            // program (the id the commit named and the descriptor matched).
            let want = programs.iter().find(|(a, _, _)| a == name).map(|p| p.2);
            match sys::link_info(l.fd.as_fd()) {
                Ok(i) if Some(i.prog_id) == want => {}
                Ok(i) => {
                    failure = Some(format!(
                        "link {name} runs program {} after the update, not {want:?}",
                        i.prog_id
                    ));
                    break;
                }
                Err(e) => {
                    failure = Some(format!("link info {name}: {e}"));
                    break;
                }
            }
        }
        crate::handover::crash_point("old:after_links_swapped");
        // 2. Pins of the replaced maps.
        let mut promoted = Vec::new();
        if failure.is_none() {
            for m in maps {
                match stage::promote(&self.dp.pin_dir, staging, &m.name, m.id) {
                    Ok(()) => promoted.push(m.name.as_str()),
                    Err(e) => {
                        failure = Some(e.to_string());
                        break;
                    }
                }
            }
        }
        let Some(why) = failure else {
            self.retired.store(true, Ordering::SeqCst);
            return Ok(());
        };
        // Undo in reverse: our maps back on their pins, our programs on the links.
        for name in promoted.iter().rev() {
            if let Some(h) = self.dp.maps.by_name(name) {
                if let Err(e) = stage::repin(&self.dp.pin_dir, name, h.fd()) {
                    tracing::error!(map = name, error = %e, "restoring a pin after a failed commit");
                }
            }
        }
        for (l, new, old) in swapped.iter().rev() {
            if let Err(e) = sys::link_update(l.fd.as_fd(), *old, Some(new.as_fd())) {
                tracing::error!(error = %e, "restoring a link after a failed commit");
            }
        }
        Err(why)
    }

    fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
    }

    fn pin_dir(&self) -> &std::path::Path {
        &self.dp.pin_dir
    }

    fn clean_staging(&self, peer_pid: i32) {
        // A successor killed mid-session closes the connection while it is
        // still exiting: when it left a staging directory (named by its pid,
        // see `Stage::create`), give it a moment to be gone, so that
        // `clean_stale` (which counts a zombie as gone) removes it now.
        if peer_pid > 0 && self.dp.pin_dir.join(format!("staging-{peer_pid}")).exists() {
            let _ = crate::handover::successor::alive(peer_pid);
        }
        stage::clean_stale(&self.dp.pin_dir);
    }
}
