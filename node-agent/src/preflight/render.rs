//! The human summary of a report (`baton-agent preflight` without `--json`).

use std::fmt::Write;

use baton_api::preflight::{MapAction, MapPlan, Outcome, Report};

/// The summary, several lines, ending with the verdict.
pub fn human(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "baton-agent {} preflight: map layout {}, handover protocol {}, kernel {}",
        r.build.version, r.build.layout_version, r.build.handover_protocol, r.node.kernel
    );
    let _ = writeln!(
        s,
        "  --bpffs {}  --run-dir {}  --cgroup {}",
        r.node.bpffs,
        r.node.run_dir,
        if r.node.cgroup.is_empty() {
            "(none)"
        } else {
            &r.node.cgroup
        }
    );
    let _ = writeln!(s);
    line(
        &mut s,
        r.environment.outcome,
        "environment",
        &r.environment.summary,
    );
    line(&mut s, r.programs.outcome, "programs", &r.programs.summary);
    for p in &r.programs.programs {
        if let Some(log) = &p.verifier_log {
            let _ = writeln!(s, "      {} verifier log (last lines):", p.name);
            for l in log.lines() {
                let _ = writeln!(s, "        | {l}");
            }
        }
    }
    line(&mut s, r.maps.outcome, "maps", &r.maps.summary);
    if r.maps.pins_found {
        for m in &r.maps.maps {
            map_line(&mut s, m);
        }
    }
    line(&mut s, r.links.outcome, "links", &r.links.summary);
    line(&mut s, r.handover.outcome, "handover", &r.handover.summary);
    let _ = writeln!(s);
    if r.maps.migrated > 0 {
        let _ = writeln!(s, "copy estimate: {}.", r.maps.estimate_method);
        let _ = writeln!(s);
    }
    if r.passed {
        let _ = writeln!(
            s,
            "READY: this build can take over on this node (checked in {} ms; nothing was changed)",
            r.duration_us.div_ceil(1000)
        );
    } else {
        let _ = writeln!(
            s,
            "NOT READY: {} check{} failed (nothing was changed):",
            r.failures.len(),
            if r.failures.len() == 1 { "" } else { "s" }
        );
        for f in &r.failures {
            let _ = writeln!(s, "  {f}");
        }
    }
    s
}

fn line(s: &mut String, o: Outcome, name: &str, summary: &str) {
    let tag = match o {
        Outcome::Pass => "pass",
        Outcome::Fail => "FAIL",
    };
    let _ = writeln!(s, "{tag:<5} {name:<12} {summary}");
}

fn map_line(s: &mut String, m: &MapPlan) {
    let action = match m.action {
        MapAction::Create => "create",
        MapAction::Reuse => "reuse",
        MapAction::Migrate => "migrate",
        MapAction::RecreateEmpty => "recreate-empty",
        MapAction::Refused => "REFUSED",
    };
    let mut detail = match m.entries {
        Some(1) => "1 entry".into(),
        Some(n) => format!("{n} entries"),
        None => String::new(),
    };
    if m.action == MapAction::Migrate {
        let _ = write!(
            detail,
            ", {} to copy, about {:.1} ms",
            m.entries_to_copy,
            m.estimated_copy_us as f64 / 1000.0
        );
        if let Some(sm) = &m.sample {
            let _ = write!(
                detail,
                " (sample: {} entries in {} µs{})",
                sm.entries,
                sm.micros,
                if sm.batch {
                    ", batched"
                } else {
                    ", per element"
                }
            );
        }
    }
    let row = format!("      {:<9} {action:<15} {detail}", m.name);
    let _ = writeln!(s, "{}", row.trim_end());
    if !m.changes.is_empty() {
        let _ = writeln!(s, "      {:<9} {:<15} {}", "", "", m.changes.join("; "));
    }
    if let Some(e) = &m.error {
        let _ = writeln!(s, "      {:<9} {:<15} {e}", "", "");
    }
}
