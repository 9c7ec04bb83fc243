//! The typed manifest of passed descriptors: built from what the incumbent
//! holds, and checked descriptor by descriptor on the successor's side before
//! anything is used (a map must be the map the entry says, with that info).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{getsockname, getsockopt, sockopt, SockaddrLike, SockaddrStorage};

use super::msg::{Entry, LinkDesc, ListenerDesc, Role};
use crate::migrate::MapLayout;
use crate::sys;

/// A descriptor that does not match its entry, or a manifest that does not
/// match its descriptors.
#[derive(Debug, thiserror::Error)]
#[error("manifest entry {index} ({role:?} {name}): {detail}")]
pub struct ManifestError {
    /// Entry index.
    pub index: usize,
    /// Entry role.
    pub role: Role,
    /// Entry name.
    pub name: String,
    /// What is wrong.
    pub detail: String,
}

/// A map received and checked.
#[derive(Debug)]
pub struct ReceivedMap {
    /// The map.
    pub fd: OwnedFd,
    /// Its layout as the manifest states it (and the kernel confirmed).
    pub layout: MapLayout,
    /// Kernel id.
    pub id: u32,
}

/// A link received and checked.
#[derive(Debug)]
pub struct ReceivedLink {
    /// The link.
    pub fd: OwnedFd,
    /// Kernel id.
    pub id: u32,
    /// What it runs and where.
    pub desc: LinkDesc,
}

/// Everything the incumbent handed over, checked.
#[derive(Debug, Default)]
pub struct Received {
    /// Maps by name.
    pub maps: BTreeMap<String, ReceivedMap>,
    /// Programs by attach point (`connect4`/`connect6`), with their ids.
    pub programs: BTreeMap<String, (OwnedFd, u32)>,
    /// Links by attach point.
    pub links: BTreeMap<String, ReceivedLink>,
    /// Listening sockets by name (`admin`, `metrics`, `handover`).
    pub listeners: BTreeMap<String, OwnedFd>,
}

/// BPF_PROG_TYPE_CGROUP_SOCK_ADDR.
pub(crate) const PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;

/// Entry for a map the incumbent owns.
pub fn map_entry(
    name: &str,
    fd: BorrowedFd<'_>,
    layout: MapLayout,
) -> Result<Entry, sys::SysError> {
    let info = sys::map_info(fd)?;
    Ok(Entry {
        role: Role::Map,
        name: name.into(),
        id: info.id,
        map: Some(layout),
        link: None,
        listener: None,
    })
}

/// Entry for a program the links run now.
pub fn program_entry(attach: &str, fd: BorrowedFd<'_>) -> Result<Entry, sys::SysError> {
    Ok(Entry {
        role: Role::Program,
        name: attach.into(),
        id: sys::prog_info(fd)?.id,
        map: None,
        link: None,
        listener: None,
    })
}

/// Entry for a pinned cgroup link.
pub fn link_entry(attach: &str, fd: BorrowedFd<'_>) -> Result<Entry, sys::SysError> {
    let info = sys::link_info(fd)?;
    Ok(Entry {
        role: Role::Link,
        name: attach.into(),
        id: info.id,
        map: None,
        link: Some(LinkDesc {
            prog_id: info.prog_id,
            cgroup_id: info.cgroup_id,
        }),
        listener: None,
    })
}

/// Entry for a listening socket.
pub fn listener_entry(name: &str, fd: BorrowedFd<'_>) -> Result<Entry, nix::Error> {
    Ok(Entry {
        role: Role::Listener,
        name: name.into(),
        id: 0,
        map: None,
        link: None,
        listener: Some(describe_socket(fd)?),
    })
}

/// Family and local address of a socket.
fn describe_socket(fd: BorrowedFd<'_>) -> Result<ListenerDesc, nix::Error> {
    let addr: SockaddrStorage = getsockname(std::os::fd::AsRawFd::as_raw_fd(&fd))?;
    if let Some(u) = addr.as_unix_addr() {
        let path = u
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        return Ok(ListenerDesc {
            family: "unix".into(),
            addr: path,
        });
    }
    if let Some(a) = addr.as_sockaddr_in() {
        return Ok(ListenerDesc {
            family: "tcp".into(),
            addr: std::net::SocketAddrV4::from(*a).to_string(),
        });
    }
    if let Some(a) = addr.as_sockaddr_in6() {
        return Ok(ListenerDesc {
            family: "tcp".into(),
            addr: std::net::SocketAddrV6::from(*a).to_string(),
        });
    }
    Ok(ListenerDesc {
        family: format!("family-{:?}", addr.family()),
        addr: String::new(),
    })
}

