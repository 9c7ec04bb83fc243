//! Hot upgrade under load: 20 consecutive handovers between real
//! `baton-agent` processes, alternating between map layouts 1 and 2 (every
//! one migrates the endpoint and backend maps), while a client opens
//! thousands of new connections per second to every service VIP and keeps
//! long-lived connections open across all of them.
//!
//! After every handover: the old agent exited 0 ("handed over"), the new one
//! answers `status` with its layout and the handover figures, `verify` is
//! clean, `dump` shows every service, VIP, port and endpoint, the adopted
//! maps needed no rewrite, the inherited metrics listener answers and no
//! staging directory is left. At the end: 0 failed and 0 misrouted connects,
//! every held connection still echoes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use baton_api::admin::{Status, Via};
use baton_e2e::kit::{agent_bin, other_layout as other, Fixture, Host, Opts};

/// Handovers in the run (alternating layouts: 1→2, 2→1, …).
const HANDOVERS: u64 = 20;
/// New connections per second the probe paces (the issue asks ≥ 2 000).
const RATE: f64 = 2_600.0;
/// Long-lived connections opened before the first handover.
const HOLD: u64 = 42;
/// Services that only fill the maps (4 endpoints each), so every handover
/// migrates thousands of entries.
const BULK: usize = 1_000;

#[test]
fn twenty_handovers_alternating_layouts_under_traffic() {
    // Both binaries first (the other layout may need a build).
    agent_bin(1).unwrap();
    agent_bin(2).unwrap();
    let mut fixture = Fixture::with_bulk(0, BULK);
    let mut ctx = Host::with_fixture("ho-soak", &fixture).unwrap();
    ctx.metrics = Some("127.0.0.1:19195".into());
    ctx.poll_ms = 10;
    let t_start = Instant::now();

    let mut current = ctx.start(1, &Opts::default()).unwrap();
    ctx.wait_dump(&fixture).expect("first agent");
    ctx.verify_clean().expect("first agent");
    let traffic = ctx
        .traffic(&fixture, RATE, HOLD, Duration::from_secs(240))
        .unwrap();

    let mut figures: Vec<HandoverFigures> = Vec::new();
    let mut edits = 0u64;
    for round in 1..=HANDOVERS {
        let from = current.layout().unwrap();
        let to = other(from);
        let when = format!("handover {round} (layout {from} → {to})");
        // In half of the handovers the services file keeps changing while it
        // runs (a new version every few ms, polled every 10 ms): edits land
        // before Prepare, between Prepare and Freeze (journaled, replayed
        // into the migrated maps), during the freeze (held back, then read
        // by the new agent) and after the commit. The last one must end up
        // in the new agent's maps. The new agent pauses 300 ms after its
        // pre-copy (test hook) so that the old one surely syncs while it
        // journals.
        // (Rounds 2, 3, 6, 7, …: both directions, half of the handovers.)
        let churn = matches!(round % 4, 2 | 3);
        let opts = if churn {
            Opts::default().with_env("BATON_TEST_PAUSE_AT", "new:after_precopy=300")
        } else {
            Opts::default()
        };
        let stop = AtomicBool::new(false);
        let (new, exit) = std::thread::scope(|s| {
            if churn {
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        edits += 1;
                        ctx.write_fixture(&Fixture::with_bulk(edits, BULK)).unwrap();
                        std::thread::sleep(Duration::from_millis(7));
                    }
                });
            }
            let new = ctx.spawn(to, &opts).unwrap();
            let exit = current.wait_exit(Duration::from_secs(30)).expect(&when);
            stop.store(true, Ordering::Relaxed);
            (new, exit)
        });
        if churn {
            fixture = Fixture::with_bulk(edits, BULK);
        }
        let wall = current.exited_at().map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(new.started())
        });
        assert!(
            exit.success() && current.log_text().contains("handed over to a successor"),
            "{when}: old agent exit {exit}; log:\n{}\nnew agent log:\n{}",
            current.log_text(),
            new.log_text()
        );
        let st = new.wait_serving(Duration::from_secs(30)).unwrap();
        assert_eq!(st.layout_version, to, "{when}: {st:?}");
        assert!(!st.frozen, "{when}: {st:?}");
        assert_eq!(
            st.handover.as_ref().map(|h| h.via),
            Some(Via::Handover),
            "{when}: {st:?}"
        );
        let mut f = HandoverFigures::from_status(&st)
            .unwrap_or_else(|| panic!("{when}: no handover figures in status: {st:?}"));
        f.wall_ms = wall.as_millis() as u64;
        assert_eq!(f.from, from, "{when}: {st:?}");
        assert_eq!(
            (f.reused, f.migrated, f.self_committed),
            (4, 2, false),
            "{when}: endpoint and backend migrate, the 4 other maps are reused: {st:?}"
        );
        f.journaled = churn;
        // In churn rounds, whether the old agent synced inside this round's
        // journal window depends on scheduling; across the 10 churn rounds
        // some must have (checked after the loop).
        if !churn {
            // Adoption read back exactly what the file says: nothing rewritten.
            assert_eq!(
                st.last_sync.as_ref().map(|l| l.writes),
                Some(0),
                "{when}: the new agent had to rewrite entries: {st:?}"
            );
            let entries = st.endpoints + st.backends;
            assert!(
                f.entries_copied >= entries,
                "{when}: {} entries copied, {entries} endpoints + backends: {st:?}",
                f.entries_copied
            );
        }
        ctx.wait_dump(&fixture).expect(&when);
        ctx.verify_clean().expect(&when);
        let m = ctx.scrape().unwrap();
        assert!(
            m.starts_with("HTTP/1.1 200 OK") && m.contains("baton_generation"),
            "{when}: inherited metrics listener: {m}"
        );
        assert_eq!(ctx.staging_dirs(), Vec::<String>::new(), "{when}");
        figures.push(f);
        current = new;
    }

    let report = traffic.report(Duration::from_secs(60)).unwrap();
    let problems = Fixture::at(0).traffic_problems(&report);
    assert!(
        problems.is_empty(),
        "traffic across the handovers: {problems:#?}"
    );
    assert!(
        report.achieved_rate >= 2_000.0,
        "the client opened only {:.0} connections/s",
        report.achieved_rate
    );
    let out = ctx.cli(current.layout().unwrap(), "verify").unwrap();
    assert!(
        out.status.success(),
        "baton-agent verify: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    current.stop().unwrap();

    print_figures(&figures);
    let held = report.hold.as_ref().map_or(0, |h| h.alive);
    let journaled: u64 = figures.iter().map(|f| f.journal_keys).sum();
    assert!(
        journaled > 0,
        "no write was journaled between pre-copy and freeze in any churn round"
    );
    eprintln!(
        "handover soak: {} handovers, {edits} services-file edits during handovers, {journaled} journal keys replayed, {} connects in {:.1} s ({:.0}/s), 0 failed, 0 misrouted, {held} held connections alive; test wall time {:.1} s",
        figures.len(),
        report.totals.attempted,
        report.elapsed_ms as f64 / 1000.0,
        report.achieved_rate,
        t_start.elapsed().as_secs_f64()
    );
}

