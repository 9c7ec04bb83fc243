//! 4a: handovers layout 1 → layout 1 in a row, no writes, then under the edit stream.

use std::fmt::Write as _;

use anyhow::{Context, Result};

use super::edit::Editor;
use super::lab::{verify_violations, Lab, Round};
use super::layout_change::wait_settled;
use super::logs::{cadence, log_text, time_of_day};
use super::{EDIT_INTERVAL, EDIT_SERVICES};
use super::{FAST_POLL, POLL};
use crate::args::Args;
use crate::report::{list, median_max, mm, violations_text};

/// Runs 4a and appends its table to `out`; returns the rounds under the edit stream.
pub fn run(opts: &Args, lab: &mut Lab<'_>, out: &mut String) -> Result<Vec<Round>> {
    let n = if opts.quick { 3 } else { 7 };
    let sc = "same";
    eprintln!("handover: {n} handovers layout 1 -> layout 1, no writes");
    let mut cur = lab.spawn(1, sc, &["--poll-ms", POLL], &[])?;
    lab.wait_synced(&cur)?;
    let mut rounds = Vec::new();
    for r in 0..n {
        let (next, round) = lab.hand_over(&cur, 1, sc, &["--poll-ms", POLL], &[])?;
        eprintln!(
            "  {r}: handover {:.2} ms, freeze {:.3} ms, adopt {:.0} ms",
            round.figures.handover_us as f64 / 1e3,
            round.figures.freeze_us as f64 / 1e3,
            round.adopt_ms()
        );
        cur = next;
        rounds.push(round);
    }
    // Under the edit stream: agents polling fast, as in 4b; one handover to get there.
    let fast = ["--poll-ms", FAST_POLL];
    let (next, _) = lab.hand_over(&cur, 1, sc, &fast, &[])?;
    cur = next;
    // Its first sync compares every adopted service: let it pass before the stream starts.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let m = if opts.quick { 3 } else { 10 };
    eprintln!("handover: {m} handovers layout 1 -> layout 1 under the edit stream");
    let mut streamed = Vec::new();
    for r in 0..m {
        let since = time_of_day(std::time::SystemTime::now());
        let state = lab.edits.take().context("edit state in use")?;
        let editor = Editor::start(state, lab.services.clone())?;
        // Let the old agent get into the stream before the successor starts.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let (next, mut round) = lab.hand_over(&cur, 1, sc, &fast, &[])?;
        let (state, edits) = editor.stop()?;
        lab.edits = Some(state);
        round.edits = edits;
        round.cadence = cadence(&log_text(cur.log_path()), since);
        wait_settled(lab, &next)?;
        round.settled = verify_violations(&lab.run_dir(sc));
        eprintln!(
            "  {r}: handover {:.2} ms, freeze {:.3} ms, journal {} keys, adopt {:.1} ms, first sync {:.0} ms, gap {:.0} ms (syncs every {:.0} ms before)",
            round.figures.handover_us as f64 / 1e3,
            round.figures.freeze_us as f64 / 1e3,
            round.figures.journal_keys,
            round.adopt_ms(),
            round.first_sync_ms(),
            round.gap_ms(),
            round.cadence_ms(),
        );
        cur = next;
        streamed.push(round);
    }
    lab.retire(cur, sc)?;

    let col = |f: &dyn Fn(&Round) -> f64| rounds.iter().map(f).collect::<Vec<_>>();
    let _ = writeln!(
        out,
        "\n#### 4a. Same layout (layout 1 → layout 1), {n} handovers in a row, no writes\n"
    );
    let _ = writeln!(out, "| figure | median | max |\n|---|---:|---:|");
    let row = |out: &mut String, name: &str, v: Vec<f64>, unit: &str, d: usize| {
        let (m, x) = median_max(&v);
        let _ = writeln!(out, "| {name} | {m:.d$} {unit} | {x:.d$} {unit} |");
    };
    row(
        out,
        "**handover_us**: successor ready (`Prepare`) → `Committed`",
        col(&|r| r.figures.handover_us as f64 / 1e3),
        "ms",
        2,
    );
    row(
        out,
        "**freeze_us**: old agent's control plane frozen → links swapped",
        col(&|r| r.figures.freeze_us as f64 / 1e3),
        "ms",
        3,
    );
    row(
        out,
        "successor spawn → serving (program load + handover + adopt)",
        col(&|r| r.serving.as_secs_f64() * 1e3),
        "ms",
        0,
    );
    row(
        out,
        "adopt after the commit (view from the pre-copy read + journal keys; no agent writes meanwhile)",
        col(&Round::adopt_ms),
        "ms",
        0,
    );
    let reused = list(
        &rounds
            .iter()
            .map(|r| r.figures.maps.reused)
            .collect::<Vec<_>>(),
    );
    let migrated = list(
        &rounds
            .iter()
            .map(|r| r.figures.maps.migrated)
            .collect::<Vec<_>>(),
    );
    let _ = writeln!(
        out,
        "\nMaps reused per round: {reused}; migrated: {migrated}. The old agent exited 0 every \
         time; `verify` violations right after each commit: {}.",
        violations_text(&rounds.iter().map(|r| r.violations).collect::<Vec<_>>())
    );
    let scol = |f: &dyn Fn(&Round) -> f64| streamed.iter().map(f).collect::<Vec<_>>();
    let _ =
        writeln!(
        out,
        "\nUnder the edit stream (as in 4b: {EDIT_SERVICES} services every {} ms, agents polling \
         every {FAST_POLL} ms), {m} more handovers layout 1 → layout 1: handover_us {} ms, \
         freeze_us {} ms, journal keys {}, adopt {} ms, control-plane gap {} ms (median / max; \
         the old agent synced every {:.0} ms before, median); `verify` after each commit: {}, \
         after the last edit: {}.",
        EDIT_INTERVAL.as_millis(),
        mm(&scol(&|r| r.figures.handover_us as f64 / 1e3), 2),
        mm(&scol(&|r| r.figures.freeze_us as f64 / 1e3), 3),
        list(&streamed.iter().map(|r| r.figures.journal_keys).collect::<Vec<_>>()),
        mm(&scol(&Round::adopt_ms), 1),
        mm(&scol(&Round::gap_ms), 0),
        median_max(&scol(&Round::cadence_ms)).0,
        violations_text(&streamed.iter().map(|r| r.violations).collect::<Vec<_>>()),
        violations_text(&streamed.iter().map(|r| r.settled).collect::<Vec<_>>()),
    );
    Ok(streamed)
}
