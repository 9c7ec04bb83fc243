//! SIGKILL either agent at every step of the handover protocol
//! (`BATON_TEST_CRASH_AT=<step>`, the agent's test-only fault hook) while a
//! client connects to every VIP, and check the pair converges.
//!
//! Each case runs in a fresh sandbox, from one layout to the other (every
//! step in both directions, so both migrations are crashed), and asserts:
//! - the hook fired: the victim died by SIGKILL, saying so in its log;
//! - the traffic had 0 failed and 0 misrouted connects and every long-lived
//!   connection survived (the pinned links and maps serve on their own);
//! - exactly one agent process is left and it answers `status` (its pid);
//! - `verify` is clean, `dump` shows every service, a services-file edit is
//!   applied (the survivor is active, not frozen);
//! - no `staging-*` directory is left in the bpffs.
//!
//! Who survives:
//! - old agent killed before it committed (`old:after_welcome` …
//!   `old:after_frozen`): the new agent sees it gone and starts from the
//!   pins, migrating the maps itself;
//! - old agent killed inside or after the commit (`old:after_links_swapped`,
//!   `old:after_commit`): the new agent finishes the swap itself
//!   (`self_committed`);
//! - new agent killed before its `Commit` (`new:after_welcome` …
//!   `new:after_frozen`): the old agent drops the session, unfreezes and keeps
//!   serving;
//! - new agent killed after sending `Commit` (`new:after_commit_sent`,
//!   `new:after_committed`): the old agent has committed and retired by
//!   design (it never writes again once the links run the new programs), so
//!   no agent is left. The datapath keeps serving from the pins, and the
//!   test restarts the new agent — as the kubelet would restart the crashed
//!   container — which must start from the pins (already of its layout,
//!   all reused) and clean up the dead agent's staging directory.

use std::time::Duration;

use baton_api::admin::{FromPins, PinStatus, Status, Verify, Via, ANSWERED_BY_PINS};
use baton_e2e::kit::{
    agent_bin, killed, other_layout as other, wait_until, Agent, Fixture, Host, Opts,
};

/// Connects per second during each case.
const RATE: f64 = 1_500.0;
/// Long-lived connections per case.
const HOLD: u64 = 14;

/// How a case is expected to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Survivor {
    /// The new agent, started from the pins (the old one died first).
    NewFromPins,
    /// The new agent, having finished the commit itself.
    NewSelfCommitted,
    /// The new agent, either way.
    NewEither,
    /// The old agent, still serving.
    Old,
    /// Nobody: the old agent retired, the new one died; a restarted agent
    /// takes over from the pins.
    Restarted,
}

fn expected(step: &str) -> Survivor {
    match step {
        "old:after_welcome" | "old:after_offer" | "old:after_prepared" => Survivor::NewFromPins,
        // The old agent was frozen and had sent its journal: whether the new
        // agent's Commit still went out before the socket closed (then it
        // finishes the swap itself, its maps being complete) or not (then it
        // starts from the pins) is a race; both converge.
        "old:after_frozen" => Survivor::NewEither,
        "old:after_links_swapped" | "old:after_commit" => Survivor::NewSelfCommitted,
        "new:after_commit_sent" | "new:after_committed" => Survivor::Restarted,
        s if s.starts_with("new:") => Survivor::Old,
        other => panic!("unknown step {other}"),
    }
}

