//! Scenario tests of the planner, from single nodes to 5 000-node fleets.

use baton_api::pairpod::Slot;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;
use crate::crd::{KmeshUpgradeSpec, NodePhase, OnFailure, RolloutPhase, Strategy};

const OLD: &str = "baton/agent:v1";
const NEW: &str = "baton/agent:v2";
const EMPTY: &str = "baton/empty:1";

/// The spec with `strategy`, preflight off: these scenarios are about the
/// rollout itself; the gates have their own (gate_tests.rs).
fn spec(strategy: Strategy) -> KmeshUpgradeSpec {
    KmeshUpgradeSpec {
        node_selector: Default::default(),
        agent_image: NEW.into(),
        empty_image: EMPTY.into(),
        pod: Default::default(),
        strategy: Strategy {
            preflight: crate::crd::Preflight {
                mode: crate::crd::PreflightMode::Disabled,
                ..Default::default()
            },
            ..strategy
        },
    }
}

fn max(v: &str) -> Strategy {
    Strategy {
        max_unavailable: Some(IntOrString::String(v.into())),
        ..Strategy::default()
    }
}

fn name(i: usize) -> String {
    format!("node-{i:05}")
}

/// A selected node whose ready agent runs `image` in slot a.
fn on(i: usize, image: &str) -> NodeView {
    NodeView {
        name: name(i),
        selected: true,
        pod: Some(PairView {
            active: Slot::A,
            active_image: image.into(),
            ready: true,
            standby: Standby::Empty,
            serving: None,
        }),
        failed_image: None,
        preflights: vec![],
    }
}

fn fleet(n: usize, image: &str) -> Vec<NodeView> {
    (0..n).map(|i| on(i, image)).collect()
}

fn upgrading(mut node: NodeView, image: &str, elapsed: u64, report: Option<Reported>) -> NodeView {
    if let Some(pod) = node.pod.as_mut() {
        pod.standby = Standby::Upgrading {
            image: image.into(),
            elapsed_seconds: elapsed,
            report,
            ready: true,
            kubelet: KubeletWait::default(),
        };
    }
    node
}

fn execute_kind(action: &Action) -> &'static str {
    match action {
        Action::CreatePod { .. } => "create_pod",
        Action::DeletePod { .. } => "delete_pod",
        Action::StartUpgrade { .. } => "start_upgrade",
        Action::StartRollback { .. } => "start_rollback",
        Action::FinishUpgrade { .. } => "finish_upgrade",
        Action::MarkFailed { .. } => "mark_failed",
        Action::ResetStandby { .. } => "reset_standby",
        Action::RunPreflight { .. } => "run_preflight",
        Action::DeletePreflight { .. } => "delete_preflight",
    }
}

fn stable(image: &str) -> Memory {
    Memory {
        stable_image: Some(image.into()),
        failed_image: None,
        canary_passed: None,
    }
}

fn starts(plan: &Plan) -> Vec<&str> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::StartUpgrade { node, .. } | Action::StartRollback { node, .. } => {
                Some(node.as_str())
            }
            _ => None,
        })
        .collect()
}

fn run(spec: &KmeshUpgradeSpec, memory: &Memory, nodes: &[NodeView]) -> Plan {
    plan(spec, memory, nodes).expect("plan succeeds")
}

#[test]
fn empty_fleet_has_nothing_to_do() {
    let p = run(&spec(Strategy::default()), &Memory::default(), &[]);
    assert!(p.actions.is_empty());
    assert_eq!(p.phase, RolloutPhase::Complete);
    assert_eq!(
        p.memory,
        Memory::default(),
        "no node ran anything: nothing is stable"
    );
}

#[test]
fn missing_pods_are_created_and_unselected_ones_deleted() {
    let nodes = vec![
        NodeView {
            name: "b".into(),
            selected: true,
            pod: None,
            failed_image: None,
            preflights: vec![],
        },
        NodeView {
            name: "a".into(),
            selected: false,
            pod: None,
            failed_image: None,
            preflights: vec![],
        },
        NodeView {
            selected: false,
            ..on(0, OLD)
        },
    ];
    let p = run(&spec(Strategy::default()), &Memory::default(), &nodes);
    assert_eq!(
        p.actions,
        vec![
            Action::CreatePod {
                node: "b".into(),
                image: NEW.into()
            },
            Action::DeletePod { node: name(0) },
        ]
    );
    assert_eq!(p.summary.nodes, 1);
    assert_eq!(p.nodes.len(), 1);
    assert_eq!(p.nodes[0].phase, NodePhase::Pending);
    assert_eq!(p.phase, RolloutPhase::Progressing);
}

