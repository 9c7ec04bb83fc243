//! The preflight and canary gates in the planner.

use baton_api::datapath::{DatapathRate, DatapathWindow, OutcomeCounts};

use super::simulation::play;
use super::*;
use crate::crd::{Canary, CanaryPhase, Preflight, PreflightMode};

fn with_preflight(mode: PreflightMode, strategy: Strategy) -> KmeshUpgradeSpec {
    let mut s = spec(strategy);
    s.strategy.preflight = Preflight {
        mode,
        timeout_seconds: 60,
    };
    s
}

fn check(node: &NodeView, image: &str, state: PreflightState) -> PreflightView {
    PreflightView {
        pod: format!("check-{}", node.name),
        image: image.into(),
        state,
    }
}

fn running(elapsed_seconds: u64) -> PreflightState {
    PreflightState::Running {
        elapsed_seconds,
        wait: None,
    }
}

fn kinds(p: &Plan) -> Vec<(&str, &'static str)> {
    p.actions
        .iter()
        .map(|a| (a.node(), super::execute_kind(a)))
        .collect()
}

#[test]
fn all_nodes_check_before_any_handover() {
    let spec = with_preflight(PreflightMode::AllNodes, max("100%"));
    let mut nodes = fleet(3, OLD);
    let p = run(&spec, &stable(OLD), &nodes);
    assert_eq!(
        kinds(&p),
        [
            (name(0).as_str(), "run_preflight"),
            (name(1).as_str(), "run_preflight"),
            (name(2).as_str(), "run_preflight")
        ]
    );
    assert!(starts(&p).is_empty());
    assert!(p.waiting);
    let t = p.preflight.expect("a tally");
    assert_eq!((t.running, t.passed, t.pending), (3, 0, 0));

    // Two passed, one still runs: nobody hands over yet.
    nodes[0].preflights = vec![check(&nodes[0], NEW, PreflightState::Passed)];
    nodes[1].preflights = vec![check(&nodes[1], NEW, PreflightState::Passed)];
    nodes[2].preflights = vec![check(&nodes[2], NEW, running(5))];
    let p = run(&spec, &stable(OLD), &nodes);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(
        p.nodes[2].message.as_deref(),
        Some("preflight of baton/agent:v2 running")
    );
    // All passed: every node starts (maxUnavailable 100 %).
    nodes[2].preflights = vec![check(&nodes[2], NEW, PreflightState::Passed)];
    let p = run(&spec, &stable(OLD), &nodes);
    assert_eq!(starts(&p).len(), 3);
    let t = p.preflight.expect("a tally");
    assert_eq!((t.passed, t.failed, t.running), (3, 0, 0));
}

#[test]
fn nodes_the_partition_keeps_are_not_checked() {
    let spec = with_preflight(
        PreflightMode::AllNodes,
        Strategy {
            partition: 2,
            ..max("100%")
        },
    );
    let p = run(&spec, &stable(OLD), &fleet(5, OLD));
    let checked: Vec<&str> = p.actions.iter().map(|a| a.node()).collect();
    assert_eq!(checked, [name(0), name(1), name(2)]);
    let t = p.preflight.expect("a tally");
    assert_eq!((t.running, t.pending), (3, 0), "the kept nodes are not due");
}

#[test]
fn one_failed_check_stops_the_rollout_before_any_handover() {
    let mut nodes = fleet(3, OLD);
    for n in &mut nodes {
        n.preflights = vec![check(n, NEW, PreflightState::Passed)];
    }
    nodes[1].preflights = vec![check(
        &nodes[1],
        NEW,
        PreflightState::Failed {
            message: "programs: baton_connect4 rejected by the verifier".into(),
        },
    )];
    for on_failure in [OnFailure::Pause, OnFailure::Rollback] {
        let spec = with_preflight(
            PreflightMode::AllNodes,
            Strategy {
                on_failure,
                ..max("100%")
            },
        );
        let p = run(&spec, &stable(OLD), &nodes);
        assert!(starts(&p).is_empty(), "{:?}", p.actions);
        let Some(Action::MarkFailed { reason, cause, .. }) = p.actions.first() else {
            panic!("{:?}", p.actions)
        };
        assert_eq!(*cause, FailureCause::Preflight);
        assert!(reason.contains("rejected by the verifier"), "{reason}");
        assert_eq!(p.memory.failed_image.as_deref(), Some(NEW));
        assert_eq!(p.nodes[1].phase, NodePhase::Failed);
        let t = p
            .preflight
            .as_ref()
            .expect("the tally, also while rolling back");
        assert_eq!((t.passed, t.failed, t.running), (2, 1, 0), "{on_failure:?}");
        // Not a handover: the node's last handover stays what it was.
        assert_eq!(p.nodes[1].failure, None);
        assert!(matches!(
            p.phase,
            RolloutPhase::Failed | RolloutPhase::RolledBack
        ));
        // The next round does not report it again.
        let mut again = nodes.clone();
        again[1].failed_image = Some(NEW.into());
        let q = run(&spec, &p.memory, &again);
        assert!(
            q.actions
                .iter()
                .all(|a| !matches!(a, Action::MarkFailed { .. } | Action::StartUpgrade { .. })),
            "{:?}",
            q.actions
        );
    }
}