fn crash_case(step: &str, from: u32) {
    agent_bin(1).unwrap();
    agent_bin(2).unwrap();
    let to = other(from);
    let case = format!("{step} ({from}→{to})");
    let fixture = Fixture::at(0);
    let ctx = Host::with_fixture(&format!("crash-{}", step.replace(':', "-")), &fixture).unwrap();
    let old_side = step.starts_with("old:");
    let hook = Opts::crash_at(step);
    let none = Opts::default();

    let old = ctx
        .start(from, if old_side { &hook } else { &none })
        .unwrap();
    ctx.wait_dump(&fixture).expect(&case);
    let traffic = ctx
        .traffic(&fixture, RATE, HOLD, Duration::from_secs(90))
        .unwrap();
    // Some traffic through the old agent's datapath before the handover.
    std::thread::sleep(Duration::from_millis(200));
    let new = ctx.spawn(to, if old_side { &none } else { &hook }).unwrap();

    let victim = if old_side { &old } else { &new };
    let st = victim
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("crash hook at {step}: {e}"));
    assert!(
        killed(st) && victim.log_text().contains("BATON_TEST_CRASH_AT"),
        "{case}: {} exited {st} without its crash hook firing; log:\n{}\nother agent:\n{}",
        victim.name(),
        victim.log_text(),
        if old_side {
            new.log_text()
        } else {
            old.log_text()
        }
    );

    let survivor = expected(step);
    let restarted: Option<Agent>;
    let live: &Agent = match survivor {
        Survivor::NewFromPins | Survivor::NewSelfCommitted | Survivor::NewEither => {
            restarted = None;
            let s = new.wait_serving(Duration::from_secs(30)).unwrap();
            assert_eq!(s.layout_version, to, "{case}: {s:?}");
            assert_eq!(writes(&s), Some(0), "{case}: entries lost: {s:?}");
            let from_pins = match survivor {
                Survivor::NewEither => via(&s) == Some(Via::Pins),
                other => other == Survivor::NewFromPins,
            };
            eprintln!(
                "{case}: new agent {}",
                if from_pins {
                    "started from the pins"
                } else {
                    "finished the commit itself"
                }
            );
            if from_pins {
                assert_eq!(
                    via(&s),
                    Some(Via::Pins),
                    "{case}: the new agent should have started from the pins: {s:?}"
                );
                assert_eq!(
                    (s.maps.migrated, s.maps.reused),
                    (2, 4),
                    "{case}: recovery migrates endpoint and backend: {s:?}"
                );
            } else {
                assert_eq!(
                    s.handover.as_ref().map(|h| h.self_committed),
                    Some(true),
                    "{case}: the new agent should have finished the commit: {s:?}"
                );
            }
            &new
        }
        Survivor::Old => {
            restarted = None;
            // The old agent noticed and dropped the session (it may not be
            // frozen yet, so wait for it to say so).
            assert!(
                wait_until(Duration::from_secs(15), || old
                    .log_text()
                    .contains("handover failed; this agent keeps serving")),
                "{case}: old agent log:\n{}",
                old.log_text()
            );
            let s = ctx
                .wait_status(&format!("{case}: old agent unfrozen"), |s| {
                    s.pid == old.pid() && !s.frozen
                })
                .unwrap();
            assert_eq!(s.layout_version, from, "{case}: {s:?}");
            &old
        }
        Survivor::Restarted => {
            let st = old
                .wait_exit(Duration::from_secs(30))
                .expect("retired after the commit");
            assert!(
                st.success() && old.log_text().contains("handed over to a successor"),
                "{case}: old agent exit {st}; log:\n{}",
                old.log_text()
            );
            // No agent at all now: the pinned datapath serves alone for a while.
            std::thread::sleep(Duration::from_millis(300));
            let r = ctx.start(to, &none).unwrap();
            let s = r.wait_serving(Duration::from_secs(30)).unwrap();
            assert_eq!(via(&s), Some(Via::Pins), "{case}: {s:?}");
            assert_eq!(
                (s.maps.reused, s.maps.migrated),
                (6, 0),
                "{case}: the committed maps are already of layout {to}: {s:?}"
            );
            assert_eq!(writes(&s), Some(0), "{case}: entries lost: {s:?}");
            restarted = Some(r);
            restarted.as_ref().expect("restarted agent")
        }
    };

    // Exactly one agent process left, the one answering status.
    let all: Vec<&Agent> = [&old, &new].into_iter().chain(restarted.as_ref()).collect();
    let alive: Vec<&str> = all.iter().filter(|a| a.alive()).map(|a| a.name()).collect();
    assert_eq!(alive, [live.name()], "{case}: agents alive");
    let s = ctx.status().expect("status");
    assert_eq!(s.pid, live.pid(), "{case}: {s:?}");

    ctx.wait_dump(&fixture).expect(&case);
    ctx.verify_clean().expect(&case);
    // Active and not frozen: an edit reaches the maps.
    let edited = Fixture::at(1);
    ctx.write_fixture(&edited).unwrap();
    ctx.wait_dump(&edited)
        .unwrap_or_else(|e| panic!("{case}: after an edit: {e}"));
    ctx.verify_clean()
        .unwrap_or_else(|e| panic!("{case}: after an edit: {e}"));
    assert!(
        wait_until(Duration::from_secs(5), || ctx.staging_dirs().is_empty()),
        "{case}: staging directories left: {:?}",
        ctx.staging_dirs()
    );

    let report = traffic.report(Duration::from_secs(60)).unwrap();
    let problems = fixture.traffic_problems(&report);
    assert!(problems.is_empty(), "{case}: traffic: {problems:#?}");
    assert!(
        live.alive(),
        "{case}: {} died: {}",
        live.name(),
        live.log_text()
    );
    eprintln!(
        "{case}: survivor {survivor:?}, {} connects, 0 failed",
        report.totals.attempted
    );
}

macro_rules! crash {
    ($($up:ident $down:ident: $step:literal;)*) => {$(
        #[test]
        fn $up() {
            crash_case($step, 1);
        }

        #[test]
        fn $down() {
            crash_case($step, 2);
        }
    )*};
}

// Every step, both directions (layout 1 → 2 and 2 → 1).
crash! {
    old_after_welcome_1to2 old_after_welcome_2to1: "old:after_welcome";
    old_after_offer_1to2 old_after_offer_2to1: "old:after_offer";
    old_after_prepared_1to2 old_after_prepared_2to1: "old:after_prepared";
    old_after_frozen_1to2 old_after_frozen_2to1: "old:after_frozen";
    old_after_links_swapped_1to2 old_after_links_swapped_2to1: "old:after_links_swapped";
    old_after_commit_1to2 old_after_commit_2to1: "old:after_commit";
    new_after_welcome_1to2 new_after_welcome_2to1: "new:after_welcome";
    new_after_offer_1to2 new_after_offer_2to1: "new:after_offer";
    new_after_prepared_1to2 new_after_prepared_2to1: "new:after_prepared";
    new_after_precopy_1to2 new_after_precopy_2to1: "new:after_precopy";
    new_after_frozen_1to2 new_after_frozen_2to1: "new:after_frozen";
    new_after_commit_sent_1to2 new_after_commit_sent_2to1: "new:after_commit_sent";
    new_after_committed_1to2 new_after_committed_2to1: "new:after_committed";
}