#[test]
fn one_node_at_a_time_by_default_in_name_order() {
    let mut nodes = fleet(5, OLD);
    nodes.reverse();
    let p = run(&spec(Strategy::default()), &stable(OLD), &nodes);
    assert_eq!(
        p.actions,
        vec![Action::StartUpgrade {
            node: name(0),
            slot: Slot::B,
            image: NEW.into(),
            warm: false,
            soak_seconds: 0,
        }]
    );
    assert_eq!(p.summary.upgrading, 1);
    assert_eq!(p.summary.max_unavailable, 1);
    assert_eq!(p.nodes[0].phase, NodePhase::Upgrading);
    assert_eq!(p.nodes[1].phase, NodePhase::Outdated);
}

#[test]
fn percentage_budget_counts_in_flight_and_unready_nodes() {
    let mut nodes = fleet(10, OLD);
    nodes[3] = upgrading(nodes[3].clone(), NEW, 5, None);
    if let Some(pod) = nodes[7].pod.as_mut() {
        pod.active_image = NEW.into();
        pod.ready = false;
    }
    // 50% of 10 = 5; one in flight and one unready leave room for 3.
    let p = run(&spec(max("50%")), &stable(OLD), &nodes);
    assert_eq!(starts(&p), vec![name(0), name(1), name(2)]);
    assert_eq!(p.summary.upgrading, 4);
    assert_eq!(p.summary.ready, 9);
    assert_eq!(
        p.summary.updated, 0,
        "node 7 runs the image but is not ready"
    );
}

#[test]
fn unready_outdated_nodes_go_first_and_cost_no_budget() {
    let mut nodes = fleet(4, OLD);
    if let Some(pod) = nodes[2].pod.as_mut() {
        pod.ready = false;
    }
    let p = run(&spec(Strategy::default()), &stable(OLD), &nodes);
    // Node 2 is unavailable already; with maxUnavailable 1 nothing else may start.
    assert_eq!(starts(&p), vec![name(2)]);

    let p = run(&spec(max("2")), &stable(OLD), &nodes);
    assert_eq!(starts(&p), vec![name(0), name(2)]);
}

#[test]
fn partition_keeps_the_last_nodes_on_the_old_version() {
    let strategy = Strategy {
        partition: 2,
        ..max("100%")
    };
    let p = run(&spec(strategy.clone()), &stable(OLD), &fleet(5, OLD));
    assert_eq!(starts(&p), vec![name(0), name(1), name(2)]);
    assert_eq!(p.phase, RolloutPhase::Progressing);

    let mut nodes = fleet(5, OLD);
    for node in &mut nodes[..3] {
        if let Some(pod) = node.pod.as_mut() {
            pod.active_image = NEW.into();
        }
    }
    let p = run(&spec(strategy), &stable(OLD), &nodes);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.phase, RolloutPhase::Complete);
    assert_eq!(p.summary.updated, 3);
    assert_eq!(
        p.memory.stable_image.as_deref(),
        Some(OLD),
        "a partitioned fleet is not stable on NEW"
    );
}

#[test]
fn partition_larger_than_the_fleet_upgrades_nothing() {
    let strategy = Strategy {
        partition: 50,
        ..max("100%")
    };
    let p = run(&spec(strategy), &stable(OLD), &fleet(5, OLD));
    assert!(starts(&p).is_empty());
    assert_eq!(p.phase, RolloutPhase::Complete);
}

#[test]
fn paused_finishes_and_resets_but_starts_nothing() {
    let mut nodes = fleet(4, OLD);
    nodes[0] = upgrading(nodes[0].clone(), NEW, 1, Some(Reported::Committed));
    let strategy = Strategy {
        paused: true,
        ..max("100%")
    };
    let p = run(&spec(strategy), &stable(OLD), &nodes);
    assert_eq!(
        p.actions,
        vec![Action::FinishUpgrade {
            node: name(0),
            active: Slot::B,
            retired: Slot::A
        }]
    );
    assert_eq!(p.phase, RolloutPhase::Paused);
    assert_eq!(p.nodes[0].active_slot, Some(Slot::B));
    assert_eq!(p.nodes[0].version.as_deref(), Some(NEW));
    assert_eq!(p.summary.updated, 1);
}

