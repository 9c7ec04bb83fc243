//! kube-proxy-style iptables DNAT rules for the BPF vs iptables latency table.

use std::fmt::Write as _;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::common::{vip, BACKENDS, BACKEND_PORT, SIZES, VIP_PORT};

/// kube-proxy-style ruleset: one KUBE-SERVICES-<n> chain per size, reached from nat OUTPUT by the
/// set's /16, with one rule per service → KUBE-SVC → 3 × KUBE-SEP (statistic random) → DNAT.
pub fn iptables_rules() -> String {
    let mut s = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n");
    let mut rules = String::new();
    for (k, &n) in SIZES.iter().enumerate() {
        let b = 97 + k as u8;
        let top = format!("KUBE-SERVICES-{n}");
        let _ = writeln!(s, ":{top} - [0:0]");
        let _ = writeln!(rules, "-A OUTPUT -d 10.{b}.0.0/16 -j {top}");
        for i in 0..n {
            let svc = format!("KUBE-SVC-{n}-{i}");
            let _ = writeln!(s, ":{svc} - [0:0]");
            let _ = writeln!(
                rules,
                "-A {top} -d {}/32 -p tcp -m tcp --dport {VIP_PORT} -j {svc}",
                vip(b, i)
            );
            for (j, be) in BACKENDS.iter().enumerate() {
                let sep = format!("KUBE-SEP-{n}-{i}-{j}");
                let _ = writeln!(s, ":{sep} - [0:0]");
                let left = BACKENDS.len() - j;
                if left > 1 {
                    let _ = writeln!(
                        rules,
                        "-A {svc} -m statistic --mode random --probability {:.11} -j {sep}",
                        1.0 / left as f64
                    );
                } else {
                    let _ = writeln!(rules, "-A {svc} -j {sep}");
                }
                let _ = writeln!(
                    rules,
                    "-A {sep} -p tcp -m tcp -j DNAT --to-destination {be}:{BACKEND_PORT}"
                );
            }
        }
    }
    s.push_str(&rules);
    s.push_str("COMMIT\n");
    s
}

pub fn check_iptables() -> Result<()> {
    match Command::new("iptables-restore").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => bail!(
            "iptables-restore --version failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => bail!("iptables-restore not found ({e}); install the `iptables` package (apt-get install iptables)"),
    }
}

/// Loads the ruleset into this process's (private) netns; returns the load time.
pub fn load_iptables() -> Result<Duration> {
    // Route the VIP ranges to lo so connect() gets past the route lookup to nat OUTPUT
    // (on a real node the default route does this). Private netns only.
    for b in 97..97 + SIZES.len() as u8 {
        run(
            "ip",
            &["route", "add", &format!("10.{b}.0.0/16"), "dev", "lo"],
        )?;
    }
    let rules = iptables_rules();
    let start = Instant::now();
    let mut child = Command::new("iptables-restore")
        .arg("-w")
        .stdin(Stdio::piped())
        .spawn()
        .context("spawning iptables-restore")?;
    child
        .stdin
        .take()
        .context("iptables-restore stdin")?
        .write_all(rules.as_bytes())?;
    let st = child.wait()?;
    if !st.success() {
        bail!("iptables-restore failed: {st}");
    }
    Ok(start.elapsed())
}

pub fn run(cmd: &str, args: &[&str]) -> Result<()> {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !o.status.success() {
        bail!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}
