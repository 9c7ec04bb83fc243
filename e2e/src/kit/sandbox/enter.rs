//! A process confining itself: join a test cgroup, move into a private
//! network namespace, bring `lo` up (the probe and the bench do this first).
//!
//! [`enter`] must run at the very start of the process, before any thread is
//! spawned: `unshare(CLONE_NEWNET)` only moves the calling thread, so a thread
//! created earlier would keep talking to the host network. `enter` refuses to
//! run when the process already has more than one thread.
//!
//! Tests (multi-threaded) never call this in their own process: they run the
//! `baton-probe` binary as a child ([`crate::kit::probe`]), or start children
//! inside a [`super::Netns`].

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sched::{unshare, CloneFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

/// Errors while entering the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The process already runs several threads.
    #[error("sandbox must be entered before any thread is spawned ({0} threads running)")]
    Threaded(usize),
    /// `<cgroup>/cgroup.procs` could not be opened or written.
    #[error("joining cgroup {path}: {source}")]
    Cgroup {
        /// The cgroup directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `/proc/self/cgroup` does not show the requested cgroup after joining.
    #[error("joined cgroup {path}, but /proc/self/cgroup says {actual:?}")]
    CgroupMismatch {
        /// The cgroup directory.
        path: PathBuf,
        /// The unified-hierarchy path the kernel reports.
        actual: String,
    },
    /// `unshare(CLONE_NEWNET)` failed (needs CAP_SYS_ADMIN).
    #[error("unshare(CLONE_NEWNET): {0}")]
    Unshare(nix::Error),
    /// Bringing `lo` up failed.
    #[error("bringing lo up: {0}")]
    Loopback(std::io::Error),
    /// After setup, some interface other than `lo` is up: traffic could leave the sandbox.
    #[error("network namespace is not isolated: interface {0} is up")]
    NotIsolated(String),
    /// Listing interfaces failed.
    #[error("listing interfaces: {0}")]
    Interfaces(nix::Error),
    /// Adding a backend address to `lo` failed.
    #[error("adding {addr}/32 to lo: {source}")]
    LocalAddress {
        /// The address.
        addr: Ipv4Addr,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Joins `cgroup` (if given), unshares the network namespace and brings `lo` up.
pub fn enter(cgroup: Option<&Path>) -> Result<(), SandboxError> {
    let threads = thread_count();
    if threads > 1 {
        return Err(SandboxError::Threaded(threads));
    }
    if let Some(dir) = cgroup {
        join_cgroup(dir)?;
    }
    enter_netns()
}

/// Unshares the network namespace, brings `lo` up and verifies isolation (no cgroup change).
pub fn enter_netns() -> Result<(), SandboxError> {
    unshare(CloneFlags::CLONE_NEWNET).map_err(SandboxError::Unshare)?;
    set_link_up("lo").map_err(SandboxError::Loopback)?;
    tune_netns();
    check_isolated()
}

/// Writes this process's pid into `<dir>/cgroup.procs` and verifies the move.
pub fn join_cgroup(dir: &Path) -> Result<(), SandboxError> {
    let procs = dir.join("cgroup.procs");
    let err = |source| SandboxError::Cgroup {
        path: dir.to_owned(),
        source,
    };
    // No `create`: a plain directory without cgroup.procs is an error, not a new file.
    let mut f = OpenOptions::new().write(true).open(&procs).map_err(err)?;
    f.write_all(format!("{}\n", std::process::id()).as_bytes())
        .map_err(err)?;
    let actual = current_cgroup().unwrap_or_default();
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    if actual.is_empty() || !canonical.to_string_lossy().ends_with(actual.as_str()) {
        return Err(SandboxError::CgroupMismatch {
            path: dir.to_owned(),
            actual,
        });
    }
    Ok(())
}

/// This process's cgroup v2 path (the `0::` line of `/proc/self/cgroup`).
pub fn current_cgroup() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// Fails unless every interface other than `lo` is down.
pub fn check_isolated() -> Result<(), SandboxError> {
    // Tunnel fallback devices (sit0, tunl0, ...) exist in every netns but stay down.
    let addrs = nix::ifaddrs::getifaddrs().map_err(SandboxError::Interfaces)?;
    for a in addrs {
        if a.interface_name != "lo" && a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP) {
            return Err(SandboxError::NotIsolated(a.interface_name));
        }
    }
    Ok(())
}

/// Sets IFF_UP on interface `name` via SIOCGIFFLAGS/SIOCSIFFLAGS (no `ip` binary).
pub fn set_link_up(name: &str) -> std::io::Result<()> {
    // The socket must be created after unshare: sockets belong to the netns they were created in.
    let sock: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(std::io::Error::from)?;
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= ifr.ifr_name.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (dst, src) in ifr.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `ifr` is a valid, NUL-terminated ifreq and `sock` an open socket.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut ifr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe {
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: as above.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &ifr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the IPv4 addresses of `backends` that no interface holds local to
/// this (private) network namespace: each is added to `lo` as a /32 alias
/// (`lo:1`, `lo:2`, ...), so a backend can stand for a pod IP (the API server
/// refuses loopback endpoint addresses). Loopback, unspecified and IPv6
/// addresses are left alone. Call only inside the private netns.
pub fn add_backend_addresses(backends: &[SocketAddr]) -> Result<(), SandboxError> {
    let held: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
        .map_err(SandboxError::Interfaces)?
        .filter_map(|a| a.address?.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())))
        .collect();
    let mut added: Vec<Ipv4Addr> = Vec::new();
    for b in backends {
        let IpAddr::V4(ip) = b.ip() else { continue };
        if ip.is_loopback() || ip.is_unspecified() || held.contains(&b.ip()) || added.contains(&ip)
        {
            continue;
        }
        added.push(ip);
        add_lo_alias(&format!("lo:{}", added.len()), ip)
            .map_err(|source| SandboxError::LocalAddress { addr: ip, source })?;
    }
    Ok(())
}

/// `SIOCSIFADDR` + `SIOCSIFNETMASK` (/32) on alias `label` of `lo` (no `ip` binary).
fn add_lo_alias(label: &str, ip: Ipv4Addr) -> std::io::Result<()> {
    let sock: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(std::io::Error::from)?;
    let set = |request: libc::c_ulong, addr: Ipv4Addr| -> std::io::Result<()> {
        let mut ifr = ifreq_named(label)?;
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(addr).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: sockaddr_in fits in the sockaddr member of the union
        // (both 16 bytes); the kernel reads it as AF_INET.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (&sin as *const libc::sockaddr_in).cast::<u8>(),
                (&mut ifr.ifr_ifru.ifru_addr as *mut libc::sockaddr).cast::<u8>(),
                std::mem::size_of::<libc::sockaddr_in>(),
            );
        }
        // SAFETY: `ifr` is a valid, NUL-terminated ifreq and `sock` an open socket.
        if unsafe { libc::ioctl(sock.as_raw_fd(), request as _, &ifr) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    set(libc::SIOCSIFADDR, ip)?;
    set(libc::SIOCSIFNETMASK, Ipv4Addr::BROADCAST)
}

/// A zeroed `ifreq` for interface `name`.
fn ifreq_named(name: &str) -> std::io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= ifr.ifr_name.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (dst, src) in ifr.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(ifr)
}

/// Best-effort per-netns tuning for high connect rates (only affects the private netns).
pub(super) fn tune_netns() {
    // More ephemeral ports; loopback TIME_WAIT reuse is on by default (tcp_tw_reuse=2).
    let _ = std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "10000 65000");
    let _ = std::fs::write("/proc/sys/net/core/somaxconn", "8192");
}

/// Number of threads of this process.
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(1)
}