#[test]
fn a_committed_node_is_not_restarted_in_the_same_round() {
    let mut nodes = fleet(1, OLD);
    nodes[0] = upgrading(nodes[0].clone(), NEW, 1, Some(Reported::Committed));
    let mut s = spec(max("100%"));
    s.agent_image = "baton/agent:v3".into();
    let p = run(&s, &stable(OLD), &nodes);
    assert_eq!(p.actions.len(), 1, "{:?}", p.actions);
    assert!(matches!(p.actions[0], Action::FinishUpgrade { .. }));
}

#[test]
fn committed_beats_the_timeout() {
    let mut nodes = fleet(1, OLD);
    nodes[0] = upgrading(nodes[0].clone(), NEW, 10_000, Some(Reported::Committed));
    let p = run(&spec(Strategy::default()), &stable(OLD), &nodes);
    assert!(matches!(p.actions[0], Action::FinishUpgrade { .. }));
    assert_eq!(p.phase, RolloutPhase::Complete);
    assert_eq!(p.memory.stable_image.as_deref(), Some(NEW));
}

#[test]
fn failure_with_pause_resets_the_slot_and_halts_at_once() {
    let mut nodes = fleet(6, OLD);
    nodes[1] = upgrading(
        nodes[1].clone(),
        NEW,
        3,
        Some(Reported::Failed {
            message: "map layout refused".into(),
        }),
    );
    let p = run(&spec(max("100%")), &stable(OLD), &nodes);
    assert_eq!(
        p.actions,
        vec![
            Action::MarkFailed {
                node: name(1),
                image: NEW.into(),
                reason: "map layout refused".into(),
                cause: FailureCause::Handover,
            },
            Action::ResetStandby {
                node: name(1),
                slot: Slot::B
            },
        ],
        "no new start in the round that saw the failure"
    );
    assert_eq!(p.phase, RolloutPhase::Failed);
    assert_eq!(p.memory.failed_image.as_deref(), Some(NEW));
    assert_eq!(p.summary.failed, 1);
    assert_eq!(p.nodes[1].phase, NodePhase::Failed);
    assert_eq!(p.nodes[1].failed_image.as_deref(), Some(NEW));

    // Next round: the latch holds; a new node gets the stable image.
    let mut next = nodes.clone();
    next[1] = NodeView {
        failed_image: Some(NEW.into()),
        ..on(1, OLD)
    };
    next.push(NodeView {
        name: "zz-new".into(),
        selected: true,
        pod: None,
        failed_image: None,
        preflights: vec![],
    });
    let p = run(&spec(max("100%")), &p.memory, &next);
    assert_eq!(
        p.actions,
        vec![Action::CreatePod {
            node: "zz-new".into(),
            image: OLD.into()
        }]
    );
    assert_eq!(p.phase, RolloutPhase::Failed);
}

#[test]
fn handover_timeout_counts_as_failure() {
    let mut nodes = fleet(2, OLD);
    nodes[0] = upgrading(nodes[0].clone(), NEW, 120, None);
    nodes[1] = upgrading(nodes[1].clone(), NEW, 119, None);
    let p = run(&spec(max("100%")), &stable(OLD), &nodes);
    assert_eq!(
        p.actions[0],
        Action::MarkFailed {
            node: name(0),
            image: NEW.into(),
            reason: "handover did not commit within 120s".into(),
            cause: FailureCause::Handover,
        }
    );
    assert_eq!(p.actions.len(), 2);
    assert_eq!(p.nodes[1].phase, NodePhase::Upgrading);
}

#[test]
fn failure_with_rollback_hands_upgraded_nodes_back_ignoring_partition() {
    let mut nodes = fleet(6, NEW);
    nodes[5] = on(5, OLD);
    nodes[4] = upgrading(
        on(4, OLD),
        NEW,
        1,
        Some(Reported::Failed {
            message: "x".into(),
        }),
    );
    let strategy = Strategy {
        on_failure: OnFailure::Rollback,
        partition: 5,
        ..max("2")
    };
    let p = run(&spec(strategy.clone()), &stable(OLD), &nodes);
    assert_eq!(p.phase, RolloutPhase::RollingBack);
    assert_eq!(starts(&p), vec![name(0), name(1)]);
    assert!(p.actions.iter().any(|a| matches!(
        a,
        Action::StartRollback { node, slot: Slot::B, image, warm: false } if node == &name(0) && image == OLD
    )));
    assert_eq!(p.memory.failed_image.as_deref(), Some(NEW));
    assert_eq!(p.memory.stable_image.as_deref(), Some(OLD));
    // The failed node is reset before any rollback starts, although it sorts
    // after them: the pods never show more handovers than the budget.
    let kinds: Vec<&str> = p.actions.iter().map(execute_kind).collect();
    assert_eq!(
        kinds,
        [
            "mark_failed",
            "reset_standby",
            "start_rollback",
            "start_rollback"
        ]
    );

    // Once every node is back on OLD the rollback is done, and stays done.
    let back = fleet(6, OLD);
    let p = run(&spec(strategy), &p.memory, &back);
    assert!(p.actions.is_empty());
    assert_eq!(p.phase, RolloutPhase::RolledBack);
    assert_eq!(p.memory.failed_image.as_deref(), Some(NEW));
}

