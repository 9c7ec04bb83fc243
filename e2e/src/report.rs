//! The JSON report printed by `baton-probe run` (and built by in-process callers).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::histogram::{LatencyHistogram, LatencySummary};

/// Schema tag written into every report.
pub const SCHEMA: &str = "baton-probe/v1";

/// Why a connection attempt failed, as counted in reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// ECONNREFUSED: nothing listens at the (possibly rewritten) address.
    Refused,
    /// Connect or identity read did not finish in time.
    Timeout,
    /// EPERM: the cgroup connect hook rejected the connect.
    Eperm,
    /// ENETUNREACH / EHOSTUNREACH: no route (e.g. a VIP that was not rewritten, inside the netns).
    Unreachable,
    /// ECONNRESET / EPIPE / EOF before the identity line: the connection was dropped.
    Reset,
    /// Anything else.
    Other,
}

/// Failure counters per kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    /// See [`FailureKind::Refused`].
    pub refused: u64,
    /// See [`FailureKind::Timeout`].
    pub timeout: u64,
    /// See [`FailureKind::Eperm`].
    pub eperm: u64,
    /// See [`FailureKind::Unreachable`].
    pub unreachable: u64,
    /// See [`FailureKind::Reset`].
    pub reset: u64,
    /// See [`FailureKind::Other`].
    pub other: u64,
}

impl ErrorCounts {
    /// Counts one failure of `kind`.
    pub fn add(&mut self, kind: FailureKind) {
        *self.slot(kind) += 1;
    }

    /// Number of failures of `kind`.
    pub fn get(&self, kind: FailureKind) -> u64 {
        match kind {
            FailureKind::Refused => self.refused,
            FailureKind::Timeout => self.timeout,
            FailureKind::Eperm => self.eperm,
            FailureKind::Unreachable => self.unreachable,
            FailureKind::Reset => self.reset,
            FailureKind::Other => self.other,
        }
    }

    /// Sum over all kinds.
    pub fn total(&self) -> u64 {
        self.refused + self.timeout + self.eperm + self.unreachable + self.reset + self.other
    }

    /// Adds all counters of `other`.
    pub fn merge(&mut self, other: &ErrorCounts) {
        self.refused += other.refused;
        self.timeout += other.timeout;
        self.eperm += other.eperm;
        self.unreachable += other.unreachable;
        self.reset += other.reset;
        self.other += other.other;
    }

    fn slot(&mut self, kind: FailureKind) -> &mut u64 {
        match kind {
            FailureKind::Refused => &mut self.refused,
            FailureKind::Timeout => &mut self.timeout,
            FailureKind::Eperm => &mut self.eperm,
            FailureKind::Unreachable => &mut self.unreachable,
            FailureKind::Reset => &mut self.reset,
            FailureKind::Other => &mut self.other,
        }
    }
}

/// Live (mergeable) counters for one target, turned into a [`TargetReport`] at the end.
#[derive(Clone, Debug, Default)]
pub struct TargetStats {
    /// Connect attempts.
    pub attempted: u64,
    /// Attempts that connected and read an identity line.
    pub ok: u64,
    /// Failure counters.
    pub errors: ErrorCounts,
    /// Backend identity → number of answers.
    pub identities: BTreeMap<String, u64>,
    /// connect()+first line latency of successful attempts.
    pub latency: LatencyHistogram,
    /// First error message seen (for diagnosis).
    pub first_error: Option<String>,
}

impl TargetStats {
    /// Records a successful attempt.
    pub fn record_ok(&mut self, identity: &str, latency_ns: u64) {
        self.attempted += 1;
        self.ok += 1;
        match self.identities.get_mut(identity) {
            Some(n) => *n += 1,
            None => {
                self.identities.insert(identity.to_owned(), 1);
            }
        }
        self.latency.record(latency_ns);
    }