/// The successor's control plane has no pause after the commit: its view of
/// the maps comes from its pre-copy read plus the old agent's journal (no
/// map is read again), and its source was polled all along, so its first
/// sync applies the last edit, made while it was held after its pre-copy
/// (the old agent applied that edit too, inside the journal window). Same
/// layout and layout-changing handovers, both layouts.
#[test]
fn edits_during_a_handover_are_in_the_first_sync_after_the_commit() {
    agent_bin(1).unwrap();
    agent_bin(2).unwrap();
    let mut bulk = 300;
    let mut edits = 0u64;
    let ctx = {
        let mut c = Host::with_fixture("ho-gap", &Fixture::with_bulk(edits, bulk)).unwrap();
        c.poll_ms = 10;
        c
    };
    let mut current = ctx.start(1, &Opts::default()).unwrap();
    ctx.wait_dump(&Fixture::with_bulk(edits, bulk)).unwrap();
    for (round, to) in [1u32, 2, 2, 1, 1].into_iter().enumerate() {
        let from = current.layout().unwrap();
        let when = format!("round {round} (layout {from} → {to})");
        let opts = Opts::default().with_env("BATON_TEST_PAUSE_AT", "new:after_precopy=600");
        let new = ctx.spawn(to, &opts).unwrap();
        // Edits every few ms until the successor is held after its
        // pre-copy, then one last edit while it is held.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !new.log_text().contains("BATON_TEST_PAUSE_AT: pausing") {
            assert!(Instant::now() < deadline, "{when}: {}", new.log_text());
            edits += 1;
            ctx.write_fixture(&Fixture::with_bulk(edits, bulk)).unwrap();
            std::thread::sleep(Duration::from_millis(7));
        }
        // One more bulk service: unlike the churn (which repeats every few
        // edits), a state the old agent cannot have applied already.
        edits += 1;
        bulk += 1;
        let last = Fixture::with_bulk(edits, bulk);
        ctx.write_fixture(&last).unwrap();
        let exit = current.wait_exit(Duration::from_secs(30)).expect(&when);
        assert!(exit.success(), "{when}: old agent: {}", current.log_text());
        // Right after the commit, before or after the first sync: the view
        // equals the maps.
        let st = new.wait_status("the commit", Duration::from_secs(30), |s: &Status| {
            s.handover.is_some()
        });
        let st: Status = st.unwrap();
        assert_eq!(st.layout_version, to, "{when}: {st:?}");
        ctx.verify_clean().expect(&when);
        ctx.wait_dump(&last).expect(&when);
        ctx.verify_clean().expect(&when);
        let st = ctx.status().unwrap();
        let h = st.handover.as_ref().unwrap();
        assert!(
            h.journal_keys > 0,
            "{when}: the old agent wrote nothing in the journal window: {st:?}\nold agent:\n{}\nnew agent:\n{}",
            current.log_text(),
            new.log_text()
        );
        // One sync brought the maps to the last edit: the successor had
        // parsed it before the commit.
        assert_eq!(
            st.syncs,
            1,
            "{when}: the last edit took more than the first sync: {st:?}\n{}",
            new.log_text()
        );
        let log = new.log_text();
        for l in log.lines().filter(|l| l.contains("view of the maps")) {
            eprintln!("{when}: {l}");
        }
        assert!(
            log.contains("view of the maps adopted") && !log.contains("stale_keys=0 "),
            "{when}: the journal's keys were not refreshed into the view:\n{log}"
        );
        // The last edit was read while the successor was held, before the
        // commit, and nothing was read after it: the first sync applied a
        // state parsed before the commit.
        let at = |what: &str| {
            log.find(what)
                .unwrap_or_else(|| panic!("{when}: no {what:?}:\n{log}"))
        };
        let (paused, committed) = (at("BATON_TEST_PAUSE_AT: pausing"), at("handover committed"));
        let last_read = log.rfind("source state read").unwrap_or(0);
        assert!(
            paused < last_read && last_read < committed,
            "{when}: the last edit was not read between the pause and the commit:\n{log}"
        );
        current = new;
    }
    current.stop().unwrap();
}

