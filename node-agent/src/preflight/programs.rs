//! The build's programs through this kernel's verifier: the object opened
//! without pins (its maps created unpinned), each program loaded with
//! `BPF_PROG_LOAD` exactly as a takeover loads it, never attached; all of
//! it released when the check returns.

use std::collections::BTreeMap;
use std::time::Instant;

use aya::programs::ProgramError;
use baton_api::preflight::{Outcome, ProgramCheck, ProgramsCheck};

use super::{micros, outcome};
use crate::datapath::load::{self, LoadError};
use crate::sys::AttachType;

/// Lines of a rejected program's verifier log kept in the report.
pub const LOG_TAIL_LINES: usize = 12;

/// Loads every program of the build (with `--map-max-entries` overrides,
/// which size the maps the programs are verified against).
pub fn check(max_entries: &BTreeMap<String, u32>) -> ProgramsCheck {
    let mut ebpf = match load::open_object(None, max_entries) {
        Ok(e) => e,
        Err(e) => {
            return ProgramsCheck {
                outcome: Outcome::Fail,
                summary: e.to_string(),
                programs: Vec::new(),
                object_error: Some(e.to_string()),
            }
        }
    };
    let mut programs = Vec::new();
    for (name, attach) in load::PROGRAMS {
        let t0 = Instant::now();
        programs.push(match load::load_program(&mut ebpf, name, attach) {
            Ok(p) => ProgramCheck {
                name: name.into(),
                attach: attach_name(attach).into(),
                loaded: true,
                verified_insns: p.verified_insns,
                xlated_bytes: p.xlated_bytes,
                load_us: micros(p.took),
                error: None,
                verifier_log: None,
            },
            Err(e) => ProgramCheck {
                name: name.into(),
                attach: attach_name(attach).into(),
                loaded: false,
                verified_insns: None,
                xlated_bytes: None,
                load_us: micros(t0.elapsed()),
                error: Some(reason(&e)),
                verifier_log: e.verifier_log().map(|l| tail(&l, LOG_TAIL_LINES)),
            },
        });
    }
    // Programs and the maps made for them go away here.
    drop(ebpf);
    let failed: Vec<String> = programs
        .iter()
        .filter_map(|p| p.error.as_ref().map(|e| format!("{}: {e}", p.name)))
        .collect();
    let summary = if failed.is_empty() {
        let each: Vec<String> = programs
            .iter()
            .map(|p| match p.verified_insns {
                Some(n) => format!("{} ({n} insns verified)", p.name),
                None => p.name.clone(),
            })
            .collect();
        format!("the kernel's verifier accepts {}", each.join(", "))
    } else {
        failed.join("; ")
    };
    ProgramsCheck {
        outcome: outcome(failed.is_empty()),
        summary,
        programs,
        object_error: None,
    }
}

/// `connect4` / `connect6`.
pub fn attach_name(a: AttachType) -> &'static str {
    match a {
        AttachType::Connect4 => "connect4",
        AttachType::Connect6 => "connect6",
    }
}

/// One line saying why a program did not load: for a verifier rejection
/// the errno and the log's own reason (its last line that is not a
/// statistic).
fn reason(e: &LoadError) -> String {
    if let LoadError::Program { source, .. } = e {
        if let ProgramError::LoadError {
            io_error,
            verifier_log,
        } = source.as_ref()
        {
            let log = verifier_log.to_string();
            return match verifier_reason(&log) {
                Some(r) => {
                    format!("the kernel verifier rejected it (BPF_PROG_LOAD: {io_error}): {r}")
                }
                None => format!(
                    "the kernel refused to load it (BPF_PROG_LOAD: {io_error}; no verifier log)"
                ),
            };
        }
    }
    e.to_string()
}

/// The verifier's reason: the last line of its log that is not one of the
/// statistics it prints at the end.
pub fn verifier_reason(log: &str) -> Option<&str> {
    const STATS: [&str; 3] = ["processed ", "verification time", "stack depth"];
    log.lines()
        .map(str::trim)
        .rev()
        .find(|l| !l.is_empty() && !STATS.iter().any(|s| l.starts_with(s)))
}

/// The last `n` lines of `log`.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_is_the_last_line_before_the_statistics() {
        let log = "0: R1=ctx() R10=fp0\n0: (61) r0 = *(u32 *)(r2 +0)\nR2 !read_ok\n\
                   processed 1 insns (limit 1000000) max_states_per_insn 0 total_states 0\n\
                   verification time 12 usec\nstack depth 0\n";
        assert_eq!(verifier_reason(log), Some("R2 !read_ok"));
        assert_eq!(verifier_reason("processed 1 insns\n"), None);
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