/// No handover in progress: SIGKILL the agent, let the pinned datapath serve
/// alone, start the other layout's agent (it migrates the pins), kill that
/// one too and start the first layout again, then a same-layout restart
/// (everything reused). Traffic runs throughout.
#[test]
fn sigkill_without_handover_recovers_from_pins_in_both_layouts() {
    agent_bin(1).unwrap();
    agent_bin(2).unwrap();
    let fixture = Fixture::at(0);
    let ctx = Host::with_fixture("crash-recover", &fixture).unwrap();
    let mut agent = ctx.start(1, &Opts::default()).unwrap();
    ctx.wait_dump(&fixture).expect("first agent");
    let traffic = ctx
        .traffic(&fixture, RATE, HOLD, Duration::from_secs(90))
        .unwrap();
    for (to, migrated) in [(2u32, 2u64), (1, 2), (1, 0)] {
        let from = agent.layout().unwrap();
        let case = format!("SIGKILL layout {from}, restart as layout {to}");
        agent.kill();
        // The dead agent left its admin.sock: `verify` and `status` say no
        // agent answers and read the pins instead.
        assert_pins_answer(&ctx, from, &case);
        std::thread::sleep(Duration::from_millis(300));
        agent = ctx.start(to, &Opts::default()).unwrap();
        let s = agent.wait_serving(Duration::from_secs(30)).unwrap();
        // The recovery's figures are in status, as for a handover.
        let h = s
            .handover
            .as_ref()
            .unwrap_or_else(|| panic!("{case}: no recovery figures: {s:?}"));
        assert_eq!(h.via, Via::Pins, "{case}: {s:?}");
        assert_eq!(h.maps, s.maps, "{case}: {s:?}");
        assert!(h.handover_us > 0, "{case}: {s:?}");
        if migrated > 0 {
            assert!(
                h.maps.entries_copied > 0 && h.precopy_us > 0,
                "{case}: {s:?}"
            );
        }
        assert_eq!(s.layout_version, to, "{case}: {s:?}");
        assert_eq!(
            (s.maps.migrated, s.maps.reused),
            (migrated, 6 - migrated),
            "{case}: {s:?}"
        );
        assert!(s.adopted_maps, "{case}: {s:?}");
        assert_eq!(writes(&s), Some(0), "{case}: entries lost: {s:?}");
        ctx.wait_dump(&fixture).expect(&case);
        ctx.verify_clean().expect(&case);
        assert!(
            ctx.staging_dirs().is_empty(),
            "{case}: {:?}",
            ctx.staging_dirs()
        );
    }
    let report = traffic.report(Duration::from_secs(60)).unwrap();
    let problems = fixture.traffic_problems(&report);
    assert!(problems.is_empty(), "traffic: {problems:#?}");
    agent.stop().unwrap();
}

/// With the agent SIGKILLed (its admin.sock left behind), `verify` and
/// `status` fall back to the pins, say so, and `verify` exits 0 on the clean
/// datapath.
fn assert_pins_answer(ctx: &Host, layout: u32, case: &str) {
    assert!(
        baton_agent::agent::admin_socket(&ctx.run_dir).exists(),
        "{case}: the SIGKILLed agent's admin.sock is gone; the case needs it stale"
    );
    let out = ctx.cli(layout, "verify").unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stderr.contains("no agent answers"),
        "{case}: baton-agent verify exit {}: {stdout}\n{stderr}",
        out.status
    );
    let v: FromPins<Verify> = serde_json::from_str(&stdout).expect("verify prints JSON");
    assert_eq!(v.answered_by, ANSWERED_BY_PINS, "{case}: {v:?}");
    assert!(v.answer.is_clean(), "{case}: {v:?}");
    assert!(v.answer.endpoints > 0, "{case}: {v:?}");
    let out = ctx.cli(layout, "status").unwrap();
    let v = serde_json::from_slice::<FromPins<PinStatus>>(&out.stdout);
    assert!(
        out.status.success()
            && v.as_ref().is_ok_and(
                |v| v.answered_by == ANSWERED_BY_PINS && v.answer.layout_version == layout
            ),
        "{case}: baton-agent status exit {}: {v:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How the agent got its datapath, if by a takeover.
fn via(s: &Status) -> Option<Via> {
    s.handover.as_ref().map(|h| h.via)
}

/// Map writes of the agent's last sync (none before the first).
fn writes(s: &Status) -> Option<u64> {
    s.last_sync.as_ref().map(|l| l.writes)
}
