//! Times a full rollout plan over a 5 000-node fleet.
//!
//! `cargo bench -p baton-operator --bench plan`; exits non-zero when the
//! median plan takes longer than the 50 ms target, so a regression is loud.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics

use std::time::{Duration, Instant};

use baton_api::pairpod::Slot;
use baton_operator::crd::{KmeshUpgradeSpec, Strategy};
use baton_operator::plan::{
    plan, Memory, NodeView, PairView, PreflightState, PreflightView, Reported, Standby,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

const NODES: usize = 5_000;
const ROUNDS: usize = 200;
const TARGET: Duration = Duration::from_millis(50);

/// A mixed fleet: mostly outdated, some upgrading, committed, failed, missing,
/// unready and unselected nodes, so every branch of the planner runs.
fn fleet() -> Vec<NodeView> {
    (0..NODES)
        .map(|i| {
            let standby = match i % 50 {
                0 => Standby::Upgrading {
                    image: "agent:v2".into(),
                    elapsed_seconds: 3,
                    report: Some(Reported::Committed),
                    ready: true,
                    kubelet: Default::default(),
                },
                1 => Standby::Upgrading {
                    image: "agent:v2".into(),
                    elapsed_seconds: 3,
                    report: None,
                    ready: false,
                    kubelet: Default::default(),
                },
                _ => Standby::Empty,
            };
            let pod = (i % 97 != 5).then(|| PairView {
                active: if i % 2 == 0 { Slot::A } else { Slot::B },
                active_image: if i % 3 == 0 { "agent:v2" } else { "agent:v1" }.into(),
                ready: i % 101 != 7,
                standby,
                serving: None,
            });
            NodeView {
                // Reverse order so the planner's sort has work to do.
                name: format!("worker-{:05}", NODES - i),
                selected: i % 89 != 3,
                pod,
                failed_image: None,
                // Every node passed its check: the planner weighs them all.
                preflights: vec![PreflightView {
                    pod: format!("check-{i}"),
                    image: "agent:v2".into(),
                    state: PreflightState::Passed,
                }],
            }
        })
        .collect()
}

fn main() {
    let spec = KmeshUpgradeSpec {
        node_selector: Default::default(),
        agent_image: "agent:v2".into(),
        empty_image: "empty:1".into(),
        pod: Default::default(),
        strategy: Strategy {
            max_unavailable: Some(IntOrString::String("10%".into())),
            partition: 100,
            ..Strategy::default()
        },
    };
    let memory = Memory {
        stable_image: Some("agent:v1".into()),
        failed_image: None,
        canary_passed: None,
    };
    let nodes = fleet();
    let mut times = Vec::with_capacity(ROUNDS);
    let mut actions = 0;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let p = plan(&spec, &memory, &nodes).expect("bench input is valid");
        times.push(start.elapsed());
        actions = std::hint::black_box(p).actions.len();
    }
    times.sort();
    let median = times[ROUNDS / 2];
    let p99 = times[ROUNDS * 99 / 100];
    println!(
        "plan over {NODES} nodes ({actions} actions): median {:.3} ms, p99 {:.3} ms, max {:.3} ms (target < {} ms)",
        median.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        times[ROUNDS - 1].as_secs_f64() * 1e3,
        TARGET.as_millis()
    );
    if median > TARGET {
        eprintln!(
            "median plan time is over the {} ms target",
            TARGET.as_millis()
        );
        std::process::exit(1);
    }
}