#[test]
fn rollback_without_a_stable_image_halts() {
    let mut nodes = fleet(3, NEW);
    nodes[0] = upgrading(on(0, OLD), NEW, 500, None);
    let strategy = Strategy {
        on_failure: OnFailure::Rollback,
        ..max("100%")
    };
    let p = run(&spec(strategy), &Memory::default(), &nodes);
    assert_eq!(p.phase, RolloutPhase::Failed);
    assert!(starts(&p).is_empty());
}

#[test]
fn a_node_where_the_goal_failed_is_not_retried() {
    // During a rollback, node 0's handover back to OLD failed once: leave it.
    let mut nodes = fleet(3, NEW);
    nodes[0].failed_image = Some(OLD.into());
    let strategy = Strategy {
        on_failure: OnFailure::Rollback,
        ..max("100%")
    };
    let memory = Memory {
        stable_image: Some(OLD.into()),
        failed_image: Some(NEW.into()),
        canary_passed: None,
    };
    let p = run(&spec(strategy), &memory, &nodes);
    assert_eq!(starts(&p), vec![name(1), name(2)]);
    assert_eq!(p.nodes[0].failed_image.as_deref(), Some(OLD));
}

#[test]
fn a_new_image_clears_the_failure_latch_and_stale_node_failures() {
    let mut nodes = fleet(3, OLD);
    nodes[0].failed_image = Some(NEW.into());
    let memory = Memory {
        stable_image: Some(OLD.into()),
        failed_image: Some(NEW.into()),
        canary_passed: None,
    };
    let mut s = spec(max("100%"));
    s.agent_image = "baton/agent:v3".into();
    let p = run(&s, &memory, &nodes);
    assert_eq!(p.memory.failed_image, None);
    assert_eq!(starts(&p).len(), 3);
    assert_eq!(p.nodes[0].failed_image, None);
    assert_eq!(p.phase, RolloutPhase::Progressing);
}

#[test]
fn in_flight_handovers_to_an_old_goal_finish_before_anything_else() {
    let mut nodes = fleet(2, OLD);
    nodes[0] = upgrading(nodes[0].clone(), NEW, 1, None);
    let mut s = spec(Strategy::default());
    s.agent_image = "baton/agent:v3".into();
    let p = run(&s, &stable(OLD), &nodes);
    assert!(
        p.actions.is_empty(),
        "budget is taken by the in-flight node: {:?}",
        p.actions
    );
    assert_eq!(p.summary.upgrading, 1);
}

#[test]
fn input_order_does_not_change_the_plan() {
    let mut nodes = fleet(50, OLD);
    nodes[7] = upgrading(nodes[7].clone(), NEW, 1, Some(Reported::Committed));
    nodes[9] = upgrading(
        nodes[9].clone(),
        NEW,
        1,
        Some(Reported::Failed {
            message: "m".into(),
        }),
    );
    let a = run(&spec(max("20%")), &stable(OLD), &nodes);
    nodes.reverse();
    nodes.swap(3, 30);
    let b = run(&spec(max("20%")), &stable(OLD), &nodes);
    assert_eq!(a, b);
    let order: Vec<&str> = a.actions.iter().map(Action::node).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);
}

#[test]
fn bad_input_is_an_error() {
    let nodes = vec![on(1, OLD), on(1, NEW)];
    assert_eq!(
        plan(&spec(Strategy::default()), &Memory::default(), &nodes),
        Err(PlanError::DuplicateNode(name(1)))
    );
    assert!(matches!(
        plan(&spec(max("ten")), &Memory::default(), &fleet(1, OLD)),
        Err(PlanError::Budget(_))
    ));
}

/// Plays rollouts round by round: the planner's actions are applied to the
/// views as the controller and the agents would.
#[path = "gate_tests.rs"]
mod gate_tests;