#[test]
fn each_node_checks_right_before_its_own_handover() {
    let spec = with_preflight(PreflightMode::EachNode, Strategy::default());
    let mut nodes = fleet(3, OLD);
    let p = run(&spec, &stable(OLD), &nodes);
    assert_eq!(kinds(&p), [(name(0).as_str(), "run_preflight")]);
    nodes[0].preflights = vec![check(&nodes[0], NEW, running(3))];
    let p = run(&spec, &stable(OLD), &nodes);
    assert!(p.actions.is_empty(), "the running check holds the budget");
    nodes[0].preflights = vec![check(&nodes[0], NEW, PreflightState::Passed)];
    let p = run(&spec, &stable(OLD), &nodes);
    assert_eq!(starts(&p), [name(0).as_str()]);
    let t = p.preflight.expect("a tally");
    assert_eq!((t.passed, t.pending), (1, 2));
}

#[test]
fn a_check_past_its_timeout_fails_and_goes() {
    let spec = with_preflight(PreflightMode::AllNodes, Strategy::default());
    let mut nodes = fleet(1, OLD);
    nodes[0].preflights = vec![PreflightView {
        pod: "check-0".into(),
        image: NEW.into(),
        state: PreflightState::Running {
            elapsed_seconds: 61,
            wait: Some("kubelet: ErrImageNeverPull".into()),
        },
    }];
    let p = run(&spec, &stable(OLD), &nodes);
    assert_eq!(
        kinds(&p),
        [
            (name(0).as_str(), "mark_failed"),
            (name(0).as_str(), "delete_preflight")
        ]
    );
    let Action::MarkFailed { reason, .. } = &p.actions[0] else {
        unreachable!()
    };
    assert!(
        reason.contains("within 60s") && reason.contains("ErrImageNeverPull"),
        "{reason}"
    );
}

#[test]
fn checks_of_other_images_and_of_upgraded_nodes_are_removed() {
    let spec = with_preflight(PreflightMode::AllNodes, Strategy::default());
    let mut nodes = fleet(2, NEW);
    nodes[0].preflights = vec![check(&nodes[0], NEW, PreflightState::Passed)];
    nodes[1].preflights = vec![check(&nodes[1], "baton/agent:v0", PreflightState::Passed)];
    let p = run(&spec, &stable(OLD), &nodes);
    assert_eq!(
        kinds(&p),
        [
            (name(0).as_str(), "delete_preflight"),
            (name(1).as_str(), "delete_preflight")
        ]
    );
}

#[test]
fn a_rollback_needs_no_check() {
    let spec = with_preflight(
        PreflightMode::AllNodes,
        Strategy {
            on_failure: OnFailure::Rollback,
            ..Strategy::default()
        },
    );
    let nodes = fleet(2, NEW);
    let memory = Memory {
        stable_image: Some(OLD.into()),
        failed_image: Some(NEW.into()),
        canary_passed: None,
    };
    let p = run(&spec, &memory, &nodes);
    assert_eq!(kinds(&p), [(name(0).as_str(), "start_rollback")]);
}

fn canary(soak: i32) -> Strategy {
    Strategy {
        canary: Some(Canary {
            nodes: 2,
            soak_seconds: soak,
            ..Canary::default()
        }),
        ..max("100%")
    }
}

fn window(redirected: u64, refused: u64, last: bool) -> DatapathWindow {
    DatapathWindow {
        before: Some(DatapathRate {
            window_ms: 30_000,
            counts: OutcomeCounts {
                redirected: 3000,
                ..OutcomeCounts::default()
            },
        }),
        after: OutcomeCounts {
            redirected,
            no_endpoint: refused,
            ..OutcomeCounts::default()
        },
        after_ms: 20_000,
        syncs: 4,
        sync_errors: 0,
        last,
    }
}

/// Node `i` runs NEW since a commit `ago` seconds back, with `w` reported.
fn committed(i: usize, ago: u64, w: DatapathWindow) -> NodeView {
    let mut n = on(i, NEW);
    if let Some(pod) = n.pod.as_mut() {
        pod.serving = Some(Serving {
            committed_seconds_ago: ago,
            datapath: Some(w),
            restarted: false,
        });
    }
    n
}

