//! What the datapath saw over time: the `counters` map (per-CPU, summed
//! over CPUs) read as [`OutcomeCounts`].
//!
//! - [`Sampler`]: a running agent's last 30 s, one sample a second
//!   (`status.datapath`, which a successor reads as the rate *before* its
//!   handover).
//! - [`HandoverMarks`]: the readings a successor takes across its handover,
//!   from which its report's [`DatapathWindow`] (`after`) is computed.

use std::collections::VecDeque;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use baton_api::datapath::{DatapathRate, DatapathWindow, OutcomeCounts};
use baton_ebpf::Counter;

use crate::maps::{MapError, MapSet};
use crate::sys::{self, SysError};

/// How often a running agent samples its counters.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Samples kept: 30 intervals, so the window is up to 30 s.
pub const MAX_SAMPLES: usize = 31;

/// Builds the counts from a reader of one counter.
pub fn counts_with<E>(mut read: impl FnMut(Counter) -> Result<u64, E>) -> Result<OutcomeCounts, E> {
    Ok(OutcomeCounts {
        connect: read(Counter::Connect)?,
        redirected: read(Counter::Redirected)?,
        no_frontend: read(Counter::NoFrontend)?,
        port_miss: read(Counter::PortMiss)?,
        no_endpoint: read(Counter::NoEndpoint)?,
        endpoint_retry: read(Counter::EndpointRetry)?,
        backend_miss: read(Counter::BackendMiss)?,
        family_mismatch: read(Counter::FamilyMismatch)?,
    })
}

/// The counters of `maps`, summed over CPUs (8 lookups).
pub fn read(maps: &MapSet) -> Result<OutcomeCounts, MapError> {
    counts_with(|c| maps.counter(c))
}