mod simulation {
    use super::*;

    /// Applies a plan; `verdict` says whether a started handover commits.
    pub(super) fn apply(
        nodes: &mut Vec<NodeView>,
        plan: &Plan,
        verdict: &dyn Fn(&str, &str) -> bool,
    ) {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let index = |n: &str, nodes: &Vec<NodeView>| {
            nodes
                .binary_search_by(|v| v.name.as_str().cmp(n))
                .expect("known node")
        };
        for action in &plan.actions {
            let i = index(action.node(), nodes);
            let pod = nodes[i].pod.as_mut();
            match (action, pod) {
                (Action::CreatePod { image, .. }, _) => {
                    nodes[i].pod = Some(PairView {
                        active: Slot::A,
                        active_image: image.clone(),
                        ready: true,
                        standby: Standby::Empty,
                        serving: None,
                    })
                }
                (Action::DeletePod { .. }, _) => nodes[i].pod = None,
                (
                    Action::StartUpgrade {
                        slot, image, warm, ..
                    },
                    Some(pod),
                )
                | (
                    Action::StartRollback {
                        slot, image, warm, ..
                    },
                    Some(pod),
                ) => {
                    assert_eq!(*slot, pod.active.other());
                    let was_warm = matches!(&pod.standby,
                        Standby::Warm { image: w, running: true } if w == image);
                    assert_eq!(
                        *warm, was_warm,
                        "warm exactly when the standby runs {image}"
                    );
                    pod.standby = Standby::Upgrading {
                        image: image.clone(),
                        elapsed_seconds: 0,
                        report: None,
                        ready: true,
                        kubelet: KubeletWait::default(),
                    };
                }
                (Action::FinishUpgrade { active, .. }, Some(pod)) => {
                    let Standby::Upgrading { image, .. } = &pod.standby else {
                        panic!("finish without handover")
                    };
                    // The old agent stays in its slot as the warm standby.
                    let old = std::mem::replace(&mut pod.active_image, image.clone());
                    pod.active = *active;
                    pod.standby = Standby::Warm {
                        image: old,
                        running: true,
                    };
                    // Committed long enough ago for any canary soak.
                    pod.serving = Some(Serving {
                        committed_seconds_ago: 3600,
                        datapath: None,
                        restarted: false,
                    });
                }
                (Action::ResetStandby { .. }, Some(pod)) => pod.standby = Standby::Empty,
                (Action::MarkFailed { .. }, _) => {}
                // Checks in this simulation pass at once.
                (Action::RunPreflight { node, image }, _) => {
                    nodes[i].preflights.push(PreflightView {
                        pod: format!("check-{node}-{image}"),
                        image: image.clone(),
                        state: PreflightState::Passed,
                    })
                }
                (Action::DeletePreflight { pod, .. }, _) => {
                    nodes[i].preflights.retain(|c| c.pod != *pod)
                }
                (a, None) => panic!("{a:?} on a node without pod"),
            }
        }
        // Handovers started so far report before the next round.
        for node in nodes.iter_mut() {
            let name = node.name.clone();
            if let Some(PairView {
                standby: Standby::Upgrading { image, report, .. },
                ..
            }) = node.pod.as_mut()
            {
                *report = Some(if verdict(&name, image) {
                    Reported::Committed
                } else {
                    Reported::Failed {
                        message: "simulated".into(),
                    }
                });
            }
        }
        for outcome in &plan.nodes {
            let i = index(&outcome.name, nodes);
            nodes[i].failed_image = outcome.failed_image.clone();
        }
    }

    /// Runs rounds until nothing changes; checks maxUnavailable every round.
    pub(super) fn play(
        spec: &KmeshUpgradeSpec,
        mut memory: Memory,
        nodes: &mut Vec<NodeView>,
        verdict: &dyn Fn(&str, &str) -> bool,
    ) -> (Plan, usize) {
        for round in 0..10_000 {
            let p = run(spec, &memory, nodes);
            assert!(
                p.summary.upgrading <= p.summary.max_unavailable,
                "round {round}: {} in flight > budget {}",
                p.summary.upgrading,
                p.summary.max_unavailable
            );
            if p.actions.is_empty() {
                return (p, round);
            }
            apply(nodes, &p, verdict);
            memory = p.memory.clone();
        }
        panic!("rollout did not settle");
    }

