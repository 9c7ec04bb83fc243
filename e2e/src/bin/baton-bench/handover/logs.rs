//! Figures read from the agents' logs (sync times, `adopt_us`).

use std::path::Path;
use std::time::Duration;

use crate::report::median_max;

/// An agent's log without terminal colours.
pub fn log_text(path: &Path) -> String {
    let raw = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// UTC time of day in seconds, as the agents' log timestamps have it.
pub fn time_of_day(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() % 86_400.0)
}

/// Median interval between the agent's syncs after `since` (time of day, s).
pub fn cadence(log: &str, since: f64) -> Option<Duration> {
    let times: Vec<f64> = sync_times(log)
        .into_iter()
        .filter(|t| (t - since).rem_euclid(86_400.0) < 43_200.0)
        .collect();
    let diffs: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    match median_max(&diffs).0 {
        s if s.is_nan() => None,
        s => Some(Duration::from_secs_f64(s.max(0.0))),
    }
}

/// Times of day (s) of the agent's `synced` log lines.
pub fn sync_times(log: &str) -> Vec<f64> {
    line_times(log, " synced ")
}

/// Times of day (s) of the log lines containing `what`.
pub fn line_times(log: &str, what: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| {
            // 2026-11-21T07:26:53.422283Z  INFO ...
            let t = l.split_whitespace().next()?;
            let hms = t.split_once('T')?.1.trim_end_matches('Z');
            let mut it = hms.split(':');
            let (h, m, s) = (it.next()?, it.next()?, it.next()?);
            Some(
                h.parse::<f64>().ok()? * 3600.0
                    + m.parse::<f64>().ok()? * 60.0
                    + s.parse::<f64>().ok()?,
            )
        })
        .collect()
}

/// The `adopt_us` the successor logs once it owns the datapath.
pub fn adopt_time(text: &str) -> Option<Duration> {
    field_us(text, "handover committed", "adopt_us=")
}

/// How long the agent's first sync took (its `micros`).
pub fn first_sync_time(text: &str) -> Option<Duration> {
    field_us(text, " synced ", "micros=")
}

/// The microseconds in `field` of the first line containing `what`.
fn field_us(text: &str, what: &str, field: &str) -> Option<Duration> {
    let line = text.lines().find(|l| l.contains(what))?;
    let rest = &line[line.find(field)? + field.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().map(Duration::from_micros)
}
