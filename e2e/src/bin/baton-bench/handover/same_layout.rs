//! 4a: handovers layout 1 → layout 1 in a row, no writes.

use std::fmt::Write as _;

use anyhow::Result;

use super::lab::{Lab, Round};
use super::POLL;
use crate::args::Args;
use crate::report::{list, median_max, violations_text};

/// Runs 4a and appends its table to `out`.
pub fn run(opts: &Args, lab: &mut Lab<'_>, out: &mut String) -> Result<()> {
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
        "adopt after the commit (successor re-reads the maps; no agent writes meanwhile)",
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
    Ok(())
}