    #[test]
    fn five_thousand_nodes_at_ten_percent() {
        let mut nodes = fleet(5000, OLD);
        let (p, rounds) = play(&spec(max("10%")), stable(OLD), &mut nodes, &|_, _| true);
        assert_eq!(p.phase, RolloutPhase::Complete);
        assert_eq!(p.summary.updated, 5000);
        assert_eq!(p.memory.stable_image.as_deref(), Some(NEW));
        // 10 batches of 500, each: start, then finish (+ start of the next).
        assert_eq!(rounds, 11);
        assert!(nodes
            .iter()
            .all(|n| n.pod.as_ref().map(|p| p.active) == Some(Slot::B)));
    }

    #[test]
    fn five_thousand_nodes_with_partition_and_fixed_budget() {
        let mut nodes = fleet(5000, OLD);
        let strategy = Strategy {
            partition: 1234,
            ..max("250")
        };
        let (p, _) = play(&spec(strategy), stable(OLD), &mut nodes, &|_, _| true);
        assert_eq!(p.phase, RolloutPhase::Complete);
        assert_eq!(p.summary.updated, 5000 - 1234);
        // The partition keeps the last names, deterministically.
        assert_eq!(
            nodes[3765].pod.as_ref().map(|p| p.active_image.as_str()),
            Some(NEW)
        );
        assert_eq!(
            nodes[3766].pod.as_ref().map(|p| p.active_image.as_str()),
            Some(OLD)
        );
        assert_eq!(p.memory.stable_image.as_deref(), Some(OLD));
    }

    #[test]
    fn five_thousand_nodes_fresh_install_then_upgrade() {
        let mut nodes: Vec<NodeView> = (0..5000)
            .map(|i| NodeView {
                name: name(i),
                selected: i % 5 != 0,
                pod: None,
                failed_image: None,
                preflights: vec![],
            })
            .collect();
        let mut s = spec(max("5%"));
        s.agent_image = OLD.into();
        let (p, rounds) = play(&s, Memory::default(), &mut nodes, &|_, _| true);
        assert_eq!(rounds, 1, "creation is not rate limited");
        assert_eq!(p.summary.nodes, 4000);
        assert_eq!(p.memory.stable_image.as_deref(), Some(OLD));
        let (p, _) = play(&spec(max("5%")), p.memory, &mut nodes, &|_, _| true);
        assert_eq!(p.summary.updated, 4000);
        assert_eq!(p.phase, RolloutPhase::Complete);
    }

    #[test]
    fn five_thousand_nodes_failure_pauses_the_fleet() {
        let mut nodes = fleet(5000, OLD);
        let bad = name(1700);
        let (p, _) = play(&spec(max("7%")), stable(OLD), &mut nodes, &|n, _| n != bad);
        assert_eq!(p.phase, RolloutPhase::Failed);
        assert_eq!(p.summary.failed, 1);
        // Batches of 350 in name order: the failing node sat in the 5th batch,
        // whose other nodes committed; nothing started after the failure.
        assert_eq!(p.summary.updated, 5 * 350 - 1);
        assert_eq!(p.nodes[1700].phase, NodePhase::Failed);
    }

    #[test]
    fn five_thousand_nodes_failure_rolls_the_fleet_back() {
        let mut nodes = fleet(5000, OLD);
        let strategy = Strategy {
            on_failure: OnFailure::Rollback,
            ..max("10%")
        };
        let bad = name(4321);
        let (p, _) = play(&spec(strategy), stable(OLD), &mut nodes, &|n, img| {
            !(n == bad && img == NEW)
        });
        assert_eq!(p.phase, RolloutPhase::RolledBack);
        assert_eq!(p.summary.updated, 0);
        assert!(nodes
            .iter()
            .all(|n| n.pod.as_ref().map(|p| p.active_image.as_str()) == Some(OLD)));
        assert_eq!(p.memory.failed_image.as_deref(), Some(NEW));
    }

    #[test]
    fn five_thousand_nodes_paused_midway_then_resumed() {
        let mut nodes = fleet(5000, OLD);
        let s = spec(max("1000"));
        let p = run(&s, &stable(OLD), &nodes);
        apply(&mut nodes, &p, &|_, _| true);
        let paused = spec(Strategy {
            paused: true,
            ..max("1000")
        });
        let (p, _) = play(&paused, p.memory, &mut nodes, &|_, _| true);
        assert_eq!(p.phase, RolloutPhase::Paused);
        assert_eq!(p.summary.updated, 1000);
        let (p, _) = play(&s, p.memory, &mut nodes, &|_, _| true);
        assert_eq!(p.phase, RolloutPhase::Complete);
        assert_eq!(p.summary.updated, 5000);
    }
}

