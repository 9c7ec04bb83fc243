//! Section 3 (`--only rss`): RSS and peak RSS of the real `baton-agent` with 10 000 services ×
//! 10 endpoints.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::common::{services_yaml, BIG, EPS_PER_SVC};
use crate::guards::ChildGuard;

/// Runs section 3 and appends its report to `out`.
pub fn run(bpffs: &Path, cgroup: &Path, out: &mut String) -> Result<()> {
    let _ = writeln!(
        out,
        "\n### 3. Agent memory with {BIG} services × {EPS_PER_SVC} endpoints"
    );
    let bin = agent_bin()?;
    let tmp = tempfile::Builder::new()
        .prefix("baton-bench-agent")
        .tempdir()?;
    let file = tmp.path().join("services.yaml");
    std::fs::write(&file, services_yaml())?;
    let run_dir = tmp.path().join("run");
    std::fs::create_dir(&run_dir)?;
    let pins = bpffs.join("agent");
    eprintln!("agent: starting {}", bin.display());
    let log = std::fs::File::create(tmp.path().join("agent.log"))?;
    let start = Instant::now();
    let child = Command::new(&bin)
        .arg("run")
        .arg("--services")
        .arg(&file)
        .arg("--cgroup")
        .arg(cgroup)
        .arg("--bpffs")
        .arg(&pins)
        .arg("--run-dir")
        .arg(&run_dir)
        .arg("--no-metrics")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))?;
    let pid = child.id();
    let mut guard = ChildGuard(Some(child));
    let st = loop {
        if let Some(c) = guard.0.as_mut() {
            if let Some(ex) = c.try_wait()? {
                let log = std::fs::read_to_string(tmp.path().join("agent.log")).unwrap_or_default();
                bail!("baton-agent exited early ({ex}); log:\n{log}");
            }
        }
        if let Some(v) = status(&bin, &run_dir) {
            let n = v.get("services").and_then(|s| s.as_u64()).unwrap_or(0);
            if n as usize >= BIG && !v.get("last_sync").is_none_or(|s| s.is_null()) {
                break v;
            }
        }
        if start.elapsed() > Duration::from_secs(180) {
            bail!("baton-agent did not program {BIG} services within 180 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let ready = start.elapsed();
    let rss = proc_kib(pid, "VmRSS")?;
    let hwm = proc_kib(pid, "VmHWM")?;
    let exit = guard.stop();
    let _ = writeln!(
        out,
        "\n- time from spawn to {BIG} services programmed (status polled every 100 ms): {:.2} s",
        ready.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "- VmRSS **{:.1} MiB**, VmHWM (peak) **{:.1} MiB**",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    let _ = writeln!(
        out,
        "- status: services={}, endpoints={}, backends={}; last_sync={}",
        st["services"], st["endpoints"], st["backends"], st["last_sync"]
    );
    let _ = writeln!(out, "- agent exit after SIGTERM: {exit:?}");
    let _ = baton_agent::datapath::remove_pins(&pins);
    Ok(())
}

fn agent_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("BATON_AGENT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let p = exe.with_file_name("baton-agent");
    if !p.exists() {
        bail!(
            "{} not found: build it (cargo build --release -p baton-agent) or set BATON_AGENT_BIN",
            p.display()
        );
    }
    Ok(p)
}

fn status(bin: &Path, run_dir: &Path) -> Option<serde_json::Value> {
    let o = Command::new(bin)
        .args(["status", "--run-dir"])
        .arg(run_dir)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !o.status.success() {
        return None;
    }
    serde_json::from_slice(&o.stdout).ok()
}

fn proc_kib(pid: u32, key: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .with_context(|| format!("{key} missing in /proc/{pid}/status"))?;
    let v = line
        .trim_start_matches(':')
        .split_whitespace()
        .next()
        .unwrap_or("");
    v.parse().with_context(|| format!("{key}: {line:?}"))
}
