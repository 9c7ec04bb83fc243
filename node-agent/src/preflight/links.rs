//! The pinned links a takeover would update in place (`BPF_LINK_UPDATE`):
//! each must be a link on `--cgroup`, as `datapath::attach_links` requires
//! when a takeover starts from the pins. Only their kernel info is read.

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use baton_api::preflight::{LinkCheck, LinksCheck};

use super::programs::attach_name;
use super::{outcome, PreflightError};
use crate::datapath::link_pin_path;
use crate::sys::{self, AttachType};

/// Reads every pinned link under `pin_dir`.
pub fn check(pin_dir: &Path, cgroup: Option<&Path>) -> LinksCheck {
    let cg_id = cgroup.and_then(|c| std::fs::metadata(c).ok().map(|m| m.ino()));
    let mut links = Vec::new();
    let mut problems = Vec::new();
    for attach in [AttachType::Connect4, AttachType::Connect6] {
        let pin = link_pin_path(pin_dir, attach);
        if !pin.exists() {
            continue;
        }
        match read(&pin, attach, cg_id) {
            Ok(l) => {
                if !l.on_cgroup {
                    problems.push(format!(
                        "pinned link {} is attached to cgroup id {}, not to --cgroup {} (id {}): \
                         a takeover from the pins refuses it",
                        l.pin,
                        l.cgroup_id,
                        cgroup.map(|c| c.display().to_string()).unwrap_or_default(),
                        cg_id.map(|i| i.to_string()).unwrap_or_else(|| "?".into())
                    ));
                }
                links.push(l);
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    let summary = if !problems.is_empty() {
        problems.join("; ")
    } else if links.is_empty() {
        "no pinned links (a fresh node): a takeover attaches new ones".into()
    } else {
        let each: Vec<String> = links
            .iter()
            .map(|l| format!("{} (link {}, program {})", l.attach, l.link_id, l.prog_id))
            .collect();
        format!(
            "{} on the cgroup: a takeover updates them in place",
            each.join(", ")
        )
    };
    LinksCheck {
        outcome: outcome(problems.is_empty()),
        summary,
        links,
    }
}

fn read(pin: &Path, attach: AttachType, cg_id: Option<u64>) -> Result<LinkCheck, PreflightError> {
    let sys_err = |what: &str| {
        let what = format!("{what} {}", pin.display());
        move |source| PreflightError::Sys { what, source }
    };
    // Links cannot be opened read-only (the kernel wants O_RDWR); this
    // descriptor only reads the link's info.
    let fd = sys::obj_get(pin).map_err(sys_err("open"))?;
    let info = sys::link_info(fd.as_fd()).map_err(sys_err("link info"))?;
    Ok(LinkCheck {
        attach: attach_name(attach).into(),
        pin: pin.display().to_string(),
        link_id: info.id,
        prog_id: info.prog_id,
        cgroup_id: info.cgroup_id,
        on_cgroup: Some(info.cgroup_id) == cg_id,
    })
}
