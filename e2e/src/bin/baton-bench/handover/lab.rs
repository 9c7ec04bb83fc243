//! Agents of either layout on one services file, and one handover between two of them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use baton_api::admin::{Status, Takeover};
use baton_e2e::kit::{Agent, AgentCmd};

use super::edit::EditState;
use super::logs::{adopt_time, first_sync_time, line_times, log_text, sync_times};
use super::{UpgradeSetup, HOLD_MS, LONG};
use crate::common::BIG;

/// Agents of either layout on one services file, in the bench cgroup, one pin dir per scenario.
pub struct Lab<'a> {
    setup: &'a UpgradeSetup,
    cgroup: &'a Path,
    bpffs: &'a Path,
    dir: tempfile::TempDir,
    pub services: PathBuf,
    pub edits: Option<EditState>,
    spawned: usize,
}

/// A committed handover, as the bench saw it.
pub struct Round {
    /// The successor's `status.handover`.
    pub figures: Takeover,
    /// Successor spawned → its status shows the commit (programs loaded, handover, adopt).
    pub serving: Duration,
    /// The successor's adopt after the commit (its log's `adopt_us`).
    pub adopt: Option<Duration>,
    /// `verify` violations right after the commit (`None`: verify failed).
    pub violations: Option<usize>,
    /// Edits of the services file while it ran.
    pub edits: u64,
    /// The successor paused after its pre-copy (`BATON_TEST_PAUSE_AT` took effect).
    pub held: bool,
    /// The old agent's last sync → the successor's first (from their logs).
    pub gap: Option<Duration>,
    /// Median time between the old agent's syncs under the edit stream (set by the caller).
    pub cadence: Option<Duration>,
    /// How long the freeze waited for a sync of the old agent that was in flight (from the
    /// logs: the successor's last `map copied` line, plus the hold, is when it sent `Freeze`).
    pub sync_wait: Option<Duration>,
    /// `verify` violations once the successor applied the last edit.
    pub settled: Option<usize>,
    /// The successor's first sync (its log's `micros`).
    pub first_sync: Option<Duration>,
}

impl Round {
    pub fn adopt_ms(&self) -> f64 {
        self.adopt.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    }

    pub fn first_sync_ms(&self) -> f64 {
        self.first_sync.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    }

    pub fn gap_ms(&self) -> f64 {
        self.gap.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    }

    pub fn cadence_ms(&self) -> f64 {
        self.cadence.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    }
}

impl<'a> Lab<'a> {
    pub fn new(setup: &'a UpgradeSetup, cgroup: &'a Path, bpffs: &'a Path) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("baton-bench-handover")
            .tempdir()?;
        let services = dir.path().join("services.yaml");
        let edits = EditState::new();
        edits.write(&services)?;
        Ok(Self {
            setup,
            cgroup,
            bpffs,
            dir,
            services,
            edits: Some(edits),
            spawned: 0,
        })
    }

    /// Back to the unedited 10 000 × 10 file.
    pub fn reset_services(&mut self) -> Result<()> {
        let edits = EditState::new();
        edits.write(&self.services)?;
        self.edits = Some(edits);
        Ok(())
    }

    pub fn pins(&self, scenario: &str) -> PathBuf {
        self.bpffs.join(format!("handover-{scenario}"))
    }

    pub fn run_dir(&self, scenario: &str) -> PathBuf {
        self.dir.path().join(format!("run-{scenario}"))
    }

    /// `baton-agent run` of `layout` for `scenario` with extra arguments and environment.
    pub fn spawn(
        &mut self,
        layout: u32,
        scenario: &str,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Result<Agent> {
        let bin = &self.setup.bins[if layout == 2 { 1 } else { 0 }];
        let mut cmd = AgentCmd::new(
            bin,
            &self.services,
            self.cgroup,
            &self.pins(scenario),
            &self.run_dir(scenario),
        )
        .env("NO_COLOR", "1");
        for a in args {
            cmd = cmd.arg(*a);
        }
        for (k, v) in env {
            cmd = cmd.env(*k, v);
        }
        self.spawned += 1;
        let log = self.dir.path().join(format!(
            "agent-{:02}-{scenario}-v{layout}.log",
            self.spawned
        ));
        let agent = cmd.spawn(&log)?;
        // The bench pinned itself to one CPU; an agent gets every CPU the bench had, as on a
        // node. Set right after exec, before the agent starts any thread.
        if let Ok(pid) = i32::try_from(agent.pid()) {
            let _ =
                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(pid), &self.setup.cpus);
        }
        Ok(agent)
    }

