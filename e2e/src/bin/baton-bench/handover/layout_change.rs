//! 4b: layout-changing handovers (1 → 2 → 1 …), quiet, under an edit stream, and held.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use baton_e2e::kit::Agent;

use super::edit::Editor;
use super::lab::{verify_violations, Lab, Round};
use super::logs::{cadence, log_text, time_of_day};
use super::{EDIT_INTERVAL, EDIT_SERVICES, FAST_POLL, HOLD_MS, LONG};
use crate::args::Args;
use crate::common::{BIG, EPS_PER_SVC};
use crate::report::{list, median_max, mm, violations_text};

/// Runs 4b and appends its table to `out`; returns the rounds under the edit stream.
pub fn run(opts: &Args, lab: &mut Lab<'_>, out: &mut String) -> Result<Vec<Round>> {
    let n = if opts.quick { 1 } else { 3 };
    let sc = "layout";
    let args = ["--poll-ms", FAST_POLL];
    let mut cur = lab.spawn(1, sc, &args, &[])?;
    lab.wait_synced(&cur)?;
    let mut layout = 1u32;
    // (writes, from, to) → rounds
    let mut table: Vec<((Writes, u32, u32), Vec<Round>)> = Vec::new();
    let held = if opts.quick { 1 } else { 2 };
    for (writes, reps) in [
        (Writes::Quiet, n),
        (Writes::Stream, n),
        (Writes::Held, held),
    ] {
        for _ in 0..reps {
            for _ in 0..2 {
                let to = 3 - layout;
                eprintln!(
                    "handover: layout {layout} -> layout {to}, writes: {}",
                    writes.label()
                );
                let since = time_of_day(std::time::SystemTime::now());
                let editor = match writes {
                    Writes::Quiet => None,
                    _ => {
                        let state = lab.edits.take().context("edit state in use")?;
                        let e = Editor::start(state, lab.services.clone())?;
                        // Let the old agent get into the stream before the successor starts.
                        std::thread::sleep(Duration::from_millis(300));
                        Some(e)
                    }
                };
                let env: Vec<(&str, String)> = match writes {
                    Writes::Held => vec![(
                        "BATON_TEST_PAUSE_AT",
                        format!("new:after_precopy={HOLD_MS}"),
                    )],
                    _ => Vec::new(),
                };
                let (next, mut round) = lab.hand_over(&cur, to, sc, &args, &env)?;
                if let Some(e) = editor {
                    let (state, edits) = e.stop()?;
                    lab.edits = Some(state);
                    round.edits = edits;
                    round.cadence = cadence(&log_text(cur.log_path()), since);
                    wait_settled(lab, &next)?;
                    round.settled = verify_violations(&lab.run_dir(sc));
                }
                eprintln!(
                    "  pre-copy {:.1} ms ({} entries), freeze {:.3} ms, journal {} keys, handover {:.1} ms, adopt {:.1} ms, first sync {:.0} ms, gap {:.0} ms",
                    round.figures.precopy_us as f64 / 1e3,
                    round.figures.maps.entries_copied,
                    round.figures.freeze_us as f64 / 1e3,
                    round.figures.journal_keys,
                    round.figures.handover_us as f64 / 1e3,
                    round.adopt_ms(),
                    round.first_sync_ms(),
                    round.gap_ms()
                );
                cur = next;
                let key = (writes, layout, to);
                layout = to;
                match table.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, v)) => v.push(round),
                    None => table.push((key, vec![round])),
                }
            }
        }
    }
    lab.retire(cur, sc)?;

    let _ = writeln!(
        out,
        "\n#### 4b. Layout-changing handovers (endpoint and backend maps migrated, {} entries each)\n",
        BIG * EPS_PER_SVC
    );
    let _ = writeln!(
        out,
        "| handover | writes during it | rounds | pre-copy ms (median / max) | entries copied | pre-copy entries/s (median) | **freeze_us** ms (median / max; per round, with the wait for a sync in flight) | journal keys per round | handover_us ms (median / max) | adopt ms (median / max) | control-plane gap ms (median / max) | maps reused / migrated | verify after commit / after last edit |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---|"
    );
    for ((writes, from, to), rs) in &table {
        let col = |f: &dyn Fn(&Round) -> f64| rs.iter().map(f).collect::<Vec<_>>();
        let rate = median_max(&col(&|r| {
            r.figures.maps.entries_copied as f64 / (r.figures.precopy_us as f64 / 1e6)
        }))
        .0;
        // A held round's handover_us includes the hold.
        let hold = |r: &Round| if r.held { HOLD_MS as f64 } else { 0.0 };
        let copied = list(
            &rs.iter()
                .map(|r| r.figures.maps.entries_copied)
                .collect::<Vec<_>>(),
        );
        let keys = list(
            &rs.iter()
                .map(|r| r.figures.journal_keys)
                .collect::<Vec<_>>(),
        );
        let gap = if *writes == Writes::Quiet {
            "–".to_string()
        } else {
            format!(
                "{} (syncs every {:.0} before)",
                mm(
                    &col(&|r| r.gap.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)),
                    0,
                ),
                median_max(&col(&|r| r
                    .cadence
                    .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)))
                .0
            )
        };
        let freeze = format!(
            "{}; {}",
            mm(&col(&|r| r.figures.freeze_us as f64 / 1e3), 3),
            list(
                &rs.iter()
                    .map(|r| match r.sync_wait {
                        Some(w) => format!(
                            "{:.2} ({:.2} sync)",
                            r.figures.freeze_us as f64 / 1e3,
                            w.as_secs_f64() * 1e3
                        ),
                        None => format!("{:.2}", r.figures.freeze_us as f64 / 1e3),
                    })
                    .collect::<Vec<_>>()
            )
        );
        let settled = if *writes == Writes::Quiet {
            "–".to_string()
        } else {
            violations_text(&rs.iter().map(|r| r.settled).collect::<Vec<_>>())
        };
        let _ = writeln!(
            out,
            "| layout {from} → {to} | {} | {} | {} | {copied} | {:.2} M/s | {} | {keys} | {}{} | {} | {gap} | {} / {} | {} / {settled} |",
            writes.label(),
            rs.len(),
            mm(&col(&|r| r.figures.precopy_us as f64 / 1e3), 1),
            rate / 1e6,
            freeze,
            mm(&col(&|r| r.figures.handover_us as f64 / 1e3 - hold(r)), 1),
            if rs.iter().any(|r| r.held) {
                " (hold subtracted)"
            } else {
                ""
            },
            mm(&col(&Round::adopt_ms), 0),
            list(&rs.iter().map(|r| r.figures.maps.reused).collect::<Vec<_>>()),
            list(&rs.iter().map(|r| r.figures.maps.migrated).collect::<Vec<_>>()),
            violations_text(&rs.iter().map(|r| r.violations).collect::<Vec<_>>()),
        );
    }
    let edits: u64 = table
        .iter()
        .flat_map(|(_, rs)| rs.iter().map(|r| r.edits))
        .sum();
    let _ = writeln!(
        out,
        "\nEntries copied = pre-copy + journal replay. Control-plane gap = the old agent's last \
         sync → the successor's first sync (log timestamps), i.e. how long the edit stream went \
         unapplied around the handover; \"syncs every … before\" is the old agent's median sync \
         interval under the same edit stream before the handover (one parse of the 10 000-service \
         file per sync). \"sync\" in the freeze column: \
         the freeze waited that long for a sync of the old agent that was in flight when `Freeze` \
         arrived (its `synced` log line falls inside the freeze). \
         Edit rounds made {edits} edits of the services file in total; agents poll it every \
         {FAST_POLL} ms."
    );
    Ok(table
        .into_iter()
        .filter(|((w, _, _), _)| *w != Writes::Quiet)
        .flat_map(|(_, rs)| rs)
        .collect())
}

