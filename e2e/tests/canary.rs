//! The agent side of the canary, on the real kernel: what the datapath saw
//! across a handover, as the successor reports it (`status.handover.datapath`,
//! the same window its pod report carries), and a running agent's recent
//! rate (`status.datapath`), which a successor reads as the rate before.
//!
//! - a handover under traffic to an agent whose datapath refuses one
//!   connect in 4 (`BATON_TEST_REFUSE_ONE_IN=4`, an agent with test hooks):
//!   its window shows about 25 % of the connects to a VIP refused after
//!   `Hello`, none before, and the probe sees the failed connects;
//! - a normal handover under traffic (layout 1 → 2): the rate before is
//!   there, nothing refused after, no failed connect;
//! - the status rate of a running agent grows with traffic;
//! - a successor that migrates the counters map (a larger one) counts
//!   every connect once: its rate after matches the rate before.
//!
//! The successors run with `--soak-seconds` (the local-mode form of the
//! operator's soak annotation), so the window keeps being updated for a
//! while and then says `final`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics

use std::time::{Duration, Instant};

use baton_api::admin::{Status, Via};
use baton_api::datapath::DatapathWindow;
use baton_e2e::kit::{agent_bin, hooks_agent_bin, Agent, Fixture, Host, Opts};

/// Connects per second the probe paces.
const RATE: f64 = 400.0;
/// How long the successor keeps its window up to date.
const SOAK_SECONDS: u64 = 6;

/// Waits until the agent's status has a rate over at least `min_ms` with
/// connects to a VIP in it.
fn wait_rate(host: &Host, min_ms: u64) -> Status {
    host.wait_status("a datapath rate with traffic", |s| {
        s.datapath
            .is_some_and(|r| r.window_ms >= min_ms && r.counts.to_vip() > 0)
    })
    .unwrap()
}