/// Checks every descriptor against its entry and sorts them by role.
/// Descriptors are consumed: on error they are all closed.
pub fn verify(entries: Vec<Entry>, fds: Vec<OwnedFd>) -> Result<Received, ManifestError> {
    if entries.len() != fds.len() {
        return Err(ManifestError {
            index: entries.len().min(fds.len()),
            role: Role::Map,
            name: String::new(),
            detail: format!("{} entries for {} descriptors", entries.len(), fds.len()),
        });
    }
    let mut out = Received::default();
    for (index, (e, fd)) in entries.into_iter().zip(fds).enumerate() {
        let fail = |detail: String| ManifestError {
            index,
            role: e.role,
            name: e.name.clone(),
            detail,
        };
        match e.role {
            Role::Map => {
                let info = sys::map_info(fd.as_fd())
                    .map_err(|err| fail(format!("not a BPF map: {err}")))?;
                let layout = e.map.clone().ok_or_else(|| fail("no map layout".into()))?;
                if info.id != e.id {
                    return Err(fail(format!("map id {} is not {}", info.id, e.id)));
                }
                if baton_ebpf::map_spec(&e.name).is_none() || layout.name != e.name {
                    return Err(fail("not a map of the datapath".into()));
                }
                let kernel = (
                    info.map_type,
                    info.key_size,
                    info.value_size,
                    info.max_entries,
                    info.map_flags,
                );
                let stated = (
                    layout.map_type,
                    layout.key_size,
                    layout.value_size,
                    layout.max_entries,
                    layout.map_flags,
                );
                if kernel != stated {
                    return Err(fail(format!(
                        "kernel says (type, key, value, max_entries, flags) = {kernel:?}, manifest {stated:?}"
                    )));
                }
                if layout.key.size() != layout.key_size || layout.value.size() != layout.value_size
                {
                    return Err(fail("BTF shapes do not match the sizes".into()));
                }
                if out.maps.contains_key(&e.name) {
                    return Err(fail("duplicate map".into()));
                }
                out.maps.insert(
                    e.name.clone(),
                    ReceivedMap {
                        fd,
                        layout,
                        id: info.id,
                    },
                );
            }
            Role::Program => {
                let info = sys::prog_info(fd.as_fd())
                    .map_err(|err| fail(format!("not a BPF program: {err}")))?;
                if info.id != e.id {
                    return Err(fail(format!("program id {} is not {}", info.id, e.id)));
                }
                if info.prog_type != PROG_TYPE_CGROUP_SOCK_ADDR {
                    return Err(fail(format!(
                        "program type {} is not cgroup_sock_addr",
                        info.prog_type
                    )));
                }
                if !matches!(e.name.as_str(), "connect4" | "connect6") {
                    return Err(fail("unknown attach point".into()));
                }
                out.programs.insert(e.name.clone(), (fd, info.id));
            }
            Role::Link => {
                let info = sys::link_info(fd.as_fd())
                    .map_err(|err| fail(format!("not a BPF link: {err}")))?;
                let desc = e
                    .link
                    .clone()
                    .ok_or_else(|| fail("no link description".into()))?;
                if info.id != e.id
                    || info.prog_id != desc.prog_id
                    || info.cgroup_id != desc.cgroup_id
                {
                    return Err(fail(format!(
                        "kernel says link {} runs program {} on cgroup {}, manifest {} / {} / {}",
                        info.id, info.prog_id, info.cgroup_id, e.id, desc.prog_id, desc.cgroup_id
                    )));
                }
                if !matches!(e.name.as_str(), "connect4" | "connect6") {
                    return Err(fail("unknown attach point".into()));
                }
                out.links.insert(
                    e.name.clone(),
                    ReceivedLink {
                        fd,
                        id: info.id,
                        desc,
                    },
                );
            }
            Role::Listener => {
                let stated = e
                    .listener
                    .clone()
                    .ok_or_else(|| fail("no listener description".into()))?;
                let listening = getsockopt(&fd, sockopt::AcceptConn)
                    .map_err(|err| fail(format!("not a socket: {err}")))?;
                if !listening {
                    return Err(fail("socket is not listening".into()));
                }
                let actual = describe_socket(fd.as_fd()).map_err(|err| fail(err.to_string()))?;
                if actual != stated {
                    return Err(fail(format!(
                        "socket is {} {}, manifest {} {}",
                        actual.family, actual.addr, stated.family, stated.addr
                    )));
                }
                out.listeners.insert(e.name.clone(), fd);
            }
        }
    }
    Ok(out)
}