    /// Starts a successor of `layout` next to `old` and waits for the commit, the old agent's
    /// exit (0) and the successor's first sync.
    pub fn hand_over(
        &mut self,
        old: &Agent,
        layout: u32,
        scenario: &str,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Result<(Agent, Round)> {
        let t0 = Instant::now();
        let new = self.spawn(layout, scenario, args, env)?;
        // The kit polls every 2 ms: fine enough to time the handover.
        let st = new.wait_status("the handover to commit", LONG, |s: &Status| {
            s.handover.is_some()
        })?;
        let figures = st
            .handover
            .context("the successor's status has no handover")?;
        let serving = t0.elapsed();
        let exit = old.wait_exit(Duration::from_secs(30))?;
        if !exit.success() {
            bail!(
                "the old agent (pid {}) exited with {exit} after handing over; log tail:\n{}",
                old.pid(),
                old.log_tail()
            );
        }
        let violations = verify_violations(&self.run_dir(scenario));
        new.wait_status("the first sync after the handover", LONG, |s: &Status| {
            s.last_sync.is_some()
        })?;
        let new_log = log_text(new.log_path());
        let old_log = log_text(old.log_path());
        let gap = match (sync_times(&old_log).last(), sync_times(&new_log).first()) {
            (Some(a), Some(b)) => Some(Duration::from_secs_f64((b - a).rem_euclid(86_400.0))),
            _ => None,
        };
        let old_syncs = sync_times(&old_log);
        let held = new_log.contains("BATON_TEST_PAUSE_AT: pausing");
        let freeze = figures.freeze_us as f64 / 1e6;
        let sync_wait = line_times(&new_log, "map copied").last().and_then(|&t| {
            let t = t + if held { HOLD_MS as f64 / 1e3 } else { 0.0 };
            old_syncs
                .iter()
                .map(|s| s - t)
                .find(|d| (0.0..=freeze).contains(d))
                .map(Duration::from_secs_f64)
        });
        let round = Round {
            sync_wait,
            cadence: None,
            adopt: adopt_time(&new_log),
            figures,
            serving,
            violations,
            edits: 0,
            held,
            gap,
            settled: None,
            first_sync: first_sync_time(&new_log),
        };
        Ok((new, round))
    }

    /// Stops an agent with a full teardown and removes whatever it left pinned.
    pub fn retire(&self, agent: Agent, scenario: &str) -> Result<()> {
        let st = agent.terminate(Duration::from_secs(30));
        baton_agent::datapath::remove_pins(&self.pins(scenario))
            .with_context(|| format!("removing the pins of {scenario}"))?;
        match st {
            Some(s) if s.success() => Ok(()),
            other => bail!(
                "baton-agent (pid {}) ended with {other:?}; log tail:\n{}",
                agent.pid(),
                agent.log_tail()
            ),
        }
    }
}

impl Lab<'_> {
    /// Waits until `agent` has synced once with the whole big state.
    pub fn wait_synced(&self, agent: &Agent) -> Result<Status> {
        Ok(agent.wait_synced(BIG as u64, LONG)?)
    }

    /// Waits for `agent`'s next status answer, whatever it says.
    pub fn status(&self, agent: &Agent) -> Result<Status> {
        Ok(agent.wait_status("status", LONG, |_: &Status| true)?)
    }
}

/// Number of `verify` violations reported by the agent of `run_dir`.
pub fn verify_violations(run_dir: &Path) -> Option<usize> {
    let v = baton_e2e::kit::agent::verify(run_dir).ok()?;
    Some(v.violations.len())
}
