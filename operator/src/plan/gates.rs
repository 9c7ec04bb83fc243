//! The two gates in front of a handover: the new image's preflight on the
//! node, and the canary that judges it by what the first nodes' datapath saw.

use baton_api::datapath::DatapathWindow;
use baton_api::pairpod::SOAK_REPORT_INTERVAL_SECONDS;

use crate::crd::Canary;

use super::model::{NodeView, PreflightState, PreflightView, Serving};

/// The node's check of `image`, if one exists.
pub fn preflight_of<'a>(node: &'a NodeView, image: &str) -> Option<&'a PreflightView> {
    node.preflights.iter().find(|p| p.image == image)
}

/// Why the node's check of `image` fails it, if it does: the check failed,
/// or it has not finished within `timeout` seconds (the second value: its pod
/// should go).
pub fn preflight_failure(node: &NodeView, image: &str, timeout: u64) -> Option<(String, bool)> {
    let check = preflight_of(node, image)?;
    match &check.state {
        PreflightState::Failed { message } => {
            Some((format!("preflight of {image} failed: {message}"), false))
        }
        PreflightState::Running {
            elapsed_seconds,
            wait,
        } if *elapsed_seconds >= timeout => {
            let mut why = format!("preflight of {image} did not finish within {timeout}s");
            if let Some(w) = wait {
                why.push_str("; ");
                why.push_str(w);
            }
            Some((why, true))
        }
        _ => None,
    }
}

/// What a canary node's agent shows since its commit, against the spec's
/// thresholds: `Err` names the threshold that tripped, with the numbers.
pub fn judge(node: &str, serving: &Serving, ready: bool, canary: &Canary) -> Result<(), String> {
    if serving.restarted || !ready {
        return Err(format!(
            "canary {node}: the new agent restarted or stopped being ready after its handover"
        ));
    }
    let Some(w) = &serving.datapath else {
        return Ok(());
    };
    let max_sync_errors = u64::try_from(canary.max_sync_errors).unwrap_or(0);
    if w.sync_errors > max_sync_errors {
        return Err(format!(
            "canary {node}: {} of {} syncs failed since the handover (maxSyncErrors {max_sync_errors})",
            w.sync_errors, w.syncs
        ));
    }
    let connects = w.after.to_vip();
    let min_connects = u64::try_from(canary.min_connects).unwrap_or(0);
    if connects < min_connects.max(1) {
        return Ok(());
    }
    let after = w.after.refused_per_million().unwrap_or(0);
    let before = before_ppm(w).unwrap_or(0);
    let limit = u64::try_from(canary.max_refused_per_million).unwrap_or(0);
    if after.saturating_sub(before) > limit {
        return Err(format!(
            "canary {node}: {} of {connects} connects to a VIP refused since the handover \
             ({after} per million; {before} per million before it), over maxRefusedPerMillion {limit}",
            w.after.refused()
        ));
    }
    Ok(())
}

/// The old agent's refused share before the handover, per million.
pub fn before_ppm(w: &DatapathWindow) -> Option<u64> {
    w.before.as_ref()?.counts.refused_per_million()
}

/// Whether a canary that has soaked `soaked` seconds of `soak` is done:
/// every agent sent its last report, or (agents that never say so) two
/// report intervals more have passed.
pub fn soak_done<'a>(
    soaked: u64,
    soak: u64,
    mut serving: impl Iterator<Item = &'a Serving>,
) -> bool {
    soaked >= soak
        && (serving.all(|s| s.datapath.as_ref().is_none_or(|w| w.last))
            || soaked >= soak + 2 * SOAK_REPORT_INTERVAL_SECONDS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_api::datapath::{DatapathRate, OutcomeCounts};

    fn serving(redirected: u64, refused: u64, before_refused: Option<u64>) -> Serving {
        Serving {
            committed_seconds_ago: 10,
            datapath: Some(DatapathWindow {
                before: before_refused.map(|r| DatapathRate {
                    window_ms: 30_000,
                    counts: OutcomeCounts {
                        redirected: 1_000 - r,
                        no_endpoint: r,
                        ..OutcomeCounts::default()
                    },
                }),
                after: OutcomeCounts {
                    redirected,
                    no_endpoint: refused,
                    ..OutcomeCounts::default()
                },
                after_ms: 10_000,
                syncs: 3,
                sync_errors: 0,
                last: false,
            }),
            restarted: false,
        }
    }

    #[test]
    fn a_quarter_refused_trips_and_the_message_has_the_numbers() {
        let why = judge("n1", &serving(750, 250, Some(0)), true, &Canary::default()).unwrap_err();
        assert!(why.contains("250 of 1000"), "{why}");
        assert!(why.contains("250000 per million"), "{why}");
        assert!(why.contains("maxRefusedPerMillion 1000"), "{why}");
    }

    #[test]
    fn the_old_rate_is_subtracted_and_few_connects_are_not_judged() {
        // 2 % refused before and after: the new build changed nothing.
        assert!(judge("n", &serving(980, 20, Some(20)), true, &Canary::default()).is_ok());
        // The same 2 % with no rate before: over the default 0.1 %.
        assert!(judge("n", &serving(980, 20, None), true, &Canary::default()).is_err());
        // 50 connects, all refused, under minConnects 100: not judged.
        assert!(judge("n", &serving(0, 50, Some(0)), true, &Canary::default()).is_ok());
        let strict = Canary {
            min_connects: 10,
            ..Canary::default()
        };
        assert!(judge("n", &serving(0, 50, Some(0)), true, &strict).is_err());
    }

    #[test]
    fn restarts_readiness_and_sync_errors_trip() {
        let mut s = serving(1000, 0, Some(0));
        assert!(judge("n", &s, true, &Canary::default()).is_ok());
        assert!(judge("n", &s, false, &Canary::default()).is_err());
        s.restarted = true;
        assert!(judge("n", &s, true, &Canary::default()).is_err());
        s.restarted = false;
        if let Some(w) = s.datapath.as_mut() {
            w.sync_errors = 2;
        }
        let why = judge("n", &s, true, &Canary::default()).unwrap_err();
        assert!(why.contains("2 of 3 syncs"), "{why}");
        let lenient = Canary {
            max_sync_errors: 2,
            ..Canary::default()
        };
        assert!(judge("n", &s, true, &lenient).is_ok());
    }

    #[test]
    fn the_soak_ends_with_the_last_reports_or_after_a_grace() {
        let mut s = serving(1000, 0, Some(0));
        assert!(!soak_done(59, 60, [&s].into_iter()));
        assert!(!soak_done(60, 60, [&s].into_iter()), "no last report yet");
        assert!(soak_done(70, 60, [&s].into_iter()), "grace over");
        if let Some(w) = s.datapath.as_mut() {
            w.last = true;
        }
        assert!(soak_done(60, 60, [&s].into_iter()));
        s.datapath = None;
        assert!(
            soak_done(60, 60, [&s].into_iter()),
            "an agent without figures"
        );
    }
}