/// Waits until the successor's window is final (its soak ended) and returns it.
fn final_window(new: &Agent) -> (Status, DatapathWindow) {
    let t0 = Instant::now();
    loop {
        let st = new.status().unwrap();
        if let Some(w) = st.handover.as_ref().and_then(|h| h.datapath) {
            if w.last {
                return (st, w);
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(SOAK_SECONDS + 20),
            "no final datapath window: {st:?}\nlog:\n{}",
            new.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Hands over from a running agent of `from` to `new_opts`' agent under
/// traffic; returns the successor's final window and the probe's report.
fn handover_under_traffic(
    name: &str,
    from: u32,
    to: u32,
    new_opts: Opts,
) -> (DatapathWindow, baton_e2e::report::Report, Status) {
    let fixture = Fixture::at(0);
    let host = Host::with_fixture(name, &fixture).unwrap();
    let old = host.start(from, &Opts::default()).unwrap();
    host.wait_dump(&fixture).unwrap();
    let traffic = host
        .traffic(&fixture, RATE, 0, Duration::from_secs(120))
        .unwrap();
    // The old agent's sampler sees the traffic for a few seconds.
    let before = wait_rate(&host, 2_000);
    let before = before.datapath.unwrap();
    assert_eq!(before.counts.refused(), 0, "{before:?}");

    let opts = new_opts.with_args(&["--soak-seconds", &SOAK_SECONDS.to_string()]);
    let new = host.spawn(to, &opts).unwrap();
    let exit = old.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(
        exit.success(),
        "old agent exit {exit}; log:\n{}\nnew agent log:\n{}",
        old.log_text(),
        new.log_text()
    );
    new.wait_serving(Duration::from_secs(30)).unwrap();
    // The first window is there at once (and not final: the soak runs).
    let first = new.status().unwrap();
    let h = first.handover.as_ref().expect("takeover figures");
    assert_eq!(h.via, Via::Handover, "{first:?}");
    let w0 = h.datapath.expect("a datapath window at the commit");
    assert!(!w0.last, "{w0:?}");
    let (st, w) = final_window(&new);
    assert!(w.after_ms >= w0.after_ms && w.after.connect >= w0.after.connect);
    assert!(
        w.after_ms >= SOAK_SECONDS * 1000,
        "final after {} ms: {w:?}",
        w.after_ms
    );
    let report = traffic.report(Duration::from_secs(60)).unwrap();
    new.stop().unwrap();
    (w, report, st)
}

#[test]
fn a_successor_refusing_one_connect_in_four_shows_it_in_its_window() {
    let own = baton_ebpf::LAYOUT_VERSION;
    let bin = hooks_agent_bin().unwrap_or_else(|e| panic!("{e}"));
    let opts = Opts::default()
        .with_bin(bin)
        .with_env("BATON_TEST_REFUSE_ONE_IN", "4");
    let (w, report, st) = handover_under_traffic("canary-refuse", own, own, opts);

    let before = w.before.expect("the old agent's rate before the handover");
    assert!(
        before.window_ms >= 2_000 && before.counts.to_vip() > 0,
        "{before:?}"
    );
    assert_eq!(before.counts.refused(), 0, "refused before: {before:?}");
    let ppm = w
        .after
        .refused_per_million()
        .expect("connects to a VIP after");
    eprintln!(
        "refuse 1 in 4: before {:?}; after {} ms: {} connects to a VIP, {} refused ({:.1} %), \
         probe {} attempted, {} failed; syncs {} ({} failed)",
        before,
        w.after_ms,
        w.after.to_vip(),
        w.after.refused(),
        ppm as f64 / 10_000.0,
        report.totals.attempted,
        report.totals.failed,
        w.syncs,
        w.sync_errors
    );
    assert!(w.after.to_vip() >= 500, "too few connects: {w:?}");
    assert!(
        (150_000..=350_000).contains(&ppm),
        "refused {ppm} ppm of connects to a VIP after the handover, expected about 250 000: {w:?}"
    );
    assert_eq!(w.after.no_endpoint, w.after.refused(), "{w:?}");
    assert!(w.syncs >= 1 && w.sync_errors == 0, "{w:?}");
    assert!(report.totals.failed > 0, "the probe saw no failed connect");
    // Refused, never misrouted: every other problem is one.
    let misrouted: Vec<String> = Fixture::at(0)
        .traffic_problems(&report)
        .into_iter()
        .filter(|p| !p.contains(" failed connects of "))
        .collect();
    assert!(misrouted.is_empty(), "{misrouted:#?}");
    // The probe saw every refusal of the window (and those after it: the
    // new programs keep refusing until the probe stops), and none before
    // the handover, so its failed share stays under a quarter.
    assert!(
        report.totals.failed >= w.after.refused()
            && report.totals.failed * 4 < report.totals.attempted,
        "probe failed {} of {}, the datapath refused {} in the window",
        report.totals.failed,
        report.totals.attempted,
        w.after.refused()
    );
    assert!(
        st.datapath.is_some_and(|r| r.counts.refused() > 0),
        "{st:?}"
    );
}

#[test]
fn a_normal_handover_reports_the_rate_before_and_nothing_refused_after() {
    agent_bin(2).unwrap();
    let (w, report, _) = handover_under_traffic("canary-normal", 1, 2, Opts::default());
    let before = w.before.expect("the old agent's rate before the handover");
    assert!(
        before.window_ms >= 2_000 && before.counts.to_vip() > 0,
        "{before:?}"
    );
    eprintln!(
        "normal handover 1 → 2: before {} connects to a VIP in {} ms; after {} in {} ms, {} refused; probe {} attempted, {} failed",
        before.counts.to_vip(),
        before.window_ms,
        w.after.to_vip(),
        w.after_ms,
        w.after.refused(),
        report.totals.attempted,
        report.totals.failed
    );
    assert!(w.after.to_vip() >= 500, "too few connects: {w:?}");
    assert_eq!(w.after.refused(), 0, "{w:?}");
    assert_eq!(w.sync_errors, 0, "{w:?}");
    let problems = Fixture::at(0).traffic_problems(&report);
    assert!(problems.is_empty(), "traffic: {problems:#?}");
}

#[test]
fn the_status_rate_grows_with_traffic() {
    let fixture = Fixture::at(0);
    let host = Host::with_fixture("canary-rate", &fixture).unwrap();
    let agent = host.start(1, &Opts::default()).unwrap();
    host.wait_dump(&fixture).unwrap();
    let idle = host
        .wait_status("two samples", |s| {
            s.datapath.is_some_and(|r| r.window_ms >= 1_000)
        })
        .unwrap()
        .datapath
        .unwrap();
    assert_eq!(idle.counts.to_vip(), 0, "{idle:?}");
    let traffic = host
        .traffic(&fixture, RATE, 0, Duration::from_secs(60))
        .unwrap();
    let low = wait_rate(&host, 2_000).datapath.unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let high = host.status().unwrap().datapath.unwrap();
    let report = traffic.report(Duration::from_secs(30)).unwrap();
    eprintln!(
        "status rate: idle {idle:?}; then {} connects to a VIP in {} ms, {} in {} ms (probe {} attempted)",
        low.counts.to_vip(),
        low.window_ms,
        high.counts.to_vip(),
        high.window_ms,
        report.totals.attempted
    );
    assert!(
        high.window_ms > low.window_ms && high.window_ms <= 30_000,
        "{low:?} {high:?}"
    );
    assert!(
        high.counts.to_vip() > low.counts.to_vip(),
        "{low:?} {high:?}"
    );
    assert!(
        high.counts.redirected > 0 && high.counts.refused() == 0,
        "{high:?}"
    );
    assert!(high.counts.connect >= high.counts.to_vip(), "{high:?}");
    agent.stop().unwrap();
}

#[test]
fn a_migrated_counters_map_is_counted_once_across_the_handover() {
    // A larger counters map is another layout: the successor migrates it
    // (pre-copy), so the old programs count into the old map until the
    // swap and the new ones into the new map (see rate::HandoverMarks).
    let own = baton_ebpf::LAYOUT_VERSION;
    let opts = Opts::default().with_args(&["--map-max-entries", "counters=32"]);
    let (w, report, st) = handover_under_traffic("canary-migrate", own, own, opts);
    let h = st.handover.as_ref().expect("takeover figures");
    assert_eq!(h.maps.migrated, 1, "the counters map migrates: {st:?}");
    let before = w.before.expect("the old agent's rate before the handover");
    let per_s = |n: u64, ms: u64| n as f64 * 1000.0 / ms.max(1) as f64;
    let (rate_before, rate_after) = (
        per_s(before.counts.to_vip(), before.window_ms),
        per_s(w.after.to_vip(), w.after_ms),
    );
    eprintln!(
        "migrated counters: before {rate_before:.0}/s, after {rate_after:.0}/s ({} in {} ms); probe {} attempted, {} failed",
        w.after.to_vip(),
        w.after_ms,
        report.totals.attempted,
        report.totals.failed
    );
    // Pre-copied totals counted again, or the new map's part lost, would
    // put the rate after far from the rate before.
    assert!(
        rate_after > rate_before * 0.7 && rate_after < rate_before * 1.3,
        "rate before {rate_before:.0}/s, after {rate_after:.0}/s: {w:?}"
    );
    assert_eq!(w.after.refused(), 0, "{w:?}");
    let problems = Fixture::at(0).traffic_problems(&report);
    assert!(problems.is_empty(), "traffic: {problems:#?}");
}
