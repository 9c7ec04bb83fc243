//! Shared reporting: the latency percentile table with its "p50 vs direct" ratio column, and
//! the median / max and list formatting of the handover tables.

use std::fmt::Write as _;

/// One latency path's percentiles (µs) over `n` samples.
pub struct Row {
    pub name: String,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub n: usize,
}

/// Quantile `q` (nearest rank) of sorted nanosecond samples, in µs.
pub fn q(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

/// A latency table; "p50 vs direct" is each p50 relative to `base` (default: the first row's).
pub fn table(out: &mut String, title: &str, rows: &[Row], base: Option<f64>) {
    let _ = writeln!(out, "\n#### {title}\n");
    let _ = writeln!(
        out,
        "| path | samples | p50 µs | p90 µs | p99 µs | p50 vs direct |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    let base = base.or_else(|| rows.first().map(|r| r.p50)).unwrap_or(0.0);
    for r in rows {
        let ratio = if base > 0.0 {
            (r.p50 / base - 1.0) * 100.0
        } else {
            0.0
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:+.1}% |",
            r.name, r.n, r.p50, r.p90, r.p99, ratio
        );
    }
}

/// Median and maximum (NaN for none).
pub fn median_max(v: &[f64]) -> (f64, f64) {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if s.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    s.sort_by(f64::total_cmp);
    let m = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    (m, s[s.len() - 1])
}

/// "median / max" with `digits` decimals.
pub fn mm(v: &[f64], digits: usize) -> String {
    let (m, x) = median_max(v);
    format!("{m:.digits$} / {x:.digits$}")
}

/// The items, comma-separated.
pub fn list<T: std::fmt::Display>(v: &[T]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// "0" when every `verify` found no violation, else the count per round ("error": `verify` failed).
pub fn violations_text(v: &[Option<usize>]) -> String {
    if v.iter().all(|x| *x == Some(0)) {
        "0".into()
    } else {
        list(
            &v.iter()
                .map(|x| x.map_or("error".to_string(), |n| n.to_string()))
                .collect::<Vec<_>>(),
        )
    }
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Quantile `q` (nearest rank) of the values that are not NaN (NaN for none).
pub fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}
