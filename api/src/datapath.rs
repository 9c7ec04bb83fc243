//! What the datapath saw: outcome counters summed over CPUs, as deltas over
//! a window. A successor reports them across its handover (and, while the
//! operator soaks a canary, for a while after it) in its
//! [`crate::pairpod::HandoverReport`]; a running agent reports its recent
//! rate in [`crate::admin::Status`]. The operator's canary compares the two
//! (docs/operator.md, "Canary").

use serde::{Deserialize, Serialize};

/// Deltas of the datapath's outcome counters (`counters` map, summed over
/// CPUs) over a window. Field names are the counters' metric labels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OutcomeCounts {
    /// TCP connects seen by the hooks.
    pub connect: u64,
    /// Connects rewritten to a backend.
    pub redirected: u64,
    /// Destination is not a VIP: untouched.
    pub no_frontend: u64,
    /// VIP known but port not serviced: untouched.
    pub port_miss: u64,
    /// No usable endpoint: refused.
    pub no_endpoint: u64,
    /// Endpoint lookup raced an update and was retried.
    pub endpoint_retry: u64,
    /// An endpoint named a missing backend: refused.
    pub backend_miss: u64,
    /// Backend family differs from the socket's: refused.
    pub family_mismatch: u64,
}

impl OutcomeCounts {
    /// Connects to a VIP that the datapath refused.
    pub fn refused(&self) -> u64 {
        self.no_endpoint
            .saturating_add(self.backend_miss)
            .saturating_add(self.family_mismatch)
    }

    /// Connects to a VIP (redirected or refused).
    pub fn to_vip(&self) -> u64 {
        self.redirected.saturating_add(self.refused())
    }

    /// Refused connects per million connects to a VIP; `None` without any.
    pub fn refused_per_million(&self) -> Option<u64> {
        let total = self.to_vip();
        (total > 0).then(|| {
            let ppm = u128::from(self.refused()) * 1_000_000 / u128::from(total);
            u64::try_from(ppm).unwrap_or(u64::MAX)
        })
    }

    /// `self - earlier`, field by field (0 where a counter went backwards,
    /// e.g. a recreated counters map).
    pub fn since(&self, earlier: &OutcomeCounts) -> OutcomeCounts {
        OutcomeCounts {
            connect: self.connect.saturating_sub(earlier.connect),
            redirected: self.redirected.saturating_sub(earlier.redirected),
            no_frontend: self.no_frontend.saturating_sub(earlier.no_frontend),
            port_miss: self.port_miss.saturating_sub(earlier.port_miss),
            no_endpoint: self.no_endpoint.saturating_sub(earlier.no_endpoint),
            endpoint_retry: self.endpoint_retry.saturating_sub(earlier.endpoint_retry),
            backend_miss: self.backend_miss.saturating_sub(earlier.backend_miss),
            family_mismatch: self.family_mismatch.saturating_sub(earlier.family_mismatch),
        }
    }

    /// `self + other`, field by field (saturating).
    pub fn plus(&self, other: &OutcomeCounts) -> OutcomeCounts {
        OutcomeCounts {
            connect: self.connect.saturating_add(other.connect),
            redirected: self.redirected.saturating_add(other.redirected),
            no_frontend: self.no_frontend.saturating_add(other.no_frontend),
            port_miss: self.port_miss.saturating_add(other.port_miss),
            no_endpoint: self.no_endpoint.saturating_add(other.no_endpoint),
            endpoint_retry: self.endpoint_retry.saturating_add(other.endpoint_retry),
            backend_miss: self.backend_miss.saturating_add(other.backend_miss),
            family_mismatch: self.family_mismatch.saturating_add(other.family_mismatch),
        }
    }
}

/// A running agent's recent datapath rate ([`crate::admin::Status::datapath`]):
/// counter deltas over its last `window_ms` (up to 30 s, sampled each second).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatapathRate {
    /// Length of the window, milliseconds (0 right after the agent started).
    pub window_ms: u64,
    /// Counter deltas over it.
    pub counts: OutcomeCounts,
}