/// A node whose agent runs `image` in slot a but never became ready (no
/// report, or its container is not ready).
fn unready(i: usize, image: &str) -> NodeView {
    let mut n = on(i, image);
    if let Some(pod) = n.pod.as_mut() {
        pod.ready = false;
    }
    n
}

#[test]
fn only_ready_agents_count_as_updated_complete_or_stable() {
    // Every node runs the goal, one agent never became ready.
    let mut nodes = fleet(3, NEW);
    nodes[2] = unready(2, NEW);
    let p = run(&spec(max("100%")), &stable(OLD), &nodes);
    assert_eq!((p.summary.updated, p.summary.ready), (2, 2));
    assert_ne!(
        p.phase,
        RolloutPhase::Complete,
        "an unready agent is not done"
    );
    assert_eq!(p.nodes[2].phase, NodePhase::Pending);
    assert_eq!(
        p.memory.stable_image.as_deref(),
        Some(OLD),
        "the image has not served everywhere: it is no rollback target yet"
    );
    // Once it reports, the rollout completes and the image becomes stable.
    let p = run(&spec(max("100%")), &stable(OLD), &fleet(3, NEW));
    assert_eq!(p.summary.updated, 3);
    assert_eq!(p.phase, RolloutPhase::Complete);
    assert_eq!(p.memory.stable_image.as_deref(), Some(NEW));
}

#[test]
fn a_fresh_install_whose_agents_never_serve_sets_no_stable_image() {
    let nodes: Vec<_> = (0..2).map(|i| unready(i, NEW)).collect();
    let p = run(&spec(max("100%")), &Memory::default(), &nodes);
    assert_eq!((p.summary.updated, p.summary.ready), (0, 0));
    assert_eq!(p.phase, RolloutPhase::Progressing);
    assert_eq!(p.memory.stable_image, None);
    // A later failure has nothing to roll back to: it halts.
    let mut s = spec(Strategy {
        on_failure: OnFailure::Rollback,
        ..max("100%")
    });
    s.agent_image = "baton/agent:v3".into();
    let mut nodes = nodes;
    nodes[0] = upgrading(
        nodes[0].clone(),
        "baton/agent:v3",
        1,
        Some(Reported::Failed {
            message: "x".into(),
        }),
    );
    let p = run(&s, &p.memory, &nodes);
    assert_eq!(p.phase, RolloutPhase::Failed);
    assert_eq!(starts(&p), Vec::<&str>::new());
}

#[test]
fn a_running_warm_standby_of_the_goal_is_woken_with_annotations_only() {
    let with_standby = |i: usize, image: &str, running: bool| {
        let mut n = on(i, OLD);
        if let Some(pod) = n.pod.as_mut() {
            pod.standby = Standby::Warm {
                image: image.into(),
                running,
            };
        }
        n
    };
    let nodes = vec![
        with_standby(0, NEW, true),
        // Not running (e.g. the kubelet is restarting it): patch the image.
        with_standby(1, NEW, false),
        // A standby of another image: the slot's image must change.
        with_standby(2, "baton/agent:v0", true),
        on(3, OLD),
    ];
    let p = run(&spec(max("100%")), &stable(OLD), &nodes);
    let warm: Vec<(&str, bool)> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::StartUpgrade { node, warm, .. } => Some((node.as_str(), *warm)),
            _ => None,
        })
        .collect();
    assert_eq!(
        warm,
        [
            (name(0).as_str(), true),
            (name(1).as_str(), false),
            (name(2).as_str(), false),
            (name(3).as_str(), false)
        ]
    );
    // A rollback to the image the standby still runs is warm too.
    let mut s = spec(Strategy {
        on_failure: OnFailure::Rollback,
        ..max("100%")
    });
    s.agent_image = "baton/agent:v3".into();
    let mut back = on(0, "baton/agent:v3");
    if let Some(pod) = back.pod.as_mut() {
        pod.standby = Standby::Warm {
            image: OLD.into(),
            running: true,
        };
    }
    let memory = Memory {
        stable_image: Some(OLD.into()),
        failed_image: Some("baton/agent:v3".into()),
        canary_passed: None,
    };
    let p = run(&s, &memory, &[back]);
    assert_eq!(
        p.actions,
        vec![Action::StartRollback {
            node: name(0),
            slot: Slot::B,
            image: OLD.into(),
            warm: true
        }]
    );
}