#[test]
fn the_canary_holds_the_rollout_to_its_nodes_until_the_soak_ends() {
    let spec = spec(canary(60));
    let mut nodes = fleet(5, OLD);
    let p = run(&spec, &stable(OLD), &nodes);
    assert_eq!(starts(&p), [name(0).as_str(), name(1).as_str()]);
    for a in &p.actions {
        assert!(
            matches!(
                a,
                Action::StartUpgrade {
                    soak_seconds: 60,
                    ..
                }
            ),
            "canaries soak: {a:?}"
        );
    }
    let c = p.canary.expect("a canary");
    assert_eq!(c.phase, CanaryPhase::Upgrading);

    // Both committed, 20 s into the soak, clean: soaking, nothing starts.
    nodes[0] = committed(0, 30, window(1000, 0, false));
    nodes[1] = committed(1, 20, window(1000, 0, false));
    let p = run(&spec, &stable(OLD), &nodes);
    assert!(starts(&p).is_empty(), "{:?}", p.actions);
    let c = p.canary.expect("a canary");
    assert_eq!(
        (c.phase, c.soaked_seconds),
        (CanaryPhase::Soaking, Some(20))
    );
    assert!(p.waiting);

    // The soak is over and both sent their last report: the rest goes.
    nodes[0] = committed(0, 70, window(3000, 0, true));
    nodes[1] = committed(1, 60, window(3000, 0, true));
    let p = run(&spec, &stable(OLD), &nodes);
    assert_eq!(
        p.canary.as_ref().map(|c| c.phase),
        Some(CanaryPhase::Passed)
    );
    assert_eq!(starts(&p).len(), 3);
    assert!(p.actions.iter().all(|a| matches!(
        a,
        Action::StartUpgrade {
            soak_seconds: 0,
            ..
        }
    )));
    assert_eq!(p.memory.canary_passed.as_deref(), Some(NEW));
    // Remembered: the next round needs no canary any more.
    let q = run(&spec, &p.memory, &nodes);
    assert!(q.canary.is_none());
    assert_eq!(starts(&q).len(), 3);
}

#[test]
fn a_canary_that_refuses_connects_is_rolled_back_with_the_numbers() {
    let spec = spec(Strategy {
        on_failure: OnFailure::Rollback,
        ..canary(60)
    });
    let mut nodes = fleet(5, OLD);
    nodes[0] = committed(0, 30, window(750, 250, false));
    nodes[1] = committed(1, 30, window(1000, 0, false));
    let p = run(&spec, &stable(OLD), &nodes);
    let c = p.canary.clone().expect("a canary");
    assert_eq!(c.phase, CanaryPhase::Failed);
    let why = c.message.expect("the tripped threshold");
    assert!(
        why.contains(&name(0)) && why.contains("250 of 1000"),
        "{why}"
    );
    assert!(matches!(
        p.actions.first(),
        Some(Action::MarkFailed {
            cause: FailureCause::Canary,
            ..
        })
    ));
    assert_eq!(p.phase, RolloutPhase::RollingBack);
    // Both canaries go back to the stable image, nobody else moves.
    let back: Vec<&str> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::StartRollback { node, image, .. } if image == OLD => Some(node.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(back, [name(0).as_str(), name(1).as_str()]);
    assert!(p.memory.canary_passed.is_none());
}

#[test]
fn a_soaking_canary_is_neither_complete_nor_stable() {
    // One node: the canary is the whole fleet.
    let spec = spec(canary(60));
    let nodes = vec![committed(0, 10, window(1000, 0, false))];
    let p = run(&spec, &stable(OLD), &nodes);
    assert_eq!(
        p.canary.as_ref().map(|c| c.phase),
        Some(CanaryPhase::Soaking)
    );
    assert_eq!(p.phase, RolloutPhase::Progressing);
    assert_eq!(
        p.memory.stable_image.as_deref(),
        Some(OLD),
        "OLD stays the rollback target"
    );
    let nodes = vec![committed(0, 61, window(1000, 0, true))];
    let p = run(&spec, &stable(OLD), &nodes);
    assert_eq!(p.phase, RolloutPhase::Complete);
    assert_eq!(p.memory.stable_image.as_deref(), Some(NEW));
}

#[test]
fn no_canary_for_a_first_install_or_the_stable_image() {
    let spec = spec(canary(60));
    let nodes = fleet(3, OLD);
    // Nothing stable yet: there is no old image to judge against.
    let p = run(&spec, &Memory::default(), &nodes);
    assert!(p.canary.is_none());
    assert_eq!(starts(&p).len(), 3);
}

#[test]
fn a_fleet_rolls_out_through_both_gates() {
    let spec = with_preflight(PreflightMode::AllNodes, canary(60));
    let mut nodes = fleet(50, OLD);
    let (p, _) = play(&spec, stable(OLD), &mut nodes, &|_, _| true);
    assert_eq!(p.phase, RolloutPhase::Complete);
    assert_eq!(p.summary.updated, 50);
    assert!(
        nodes.iter().all(|n| n.preflights.is_empty()),
        "checks cleaned up"
    );
}