/// Figures of one handover as the new agent reports them.
#[derive(Clone, Debug, Default)]
struct HandoverFigures {
    from: u32,
    to: u32,
    handover_us: u64,
    freeze_us: u64,
    precopy_us: u64,
    journal_keys: u64,
    reused: u64,
    migrated: u64,
    entries_copied: u64,
    self_committed: bool,
    /// Spawn of the new agent → exit of the old one, as the test saw it.
    wall_ms: u64,
    /// Edits ran during this handover (with a pause to journal them).
    journaled: bool,
}

impl HandoverFigures {
    fn from_status(st: &Status) -> Option<Self> {
        let h = st.handover.as_ref()?;
        Some(Self {
            from: h.from_layout,
            to: st.layout_version,
            handover_us: h.handover_us,
            freeze_us: h.freeze_us,
            precopy_us: h.precopy_us,
            journal_keys: h.journal_keys,
            reused: h.maps.reused,
            migrated: h.maps.migrated,
            entries_copied: h.maps.entries_copied,
            self_committed: h.self_committed,
            wall_ms: 0,
            journaled: false,
        })
    }
}

fn print_figures(figures: &[HandoverFigures]) {
    eprintln!("\n  #  from→to  handover_us  freeze_us  precopy_us  journal  reused  migrated  copied  wall_ms  (j: edits during the handover, 300 ms pause after the pre-copy)");
    for (i, f) in figures.iter().enumerate() {
        eprintln!(
            "{:>3}{} {}→{}      {:>10}  {:>9}  {:>10}  {:>7}  {:>6}  {:>8}  {:>6}  {:>7}",
            i + 1,
            if f.journaled { "j" } else { " " },
            f.from,
            f.to,
            f.handover_us,
            f.freeze_us,
            f.precopy_us,
            f.journal_keys,
            f.reused,
            f.migrated,
            f.entries_copied,
            f.wall_ms
        );
    }
    for (from, to) in [(1, 2), (2, 1)] {
        let pick = |g: fn(&HandoverFigures) -> u64| {
            let mut v: Vec<u64> = figures
                .iter()
                .filter(|f| (f.from, f.to) == (from, to) && !f.journaled)
                .map(g)
                .collect();
            v.sort_unstable();
            v
        };
        let stats = |v: &[u64]| match v {
            [] => "-".to_string(),
            _ => format!(
                "min {} / median {} / max {}",
                v[0],
                v[v.len() / 2],
                v[v.len() - 1]
            ),
        };
        eprintln!(
            "layout {from}→{to}, quiet rounds: handover_us {}; freeze_us {}; wall_ms {}",
            stats(&pick(|f| f.handover_us)),
            stats(&pick(|f| f.freeze_us)),
            stats(&pick(|f| f.wall_ms))
        );
    }
}
