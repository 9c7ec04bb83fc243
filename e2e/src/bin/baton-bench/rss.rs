//! Section 3 (`--only rss`): RSS and peak RSS of the real `baton-agent` with 10 000 services ×
//! 10 endpoints.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use baton_api::admin::Status;
use baton_e2e::kit::process::proc_status_kib;
use baton_e2e::kit::{agent_bin, AgentCmd};

use crate::common::{services_yaml, BIG, EPS_PER_SVC};

/// How often the agent's status is polled (the report says so).
const STATUS_POLL: Duration = Duration::from_millis(100);

/// Runs section 3 and appends its report to `out`.
pub fn run(bpffs: &Path, cgroup: &Path, out: &mut String) -> Result<()> {
    let _ = writeln!(
        out,
        "\n### 3. Agent memory with {BIG} services × {EPS_PER_SVC} endpoints"
    );
    let bin = agent_bin(baton_ebpf::LAYOUT_VERSION).context("baton-agent")?;
    let tmp = tempfile::Builder::new()
        .prefix("baton-bench-agent")
        .tempdir()?;
    let file = tmp.path().join("services.yaml");
    std::fs::write(&file, services_yaml())?;
    let run_dir = tmp.path().join("run");
    std::fs::create_dir(&run_dir)?;
    let pins = bpffs.join("agent");
    eprintln!("agent: starting {}", bin.display());
    let agent = AgentCmd::new(&bin, &file, cgroup, &pins, &run_dir)
        .status_poll(STATUS_POLL)
        .spawn(&tmp.path().join("agent.log"))
        .with_context(|| format!("spawning {}", bin.display()))?;
    let st: Status = agent.wait_synced(BIG as u64, Duration::from_secs(180))?;
    let ready = agent.started().elapsed();
    let kib = |field: &str| {
        proc_status_kib(agent.pid(), field)
            .with_context(|| format!("{field} of pid {} in /proc/PID/status", agent.pid()))
    };
    let rss = kib("VmRSS")?;
    let hwm = kib("VmHWM")?;
    let exit = agent.terminate(Duration::from_secs(15));
    let _ = writeln!(
        out,
        "\n- time from spawn to {BIG} services programmed (status polled every {} ms): {:.2} s",
        STATUS_POLL.as_millis(),
        ready.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "- VmRSS **{:.1} MiB**, VmHWM (peak) **{:.1} MiB**",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    // As JSON, keys sorted (how the report has always shown it).
    let last_sync = serde_json::to_value(&st.last_sync)?;
    let _ = writeln!(
        out,
        "- status: services={}, endpoints={}, backends={}; last_sync={last_sync}",
        st.services, st.endpoints, st.backends
    );
    let _ = writeln!(out, "- agent exit after SIGTERM: {exit:?}");
    let _ = baton_agent::datapath::remove_pins(&pins);
    Ok(())
}
