//! `baton-bench`: connect latency (direct / BPF VIP / iptables DNAT), map programming speed,
//! agent memory and agent hot upgrades (handover), measured in a private cgroup + network
//! namespace of this process.
//!
//! Safety: the bench creates its own child cgroup (`baton-bench-<pid>`, a
//! [`baton_e2e::kit::CgroupDir`]) and its own bpffs mount in a temporary directory (a
//! [`baton_e2e::kit::sandbox::BpffsMount`]), and removes both on exit (Drop guards). All traffic,
//! routes and iptables rules live in the private network namespace created by
//! [`baton_e2e::kit::sandbox::enter`]; only loopback backends are used. Run as root:
//! `baton-bench [--quick] [--rounds N]`.
//!
//! One module per section (`--only latency|programming|rss|handover|kube-proxy`), each a `run`
//! function: [`latency`], [`programming`], [`rss`], [`handover`], `kube_proxy` (with its cluster
//! in `kcluster` and the proxies in `kproxy`); [`report`] formats the tables, [`args`] parses
//! the command line, [`common`] holds the generated services and datapath helpers.

mod args;
mod common;
mod handover;
mod iptables;
#[cfg(feature = "shim")]
mod kcluster;
#[cfg(feature = "shim")]
mod kproxy;
#[cfg(feature = "shim")]
mod kube_proxy;
mod latency;
mod programming;
mod report;
mod rss;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use baton_e2e::kit::sandbox::{self, BpffsMount, CgroupDir};
use clap::Parser;

use args::{Args, Section};

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let opts = Args::parse();
    if !nix::unistd::Uid::effective().is_root() {
        bail!("baton-bench needs root (cgroups, bpffs, BPF, network namespaces)");
    }
    iptables::check_iptables()?;
    // Before pinning: the agents' binaries (may run cargo) and the CPUs they get.
    let upgrade = if opts.runs(Section::Handover) {
        Some(handover::upgrade_setup()?)
    } else {
        None
    };
    let cgroup = BenchCgroup::create()?;
    let bpffs_dir = tempfile::Builder::new()
        .prefix("baton-bench-bpffs")
        .tempdir()?;
    let bpffs = BpffsMount::mount(bpffs_dir.path())?;
    if let Some(cpu) = opts.cpu() {
        // Every thread (client, backend handlers) and the agent child inherit this: on small VMs
        // cross-CPU wakeups of idle vCPUs otherwise add a bimodal ~1-jiffy (4 ms) tail to every path.
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).context("--cpu out of range")?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
            .with_context(|| format!("pinning to CPU {cpu}"))?;
    }
    // Single-threaded here: join the bench cgroup and move into a private netns with only lo.
    sandbox::enter(Some(cgroup.path())).context("entering the sandbox")?;
    for conf in ["all", "lo", "default"] {
        std::fs::write(
            format!("/proc/sys/net/ipv4/conf/{conf}/route_localnet"),
            "1",
        )
        .with_context(|| format!("route_localnet ({conf}) in the private netns"))?;
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "## baton-bench{} — kernel {}, {} CPUs online, {}",
        if opts.quick { " --quick" } else { "" },
        kernel(),
        online_cpus(),
        opts.cpu()
            .map_or("not pinned".to_string(), |c| format!("pinned to CPU {c}"))
    );
    let t0 = Instant::now();
    if opts.runs(Section::Latency) {
        latency::run(&opts, bpffs.path(), cgroup.path(), &mut out)?;
    }
    if opts.runs(Section::Programming) {
        programming::run(&opts, bpffs.path(), cgroup.path(), &mut out)?;
    }
    if opts.runs(Section::Rss) {
        rss::run(bpffs.path(), cgroup.path(), &mut out)?;
    }
    if let Some(setup) = &upgrade {
        handover::run(&opts, setup, bpffs.path(), cgroup.path(), &mut out)?;
    }
    if opts.runs(Section::KubeProxy) {
        #[cfg(feature = "shim")]
        kube_proxy::run(&opts, bpffs.path(), cgroup.path(), &mut out)?;
        #[cfg(not(feature = "shim"))]
        bail!("--only kube-proxy needs baton-e2e's default feature `shim` (the Kubernetes client)");
    }
    let _ = writeln!(
        out,
        "\n(total bench time {:.0} s)",
        t0.elapsed().as_secs_f64()
    );
    println!("{out}");
    Ok(())
}

/// The bench's own cgroup `baton-bench-<pid>` below the cgroup v2 hierarchy
/// ([`sandbox::cgroup_root`]). On drop this process first moves back to the cgroup it came from;
/// then the [`CgroupDir`] kills whatever is still inside and removes the directory.
struct BenchCgroup {
    dir: Option<CgroupDir>,
    path: PathBuf,
    mount: PathBuf,
    home: PathBuf,
}

impl BenchCgroup {
    fn create() -> Result<Self> {
        let mount = baton_agent::sys::find_cgroup2_mount().context("no cgroup v2 mount found")?;
        let own = sandbox::current_cgroup().context("reading /proc/self/cgroup")?;
        let home = mount.join(own.trim_start_matches('/'));
        let dir = CgroupDir::create(
            &sandbox::cgroup_root()?,
            &format!("baton-bench-{}", std::process::id()),
        )?;
        Ok(Self {
            path: dir.path().to_owned(),
            dir: Some(dir),
            mount,
            home,
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BenchCgroup {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        let _ = std::fs::write(
            self.home.join("cgroup.procs"),
            format!("{}\n", std::process::id()),
        );
        let inside = sandbox::current_cgroup()
            .is_none_or(|own| self.mount.join(own.trim_start_matches('/')) == self.path);
        if inside {
            // Removing the cgroup would kill this process: leave it.
            eprintln!(
                "baton-bench: could not move back to {}; leaving cgroup {}",
                self.home.display(),
                self.path.display()
            );
            std::mem::forget(dir);
        }
    }
}

fn online_cpus() -> String {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}