/// The counters of the per-CPU array map `fd` (another agent's, e.g. the
/// incumbent's during a handover), summed over `cpus` possible CPUs.
pub fn read_fd(fd: BorrowedFd<'_>, cpus: usize) -> Result<OutcomeCounts, SysError> {
    let mut buf = vec![0u8; 8 * cpus.max(1)];
    counts_with(|c| {
        buf.fill(0);
        sys::map_lookup(fd, &(c as u32).to_ne_bytes(), &mut buf)?;
        Ok(buf
            .chunks_exact(8)
            .map(|b| u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .fold(0u64, u64::wrapping_add))
    })
}

/// The last [`MAX_SAMPLES`] readings of the counters.
#[derive(Debug, Default)]
pub struct Sampler {
    samples: VecDeque<(Instant, OutcomeCounts)>,
}

impl Sampler {
    /// Records a reading taken at `at`, dropping the oldest beyond [`MAX_SAMPLES`].
    pub fn push(&mut self, at: Instant, counts: OutcomeCounts) {
        while self.samples.len() >= MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((at, counts));
    }

    /// The counter deltas over the window (`None` before the first sample;
    /// `window_ms` 0 with one). Summed interval by interval, each delta
    /// saturating at 0, so a counter that went backwards (a recreated map)
    /// costs one interval, not the window.
    pub fn rate(&self) -> Option<DatapathRate> {
        let (first, _) = self.samples.front()?;
        let (last, _) = self.samples.back()?;
        let mut counts = OutcomeCounts::default();
        let mut prev: Option<&OutcomeCounts> = None;
        for (_, c) in &self.samples {
            if let Some(p) = prev {
                counts = counts.plus(&c.since(p));
            }
            prev = Some(c);
        }
        Some(DatapathRate {
            window_ms: millis(last.saturating_duration_since(*first)),
            counts,
        })
    }
}

/// Readings a successor takes across its handover.
///
/// The old programs count into the incumbent's `counters` map until the
/// incumbent swaps the links at commit; the new programs count into this
/// build's map from then on. When the map was reused (same layout: the
/// usual case) both are one kernel object and `after` is simply "now −
/// Hello". When the handover migrated it (a new map, pre-copied from the
/// old one), no program counts into the new map before the swap and none
/// into the old one after it (but for connects already inside an old
/// program, which the reading after `Committed` still catches), so
///
/// `after = (old at Committed − old at Hello) + (new now − new just before Commit)`
///
/// and the copied values cancel out in the second term.
#[derive(Clone, Debug)]
pub struct HandoverMarks {
    /// The incumbent's own rate before the handover (its `status.datapath`).
    pub before: Option<DatapathRate>,
    /// When `Hello` was sent.
    pub hello_at: Instant,
    /// The incumbent's counters at `Hello`.
    pub old_at_hello: OutcomeCounts,
    /// The incumbent's counters once `Committed` arrived (its programs are
    /// off the links).
    pub old_at_commit: OutcomeCounts,
    /// This build's counters just before `Commit`, when its counters map is
    /// a new map; `None` when it reused the incumbent's.
    pub new_at_commit: Option<OutcomeCounts>,
    /// When the handover committed.
    pub committed_at: Instant,
}

impl HandoverMarks {
    /// Counter deltas from `Hello` to `new_now` (this build's map, read now).
    pub fn after(&self, new_now: &OutcomeCounts) -> OutcomeCounts {
        match &self.new_at_commit {
            None => new_now.since(&self.old_at_hello),
            Some(new_at_commit) => self
                .old_at_commit
                .since(&self.old_at_hello)
                .plus(&new_now.since(new_at_commit)),
        }
    }

    /// The report's window at `now`, given this build's counters then and
    /// the syncs since the commit.
    pub fn window(
        &self,
        new_now: &OutcomeCounts,
        now: Instant,
        syncs: u64,
        sync_errors: u64,
        last: bool,
    ) -> DatapathWindow {
        DatapathWindow {
            before: self.before,
            after: self.after(new_now),
            after_ms: millis(now.saturating_duration_since(self.hello_at)),
            syncs,
            sync_errors,
            last,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// When a soaking successor rewrites its report: every `interval` after the
/// commit while the soak lasts, then at its end (`true`: the last one).
pub fn soak_schedule(soak: Duration, interval: Duration) -> Vec<(Duration, bool)> {
    let mut out = Vec::new();
    if soak.is_zero() {
        return out;
    }
    let interval = interval.max(Duration::from_millis(1));
    let mut at = interval;
    while at < soak {
        out.push((at, false));
        at += interval;
    }
    out.push((soak, true));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(connect: u64, redirected: u64, no_endpoint: u64) -> OutcomeCounts {
        OutcomeCounts {
            connect,
            redirected,
            no_endpoint,
            ..OutcomeCounts::default()
        }
    }

    #[test]
    fn the_rate_is_the_sum_over_the_last_30_intervals() {
        let t0 = Instant::now();
        let mut s = Sampler::default();
        assert_eq!(s.rate(), None);
        s.push(t0, c(100, 90, 10));
        assert_eq!(
            s.rate(),
            Some(DatapathRate {
                window_ms: 0,
                counts: OutcomeCounts::default()
            })
        );
        // 40 samples, one a second, 10 connects each (9 redirected, 1 refused).
        for i in 1..40u64 {
            s.push(
                t0 + Duration::from_secs(i),
                c(100 + 10 * i, 90 + 9 * i, 10 + i),
            );
        }
        let r = s.rate().expect("a rate");
        // Only the last 31 samples: 30 intervals.
        assert_eq!(r.window_ms, 30_000);
        assert_eq!(r.counts, c(300, 270, 30));
        assert_eq!(r.counts.refused_per_million(), Some(100_000));
    }

    #[test]
    fn a_counter_going_backwards_costs_one_interval() {
        let t0 = Instant::now();
        let mut s = Sampler::default();
        s.push(t0, c(1000, 1000, 0));
        s.push(t0 + Duration::from_secs(1), c(1010, 1010, 0));
        // A recreated map starts at 0.
        s.push(t0 + Duration::from_secs(2), c(5, 5, 0));
        s.push(t0 + Duration::from_secs(3), c(15, 15, 0));
        let r = s.rate().expect("a rate");
        assert_eq!(r.window_ms, 3_000);
        assert_eq!(r.counts, c(20, 20, 0));
    }

    fn marks(new_at_commit: Option<OutcomeCounts>) -> HandoverMarks {
        let t0 = Instant::now();
        HandoverMarks {
            before: Some(DatapathRate {
                window_ms: 30_000,
                counts: c(300, 300, 0),
            }),
            hello_at: t0,
            old_at_hello: c(1000, 1000, 0),
            old_at_commit: c(1050, 1050, 0),
            new_at_commit,
            committed_at: t0 + Duration::from_millis(400),
        }
    }

    #[test]
    fn after_on_a_reused_map_is_now_minus_hello() {
        let m = marks(None);
        let now = m.hello_at + Duration::from_secs(5);
        let w = m.window(&c(1100, 1080, 20), now, 3, 1, false);
        assert_eq!(w.after, c(100, 80, 20));
        assert_eq!(w.after_ms, 5_000);
        assert_eq!((w.syncs, w.sync_errors, w.last), (3, 1, false));
        assert_eq!(w.before, m.before);
    }

    #[test]
    fn after_on_a_migrated_map_adds_both_maps_parts() {
        // The new map was pre-copied with the old values (1040 at the copy),
        // then the new programs counted 60 more into it, 15 of them refused.
        let m = marks(Some(c(1040, 1040, 0)));
        let w = m.window(&c(1100, 1085, 15), m.hello_at, 0, 0, true);
        // 50 from the old map (Hello → Committed) + 60 from the new one.
        assert_eq!(w.after, c(110, 95, 15));
        assert_eq!(w.after_ms, 0);
        assert!(w.last);
        // Right after the commit, nothing new yet: the old map's part only.
        assert_eq!(m.after(&c(1040, 1040, 0)), c(50, 50, 0));
    }

    #[test]
    fn the_soak_reports_every_interval_then_once_last() {
        let s = |n| Duration::from_secs(n);
        assert!(soak_schedule(s(0), s(5)).is_empty());
        assert_eq!(soak_schedule(s(3), s(5)), vec![(s(3), true)]);
        assert_eq!(
            soak_schedule(s(10), s(5)),
            vec![(s(5), false), (s(10), true)]
        );
        assert_eq!(
            soak_schedule(s(12), s(5)),
            vec![(s(5), false), (s(10), false), (s(12), true)]
        );
    }
}
