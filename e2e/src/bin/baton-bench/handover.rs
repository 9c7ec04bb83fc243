//! Section 4 (`--only handover`): hot upgrades of the real `baton-agent` at 10 000 services ×
//! 10 endpoints: 4a same layout, 4b layout changes (with an edit stream), 4c failed connects of
//! three upgrade strategies.

mod edit;
mod lab;
mod layout_change;
mod logs;
mod same_layout;
mod strategies;
mod traffic;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::args::Args;
use crate::common::{backend_addr, big_eps, BIG, EPS_PER_SVC};
use crate::report::loadavg;
use lab::Lab;

/// Services of the big state whose ten backends listen during the upgrade traffic.
pub const TRAFFIC_SVC_COUNT: usize = 8;
/// Pacing of the upgrade traffic: one connect every 250 µs (4 000/s).
pub const TRAFFIC_INTERVAL: Duration = Duration::from_micros(250);
/// Quiet traffic before the upgrade starts and after the new agent synced.
pub const TRAFFIC_MARGIN: Duration = Duration::from_millis(300);
/// Services an edit of the edit stream changes (one endpoint replaced in each).
pub const EDIT_SERVICES: usize = 20;
/// Time between two edits of the services file.
pub const EDIT_INTERVAL: Duration = Duration::from_millis(100);
/// How long the successor is held after its pre-copy in the "held" rounds.
pub const HOLD_MS: u64 = 700;
/// Agents' services-file polling (ms) in the edit rounds, and otherwise.
pub const FAST_POLL: &str = "10";
pub const POLL: &str = "100";
/// Limit of every wait for an agent.
pub const LONG: Duration = Duration::from_secs(120);

/// The services the upgrade traffic connects to: spread over the services file (a sync programs
/// the services in file order), each with backends whose last octet is neither 0 nor 255.
pub fn traffic_svcs() -> Vec<usize> {
    (0..TRAFFIC_SVC_COUNT)
        .filter_map(|k| {
            (k * BIG / TRAFFIC_SVC_COUNT + 1..BIG).find(|&i| {
                big_eps(i)
                    .into_iter()
                    .all(|b| !matches!(backend_addr(b).octets()[3], 0 | 255))
            })
        })
        .collect()
}

/// What the handover section needs from before the bench pins itself and enters its sandbox.
pub struct UpgradeSetup {
    /// `baton-agent` for map layouts 1 and 2.
    pub bins: [PathBuf; 2],
    /// The CPUs the bench could use before pinning itself: the agents get all of them.
    pub cpus: nix::sched::CpuSet,
}

/// Finds both agents (may build the layout-2 one) and records the CPUs; call before pinning.
pub fn upgrade_setup() -> Result<UpgradeSetup> {
    let cpus = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .context("sched_getaffinity")?;
    let bin = |l: u32| {
        baton_e2e::kit::agent_bin(l).with_context(|| format!("baton-agent for map layout {l}"))
    };
    Ok(UpgradeSetup {
        bins: [bin(1)?, bin(2)?],
        cpus,
    })
}

/// Runs section 4 (4a, 4b, 4c) and appends its tables to `out`.
pub fn run(
    opts: &Args,
    setup: &UpgradeSetup,
    bpffs: &Path,
    cgroup: &Path,
    out: &mut String,
) -> Result<()> {
    let _ = writeln!(
        out,
        "\n### 4. Agent hot upgrade (handover) with {BIG} services × {EPS_PER_SVC} endpoints"
    );
    let _ = writeln!(
        out,
        "\nAgents: layout 1 `{}`, layout 2 `{}`; each agent runs on all CPUs the bench had before \
         pinning itself (load average at the start of this section: {}).",
        setup.bins[0].display(),
        setup.bins[1].display(),
        loadavg()
    );
    let mut lab = Lab::new(setup, cgroup, bpffs)?;
    let same = same_layout::run(opts, &mut lab, out)?;
    let changed = layout_change::run(opts, &mut lab, out)?;
    gap_table(out, &same, &changed);
    strategies::run(&mut lab, out)?;
    let _ = writeln!(
        out,
        "\n(load average at the end of this section: {})",
        loadavg()
    );
    Ok(())
}

/// The control-plane gap across handovers under the edit stream, against the sync interval
/// before them: p50 / p99 / max per kind of handover, and the adopt step after the commit.
fn gap_table(out: &mut String, same: &[lab::Round], changed: &[lab::Round]) {
    use crate::report::{median_max, quantile};
    let _ = writeln!(
        out,
        "\n#### Control-plane gap across handovers under the edit stream\n\n\
         | handovers | rounds | sync interval before, ms (median) | **gap** ms p50 / p99 / max | \
         gap target (interval + 50 ms) | **adopt** ms p50 / p99 / max | adopt target 20 ms | \
         successor's first sync ms p50 / max |\n\
         |---|---:|---:|---:|---|---:|---|---:|"
    );
    let mut all = Vec::new();
    all.extend(same.iter());
    all.extend(changed.iter());
    let same_refs: Vec<&lab::Round> = same.iter().collect();
    let changed_refs: Vec<&lab::Round> = changed.iter().collect();
    for (name, rs) in [
        ("same layout (1 → 1)", &same_refs),
        ("layout-changing (1 ↔ 2, incl. held)", &changed_refs),
        ("all", &all),
    ] {
        let gap: Vec<f64> = rs.iter().map(|r| r.gap_ms()).collect();
        let adopt: Vec<f64> = rs.iter().map(|r| r.adopt_ms()).collect();
        let first: Vec<f64> = rs.iter().map(|r| r.first_sync_ms()).collect();
        let interval = median_max(&rs.iter().map(|r| r.cadence_ms()).collect::<Vec<_>>()).0;
        let p = |v: &[f64], q: f64| quantile(v, q);
        let gap99 = p(&gap, 0.99);
        let adopt99 = p(&adopt, 0.99);
        let met = |ok: bool| if ok { "met" } else { "**missed**" };
        let _ = writeln!(
            out,
            "| {name} | {} | {interval:.0} | {:.0} / {gap99:.0} / {:.0} | {} ({gap99:.0} vs {:.0}) | \
             {:.1} / {adopt99:.1} / {:.1} | {} | {:.0} / {:.0} |",
            rs.len(),
            p(&gap, 0.5),
            p(&gap, 1.0),
            met(gap99 <= interval + 50.0),
            interval + 50.0,
            p(&adopt, 0.5),
            p(&adopt, 1.0),
            met(adopt99 < 20.0),
            p(&first, 0.5),
            p(&first, 1.0),
        );
    }
    let _ = writeln!(
        out,
        "\nGap = the old agent's last `synced` log line → the successor's first (both sync the \
         latest state they parsed); interval = the old agent's median time between syncs under \
         the same stream before the handover. p99 is nearest-rank over the rounds (with this few \
         rounds it is the largest or second largest)."
    );
}