#[test]
fn finishing_keeps_the_old_agent_as_standby_and_flips_back_warm() {
    // v1 -> v2 -> v1 -> v2 on one node: after the first (cold) start every
    // flip wakes the standby; no container is restarted.
    let mut nodes = fleet(1, OLD);
    let mut memory = stable(OLD);
    let mut warm_starts = Vec::new();
    for goal in [NEW, OLD, NEW] {
        let mut s = spec(Strategy::default());
        s.agent_image = goal.into();
        let p = run(&s, &memory, &nodes);
        let Some(Action::StartUpgrade { slot, warm, .. }) = p.actions.first().cloned() else {
            panic!("{goal}: {:?}", p.actions);
        };
        warm_starts.push(warm);
        let pod = nodes[0].pod.as_mut().expect("pod");
        assert_eq!(slot, pod.active.other());
        pod.standby = upgrading_standby(goal, Some(Reported::Committed));
        let p = run(&s, &p.memory, &nodes);
        assert!(
            matches!(&p.actions[..], [Action::FinishUpgrade { .. }]),
            "{:?}",
            p.actions
        );
        let pod = nodes[0].pod.as_mut().expect("pod");
        let retired = std::mem::replace(&mut pod.active_image, goal.into());
        pod.active = slot;
        pod.standby = Standby::Warm {
            image: retired,
            running: true,
        };
        memory = p.memory.clone();
    }
    assert_eq!(warm_starts, [false, true, true]);
}

fn upgrading_standby(image: &str, report: Option<Reported>) -> Standby {
    Standby::Upgrading {
        image: image.into(),
        elapsed_seconds: 1,
        report,
        ready: true,
        kubelet: KubeletWait::default(),
    }
}

fn held_back(mut node: NodeView, elapsed: u64, backoff: u64, message: &str) -> NodeView {
    node = upgrading(node, NEW, elapsed, None);
    if let Some(PairView {
        standby: Standby::Upgrading { kubelet, .. },
        ..
    }) = node.pod.as_mut()
    {
        *kubelet = KubeletWait {
            message: Some(message.into()),
            backoff_seconds: backoff,
        };
    }
    node
}

#[test]
fn kubelet_back_off_extends_the_deadline_up_to_a_cap() {
    let wait = "kubelet back-off 40s before starting slot-b (back-off 40s restarting failed container=slot-b)";
    let nodes = vec![
        // 130 s elapsed, 40 of them in back-off: 90 s count, not timed out.
        held_back(on(0, OLD), 130, 40, wait),
        // The same without back-off: timed out.
        held_back(on(1, OLD), 130, 0, "kubelet: slot-b waiting (ErrImagePull)"),
        // Back-off beyond the cap: at most 300 s are forgiven.
        held_back(on(2, OLD), 120 + BACKOFF_GRACE_SECONDS, 10_000, wait),
        held_back(on(3, OLD), 119 + BACKOFF_GRACE_SECONDS, 10_000, wait),
    ];
    let p = run(&spec(max("100%")), &stable(OLD), &nodes);
    let failed: Vec<&str> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::MarkFailed { node, .. } => Some(node.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(failed, [name(1), name(2)]);
    assert_eq!(p.nodes[0].phase, NodePhase::Upgrading);
    assert_eq!(
        p.nodes[0].message.as_deref(),
        Some(wait),
        "the node says what the kubelet does"
    );
    assert_eq!(p.nodes[3].message.as_deref(), Some(wait));
    let reason = |i: usize| {
        p.actions.iter().find_map(|a| match a {
            Action::MarkFailed { node, reason, .. } if *node == name(i) => Some(reason.clone()),
            _ => None,
        })
    };
    assert_eq!(
        reason(1).as_deref(),
        Some("handover did not commit within 120s; kubelet: slot-b waiting (ErrImagePull)")
    );
    assert_eq!(
        reason(2).as_deref(),
        Some(
            format!("handover did not commit within 120s (plus 300s of kubelet back-off); {wait}")
                .as_str()
        )
    );
}

#[test]
fn a_failure_is_the_nodes_outcome_of_the_round() {
    let mut nodes = fleet(2, OLD);
    nodes[0] = upgrading(nodes[0].clone(), NEW, 120, None);
    let p = run(&spec(max("100%")), &stable(OLD), &nodes);
    assert_eq!(
        p.nodes[0].failure.as_deref(),
        Some("handover did not commit within 120s")
    );
    assert_eq!(p.nodes[0].message, p.nodes[0].failure);
    assert_eq!(p.nodes[1].failure, None);
}