/// What the datapath saw across a handover, in the successor's
/// [`crate::pairpod::HandoverReport::datapath`]: the incumbent's rate before
/// it, and the deltas from the successor's `Hello` to the time of the
/// report (the handover window, then the soak).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatapathWindow {
    /// The incumbent's counters over its last window before the handover;
    /// `None` when it did not say (an older agent, or no agent answered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<DatapathRate>,
    /// Counter deltas from `Hello` to this report.
    #[serde(default)]
    pub after: OutcomeCounts,
    /// Milliseconds from `Hello` to this report.
    #[serde(default)]
    pub after_ms: u64,
    /// Syncs the successor ran since it committed.
    #[serde(default)]
    pub syncs: u64,
    /// Of those, syncs that failed (rolled back, or the source refused).
    #[serde(default)]
    pub sync_errors: u64,
    /// The last report of the soak: the agent stops updating it.
    #[serde(default, rename = "final")]
    pub last: bool,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code

    use super::*;
    use serde_json::json;

    fn counts(redirected: u64, no_endpoint: u64) -> OutcomeCounts {
        OutcomeCounts {
            connect: redirected + no_endpoint + 7,
            redirected,
            no_frontend: 7,
            no_endpoint,
            ..OutcomeCounts::default()
        }
    }

    #[test]
    fn refused_share_counts_only_connects_to_a_vip() {
        let c = counts(750, 250);
        assert_eq!(c.refused(), 250);
        assert_eq!(c.to_vip(), 1000);
        assert_eq!(c.refused_per_million(), Some(250_000));
        assert_eq!(OutcomeCounts::default().refused_per_million(), None);
        let all = OutcomeCounts {
            backend_miss: 1,
            family_mismatch: 1,
            no_endpoint: 1,
            redirected: 1,
            ..OutcomeCounts::default()
        };
        assert_eq!(all.refused_per_million(), Some(750_000));
        let huge = OutcomeCounts {
            redirected: u64::MAX,
            no_endpoint: u64::MAX,
            ..OutcomeCounts::default()
        };
        assert_eq!(huge.refused_per_million(), Some(1_000_000));
    }

    #[test]
    fn deltas_never_go_negative_and_sums_add_up() {
        let a = counts(10, 2);
        let b = counts(15, 1);
        let d = b.since(&a);
        assert_eq!((d.redirected, d.no_endpoint), (5, 0));
        assert_eq!(a.plus(&d).redirected, 15);
        assert_eq!(a.since(&a), OutcomeCounts::default());
    }

    #[test]
    fn the_window_has_the_documented_keys() {
        let w = DatapathWindow {
            before: Some(DatapathRate {
                window_ms: 30_000,
                counts: counts(3, 0),
            }),
            after: counts(1, 1),
            after_ms: 5_000,
            syncs: 4,
            sync_errors: 1,
            last: true,
        };
        let v = serde_json::to_value(w).unwrap();
        assert_eq!(v["before"]["windowMs"], 30_000);
        assert_eq!(v["before"]["counts"]["redirected"], 3);
        assert_eq!(v["after"]["noEndpoint"], 1);
        assert_eq!(v["after"]["noFrontend"], 7);
        assert_eq!(v["afterMs"], 5_000);
        assert_eq!(v["syncErrors"], 1);
        assert_eq!(v["final"], true);
        assert_eq!(serde_json::from_value::<DatapathWindow>(v).unwrap(), w);
        // An older or newer agent's window still reads.
        let r: DatapathWindow =
            serde_json::from_value(json!({"after": {"redirected": 2, "newCounter": 1}})).unwrap();
        assert_eq!(r.after.redirected, 2);
        assert_eq!(r.before, None);
        assert!(!r.last);
    }
}