/// How the services file is treated during a layout-changing handover.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Writes {
    /// Not edited.
    Quiet,
    /// Edited every `EDIT_INTERVAL` while the handover runs.
    Stream,
    /// Edited, and the successor waits `HOLD_MS` after its pre-copy so that the old agent's
    /// writes land in the journal tail.
    Held,
}

impl Writes {
    fn label(self) -> String {
        match self {
            Writes::Quiet => "none".into(),
            Writes::Stream => format!(
                "edit stream ({EDIT_SERVICES} services every {} ms)",
                EDIT_INTERVAL.as_millis()
            ),
            Writes::Held => format!("edit stream, successor held {HOLD_MS} ms after pre-copy"),
        }
    }
}

/// Waits until the agent stopped syncing (it applied the last edit): `syncs` unchanged for 1 s.
pub fn wait_settled(lab: &Lab<'_>, agent: &Agent) -> Result<()> {
    let deadline = Instant::now() + LONG;
    let mut last = None;
    let mut since = Instant::now();
    while Instant::now() < deadline {
        let syncs = Some(lab.status(agent)?.syncs);
        if syncs != last {
            last = syncs;
            since = Instant::now();
        } else if since.elapsed() >= Duration::from_secs(1) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the agent kept syncing for {LONG:?} after the edit stream stopped")
}
