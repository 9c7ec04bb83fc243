//! The proxies the `kube-proxy` section compares: `baton-agent --source kubernetes` and the real
//! kube-proxy (iptables and nftables modes, default settings and the large-cluster settings of
//! the kube-proxy docs), each started against the bench's API server, measured, and stopped with
//! its rules removed.
//!
//! kube-proxy runs in the bench's private network namespace (every rule it writes lands there)
//! and in a private mount namespace where `/sys` and `/proc/sys` are read-only: it must not
//! change the host's conntrack table size (`--conntrack-*` flags at 0 skip those writes), and
//! anything else it might try fails instead of reaching the host. The one sysctl its iptables
//! mode insists on (`route_localnet`, for localhost node ports) is per namespace and already set
//! to 1 by the bench, so kube-proxy reads it and writes nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use baton_e2e::kit::process::{checked_output, proc_status_kib, Process, Spawn};
use baton_e2e::kit::{agent_bin, AgentCmd};

pub use crate::args::Mode;
use crate::kcluster::{NODE, NODE_IP};

/// Where the proxies find what they need.
pub struct Env {
    pub kube_proxy: PathBuf,
    pub kubeconfig: PathBuf,
    pub cgroup: PathBuf,
    pub bpffs: PathBuf,
    pub dir: PathBuf,
}

/// A running proxy.
pub struct Running {
    pub mode: Mode,
    process: Option<Process>,
    agent: Option<baton_e2e::kit::Agent>,
    pins: PathBuf,
}

impl Running {
    pub fn pid(&self) -> u32 {
        match (&self.agent, &self.process) {
            (Some(a), _) => a.pid(),
            (None, Some(p)) => p.pid(),
            (None, None) => 0,
        }
    }

    pub fn alive(&self) -> bool {
        match (&self.agent, &self.process) {
            (Some(a), _) => a.alive(),
            (None, Some(p)) => p.alive(),
            (None, None) => false,
        }
    }

    pub fn log_tail(&self) -> String {
        match (&self.agent, &self.process) {
            (Some(a), _) => a.log_tail(),
            (None, Some(p)) => p.log_tail(),
            (None, None) => String::new(),
        }
    }

    /// CPU seconds of the process and of the children it waited for (kube-proxy's
    /// iptables-restore / nft runs are most of its work).
    pub fn cpu_s(&self) -> f64 {
        cpu_s(self.pid()).unwrap_or(f64::NAN)
    }

    pub fn rss_mib(&self) -> f64 {
        proc_status_kib(self.pid(), "VmRSS").map_or(f64::NAN, |k| k as f64 / 1024.0)
    }

    /// SIGTERM (SIGKILL after 15 s), then removes whatever rules or pins it left.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        if let Some(a) = self.agent.take() {
            a.terminate(Duration::from_secs(15));
            let _ = baton_agent::datapath::remove_pins(&self.pins);
        }
        if let Some(p) = self.process.take() {
            p.stop(Duration::from_secs(15));
            flush_rules()?;
        }
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Removes every nftables table of the namespace (iptables here is iptables-nft, so its tables
/// too): what kube-proxy left, so the next mode starts from nothing.
pub fn flush_rules() -> Result<()> {
    let mut cmd = Command::new("nft");
    cmd.args(["flush", "ruleset"]);
    checked_output(cmd).context("nft flush ruleset")?;
    Ok(())
}

/// `utime + stime + cutime + cstime` of `pid`, in seconds.
pub fn cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime is field 14 of the whole line, i.e. index 11 here.
    let ticks: u64 = f
        .get(11..15)?
        .iter()
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / hz.max(1) as f64)
}

/// Starts `mode` against the API server of `env`.
pub fn start(mode: Mode, env: &Env, run: usize) -> Result<Running> {
    let pins = env.bpffs.join(format!("kagent-{run}"));
    if mode.is_baton() {
        let bin = agent_bin(baton_ebpf::LAYOUT_VERSION).context("baton-agent")?;
        let run_dir = env.dir.join(format!("agent-run-{run}"));
        std::fs::create_dir_all(&run_dir)?;
        // The kubernetes source ignores --services; AgentCmd always passes one.
        let unused = env.dir.join("unused-services.yaml");
        let mut cmd = AgentCmd::new(&bin, &unused, &env.cgroup, &pins, &run_dir)
            .args(["--source", "kubernetes"])
            .env("KUBECONFIG", &env.kubeconfig)
            .env("NODE_NAME", NODE)
            .env("RUST_LOG", "warn")
            .status_poll(Duration::from_millis(50));
        if mode == Mode::BatonFast {
            cmd = cmd.poll_ms(10);
        }
        let agent = cmd
            .spawn(&env.dir.join(format!("agent-{run}.log")))
            .with_context(|| format!("spawning {}", bin.display()))?;
        return Ok(Running {
            mode,
            process: None,
            agent: Some(agent),
            pins,
        });
    }
    let proxy_mode = match mode {
        Mode::Iptables | Mode::IptablesLarge => "iptables",
        _ => "nftables",
    };
    let mut args: Vec<String> = vec![
        format!("--kubeconfig={}", env.kubeconfig.display()),
        format!("--hostname-override={NODE}"),
        format!("--proxy-mode={proxy_mode}"),
        format!("--bind-address={NODE_IP}"),
        // 0 = leave the host's conntrack table size and timeouts alone.
        "--conntrack-max-per-core=0".into(),
        "--conntrack-min=0".into(),
        "--conntrack-tcp-timeout-established=0".into(),
        "--conntrack-tcp-timeout-close-wait=0".into(),
        "--healthz-bind-address=127.0.0.1:10256".into(),
        "--metrics-bind-address=127.0.0.1:10249".into(),
        "--v=2".into(),
    ];
    // One flag for both modes: kube-proxy v1.34 has no nftables-named one,
    // and `--iptables-min-sync-period` sets the shared `minSyncPeriod` in
    // every mode but IPVS (cmd/kube-proxy/app/options.go).
    if matches!(mode, Mode::IptablesLarge | Mode::NftablesLarge) {
        args.push("--iptables-min-sync-period=10s".into());
    }
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(
            "set -e; mount --bind -o ro /sys /sys; mount --bind /proc/sys /proc/sys; \
             mount -o remount,bind,ro /proc/sys; exec \"$0\" \"$@\"",
        )
        .arg(&env.kube_proxy)
        .args(&args);
    let process = Spawn::new(
        format!("kube-proxy-{proxy_mode}"),
        cmd,
        env.dir.join(format!("kube-proxy-{run}.log")),
    )
    .drop_grace(Duration::from_secs(15))
    .start()
    .context("spawning kube-proxy")?;
    Ok(Running {
        mode,
        process: Some(process),
        agent: None,
        pins,
    })
}

/// The kube-proxy binary next to the API server's (`e2e/cluster/k8s-bins.sh` builds both).
pub fn kube_proxy_bin(dir: &Path) -> Result<PathBuf> {
    let p = dir.join("kube-proxy");
    if !p.is_file() {
        bail!(
            "{} not found: build it with e2e/cluster/k8s-bins.sh (or set BATON_K8S_BIN_DIR)",
            p.display()
        );
    }
    Ok(p)
}