    /// Records a failed attempt.
    pub fn record_err(&mut self, kind: FailureKind, message: impl FnOnce() -> String) {
        self.attempted += 1;
        self.errors.add(kind);
        if self.first_error.is_none() {
            self.first_error = Some(message());
        }
    }

    /// Adds everything recorded in `other`.
    pub fn merge(&mut self, other: &TargetStats) {
        self.attempted += other.attempted;
        self.ok += other.ok;
        self.errors.merge(&other.errors);
        for (id, n) in &other.identities {
            *self.identities.entry(id.clone()).or_insert(0) += n;
        }
        self.latency.merge(&other.latency);
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }

    /// Final report for `target` (use any label for totals).
    pub fn to_report(&self, target: String) -> TargetReport {
        TargetReport {
            target,
            attempted: self.attempted,
            ok: self.ok,
            failed: self.errors.total(),
            errors: self.errors,
            identities: self.identities.clone(),
            latency: self.latency.summary(),
            first_error: self.first_error.clone(),
        }
    }
}

/// Results for one target (or the totals over all targets).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetReport {
    /// The address connected to (VIP:port), `"*"` for totals.
    pub target: String,
    /// Connect attempts.
    pub attempted: u64,
    /// Attempts that connected and read an identity line.
    pub ok: u64,
    /// Failed attempts (= sum of `errors`).
    pub failed: u64,
    /// Failures by kind.
    pub errors: ErrorCounts,
    /// Backend identity (`addr:port`, IPv6 in brackets) → number of answers.
    pub identities: BTreeMap<String, u64>,
    /// connect()+identity-line latency of successful attempts.
    pub latency: LatencySummary,
    /// First error message seen, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// A held connection that did not survive until the end of the run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadConnection {
    /// Target it was opened to.
    pub target: String,
    /// Backend identity it reported when opened.
    pub identity: String,
    /// Failure kind of the final echo check.
    pub kind: FailureKind,
    /// Error message of the final echo check.
    pub error: String,
}

/// Long-lived ("held") connections: opened at start, echo-checked at the end.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldReport {
    /// Connections requested (`--hold`).
    pub requested: u64,
    /// Connections that opened successfully.
    pub held: u64,
    /// Connections that failed to open (= sum of `open_errors`).
    pub open_failed: u64,
    /// Connections that failed to open, by kind.
    pub open_errors: ErrorCounts,
    /// Held connections that still echoed at the end.
    pub alive: u64,
    /// Held connections that did not (details in `dead`).
    pub dead_count: u64,
    /// Details of dead connections.
    pub dead: Vec<DeadConnection>,
    /// Backend identity → number of held connections to it.
    pub identities: BTreeMap<String, u64>,
}

/// Which load plan was run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PlanReport {
    /// A fixed number of connects.
    Connects {
        /// Requested connects.
        connects: u64,
    },
    /// Connects for a duration.
    Duration {
        /// Requested duration in milliseconds.
        duration_ms: u64,
    },
}

/// The whole report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// Whether the probe ran in its own network namespace.
    pub netns: bool,
    /// cgroup directory the probe joined, if any.
    pub cgroup: Option<String>,
    /// Backend listen addresses.
    pub backends: Vec<String>,
    /// The load plan.
    pub plan: PlanReport,
    /// Target rate in connects/s (`None` = as fast as possible).
    pub rate: Option<f64>,
    /// Worker threads.
    pub concurrency: usize,
    /// Milliseconds spent in the load phase.
    pub elapsed_ms: u64,
    /// Achieved connects/s over the load phase.
    pub achieved_rate: f64,
    /// True when the run ended early because the stop file appeared.
    pub stopped_early: bool,
    /// Totals over all targets (`target` = `"*"`).
    pub totals: TargetReport,
    /// Per target, in the order given.
    pub targets: Vec<TargetReport>,
    /// Held connections (`None` when `--hold 0`).
    pub hold: Option<HoldReport>,
}

impl Report {
    /// Per-target report for `target`, if it was probed.
    pub fn target(&self, target: &str) -> Option<&TargetReport> {
        self.targets.iter().find(|t| t.target == target)
    }
}

/// Totals over per-target stats.
pub fn totals(stats: &[TargetStats]) -> TargetStats {
    let mut all = TargetStats::default();
    for s in stats {
        all.merge(s);
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregation_merges_counts_identities_and_latency() {
        let mut a = TargetStats::default();
        a.record_ok("127.0.0.10:8080", 1_000);
        a.record_ok("127.0.0.11:8080", 3_000);
        a.record_err(FailureKind::Refused, || "refused".into());
        let mut b = TargetStats::default();
        b.record_ok("127.0.0.10:8080", 2_000);
        b.record_err(FailureKind::Timeout, || "slow".into());
        b.record_err(FailureKind::Timeout, || "slow again".into());

        let t = totals(&[a.clone(), b]);
        let r = t.to_report("*".into());
        assert_eq!((r.attempted, r.ok, r.failed), (6, 3, 3));
        assert_eq!(r.errors.refused, 1);
        assert_eq!(r.errors.timeout, 2);
        assert_eq!(r.errors.get(FailureKind::Timeout), 2);
        assert_eq!(r.identities["127.0.0.10:8080"], 2);
        assert_eq!(r.identities["127.0.0.11:8080"], 1);
        assert_eq!(r.latency.count, 3);
        assert_eq!(r.latency.min_ns, 1_000);
        assert_eq!(r.latency.max_ns, 3_000);
        assert_eq!(r.latency.mean_ns, 2_000);
        assert_eq!(r.first_error.as_deref(), Some("refused"));
        assert_eq!(r.attempted, r.ok + r.failed);

        let ra = a.to_report("127.0.0.10:8080".into());
        assert_eq!((ra.attempted, ra.ok, ra.failed), (3, 2, 1));
    }

    #[test]
    fn error_counts_cover_every_kind() {
        let kinds = [
            FailureKind::Refused,
            FailureKind::Timeout,
            FailureKind::Eperm,
            FailureKind::Unreachable,
            FailureKind::Reset,
            FailureKind::Other,
        ];
        let mut c = ErrorCounts::default();
        for (i, k) in kinds.iter().enumerate() {
            for _ in 0..=i {
                c.add(*k);
            }
        }
        for (i, k) in kinds.iter().enumerate() {
            assert_eq!(c.get(*k), i as u64 + 1);
        }
        assert_eq!(c.total(), 21);
    }

    #[test]
    fn report_json_roundtrip_and_field_names() {
        let mut s = TargetStats::default();
        s.record_ok("[::1]:9001", 500);
        let t = s.to_report("[::1]:9001".into());
        let report = Report {
            schema: SCHEMA.into(),
            netns: true,
            cgroup: None,
            backends: vec!["[::1]:9001".into()],
            plan: PlanReport::Connects { connects: 1 },
            rate: None,
            concurrency: 1,
            elapsed_ms: 1,
            achieved_rate: 1000.0,
            stopped_early: false,
            totals: t.clone(),
            targets: vec![t],
            hold: Some(HoldReport::default()),
        };
        let json = serde_json::to_value(&report).expect("serialize");
        assert_eq!(json["plan"]["kind"], "connects");
        assert_eq!(json["targets"][0]["identities"]["[::1]:9001"], 1);
        assert_eq!(json["targets"][0]["latency"]["p99_ns"], 500);
        assert_eq!(json["totals"]["errors"]["eperm"], 0);
        assert!(json["targets"][0].get("first_error").is_none());
        let back: Report = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, report);
        assert!(back.target("[::1]:9001").is_some());
        assert_eq!(
            serde_json::to_string(&FailureKind::Unreachable).expect("kind"),
            "\"unreachable\""
        );
    }
}
