//! The planning algorithm.

use baton_api::pairpod::Slot;

use crate::crd::{
    CanaryPhase, KmeshUpgradeSpec, NodePhase, OnFailure, PreflightMode, RolloutPhase,
};

use super::action::{
    Action, CanaryOutcome, FailureCause, NodeOutcome, Plan, PreflightTally, Summary,
};
use super::budget::{max_unavailable, BudgetError};
use super::gates::{judge, preflight_failure, preflight_of, soak_done};
use super::model::{KubeletWait, Memory, NodeView, PreflightState, Reported, Standby};

/// Most seconds of kubelet crash-loop back-off that a handover's deadline is
/// extended by: the kubelet's own back-off limit (5 min, pkg/kubelet
/// `MaxContainerBackOff`). A handover can so take at most
/// `handoverTimeoutSeconds` + 300 s before it counts as failed.
pub const BACKOFF_GRACE_SECONDS: u64 = 300;

/// Input the planner cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// `maxUnavailable` could not be resolved.
    #[error(transparent)]
    Budget(#[from] BudgetError),
    /// Two views describe the same node; the controller's index is corrupt.
    #[error("node {0:?} appears more than once in the planner input")]
    DuplicateNode(String),
}

/// How the rollout may move this round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Upgrade towards the spec's image.
    Normal,
    /// `spec.strategy.paused`: finish what runs, start nothing.
    Paused,
    /// A failure holds the rollout (onFailure: Pause, or nothing to roll back to).
    Halted,
    /// A failure sends upgraded nodes back to the stable image.
    RollingBack,
}

/// A node after this round's transitions (before new starts).
#[derive(Clone, Copy, Debug)]
enum State<'a> {
    /// Not selected: nothing to report.
    Unselected,
    /// Selected, no pod yet: created this round.
    Missing,
    /// No handover under way; `image` runs in `active`.
    Idle {
        active: Slot,
        image: &'a str,
        ready: bool,
        /// Finished or reset this round: leave it alone until the next one.
        touched: bool,
        /// Image of a running warm standby in the other slot.
        warm: Option<&'a str>,
    },
    /// A handover to `image` is under way; `wait` is what the kubelet says.
    InFlight {
        image: &'a str,
        ready: bool,
        wait: Option<&'a str>,
    },
}

/// Plans the next round of a rollout. Deterministic: nodes are handled in
/// name order whatever the input order, and the same input gives the same plan.
pub fn plan(
    spec: &KmeshUpgradeSpec,
    memory: &Memory,
    nodes: &[NodeView],
) -> Result<Plan, PlanError> {
    let mut order: Vec<&NodeView> = nodes.iter().collect();
    order.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    if let Some(pair) = order.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(PlanError::DuplicateNode(pair[0].name.clone()));
    }
    let selected = order.iter().filter(|n| n.selected).count();
    let selected_u32 = u32::try_from(selected).unwrap_or(u32::MAX);
    let budget = max_unavailable(spec.strategy.max_unavailable.as_ref(), selected_u32)?;
    let desired = spec.agent_image.as_str();
    let timeout = u64::try_from(spec.strategy.handover_timeout_seconds.max(1)).unwrap_or(1);
    let partition = usize::try_from(spec.strategy.partition.max(0)).unwrap_or(0);

    // Pass 1: per-node transitions that do not depend on the fleet (finish,
    // fail, create, delete). Actions are collected per node so that the
    // output stays in node order once starts are added.
    let mut actions: Vec<Vec<Action>> = vec![Vec::new(); order.len()];
    let mut states: Vec<State> = Vec::with_capacity(order.len());
    let mut failed_now: Vec<Option<String>> = vec![None; order.len()];
    let mut failures: Vec<Option<String>> = vec![None; order.len()];
    // Only a handover's own failure becomes the node's last handover.
    let mut handover_failures: Vec<Option<String>> = vec![None; order.len()];
    let preflight_mode = spec.strategy.preflight.mode;
    let preflight_timeout =
        u64::try_from(spec.strategy.preflight.timeout_seconds.max(1)).unwrap_or(1);
    for (i, node) in order.iter().enumerate() {
        let state = transition(node, timeout, &mut actions[i], &mut failed_now[i]);
        // A failed check of the spec's image fails it on this node, once.
        if let State::Idle { image, .. } = state {
            let failure = (preflight_mode != PreflightMode::Disabled
                && image != desired
                && failed_now[i].is_none()
                && node.failed_image.as_deref() != Some(desired))
            .then(|| preflight_failure(node, desired, preflight_timeout))
            .flatten();
            if let Some((reason, delete)) = failure {
                actions[i].push(Action::MarkFailed {
                    node: node.name.clone(),
                    image: desired.to_owned(),
                    reason,
                    cause: FailureCause::Preflight,
                });
                if let (true, Some(check)) = (delete, preflight_of(node, desired)) {
                    actions[i].push(Action::DeletePreflight {
                        node: node.name.clone(),
                        pod: check.pod.clone(),
                    });
                }
                failed_now[i] = Some(desired.to_owned());
            }
        }
        failures[i] = actions[i].iter().find_map(|a| match a {
            Action::MarkFailed { reason, .. } => Some(reason.clone()),
            _ => None,
        });
        handover_failures[i] = actions[i].iter().find_map(|a| match a {
            Action::MarkFailed {
                reason,
                cause: FailureCause::Handover,
                ..
            } => Some(reason.clone()),
            _ => None,
        });
        states.push(state);
    }
    let stable = memory.stable_image.as_deref();

    // The canary: while the spec's image has not passed one, only the first
    // nodes take it, and what their datapath saw since may fail it.
    let remembered = memory.failed_image.as_deref() == Some(desired);
    let canary = spec.strategy.canary.as_ref().filter(|_| {
        stable.is_some_and(|s| s != desired)
            && memory.canary_passed.as_deref() != Some(desired)
            && !remembered
    });
    let mut canary_out: Option<CanaryOutcome> = None;
    let mut canary_room: Option<usize> = None;
    if let Some(c) = canary {
        let members: Vec<usize> = (0..order.len())
            .filter(|&i| match states[i] {
                State::Idle { image, .. } | State::InFlight { image, .. } => image == desired,
                _ => false,
            })
            .collect();
        let mut tripped: Option<String> = None;
        for &i in &members {
            let (
                State::Idle {
                    ready,
                    touched: false,
                    ..
                },
                Some(serving),
            ) = (
                states[i],
                order[i].pod.as_ref().and_then(|p| p.serving.as_ref()),
            )
            else {
                continue;
            };
            if let Err(why) = judge(&order[i].name, serving, ready, c) {
                actions[i].push(Action::MarkFailed {
                    node: order[i].name.clone(),
                    image: desired.to_owned(),
                    reason: why.clone(),
                    cause: FailureCause::Canary,
                });
                failed_now[i] = Some(desired.to_owned());
                failures[i] = Some(why.clone());
                tripped.get_or_insert(why);
            }
        }
        let handover_failure = (0..order.len())
            .find(|&i| failed_now[i].as_deref() == Some(desired))
            .and_then(|i| failures[i].clone());
        let wanted = usize::try_from(c.nodes.max(1))
            .unwrap_or(1)
            .min(selected.saturating_sub(partition).max(1));
        let settled: Vec<&super::model::Serving> = members
            .iter()
            .filter_map(|&i| match states[i] {
                State::Idle {
                    ready: true,
                    touched: false,
                    ..
                } => order[i].pod.as_ref()?.serving.as_ref(),
                _ => None,
            })
            .collect();
        let all_in = members.len() >= wanted && settled.len() == members.len();
        let soaked = all_in
            .then(|| settled.iter().map(|s| s.committed_seconds_ago).min())
            .flatten();
        let soak = u64::try_from(c.soak_seconds.max(0)).unwrap_or(0);
        let (phase, message) = match (tripped.or(handover_failure), soaked) {
            (Some(why), _) => (CanaryPhase::Failed, Some(why)),
            (None, Some(t)) if soak_done(t, soak, settled.iter().copied()) => {
                (CanaryPhase::Passed, None)
            }
            (None, Some(t)) => (
                CanaryPhase::Soaking,
                Some(format!("soaking: {t}s of {soak}s")),
            ),
            (None, None) => (CanaryPhase::Upgrading, None),
        };
        if !matches!(phase, CanaryPhase::Passed) {
            canary_room = Some(wanted.saturating_sub(members.len()));
        }
        canary_out = Some(CanaryOutcome {
            image: desired.to_owned(),
            phase,
            nodes: members.iter().map(|&i| order[i].name.clone()).collect(),
            soaked_seconds: soaked,
            message,
        });
    }

    // The failure latch: a failure of the spec's image, now or remembered,
    // changes what this round may start.
    let latched = memory.failed_image.as_deref() == Some(desired)
        || failed_now.iter().flatten().any(|img| img == desired);
    let (mode, goal) = match (latched, spec.strategy.on_failure, stable) {
        (true, OnFailure::Rollback, Some(s)) if s != desired => (Mode::RollingBack, s),
        (true, _, _) => (Mode::Halted, desired),
        (false, _, _) if spec.strategy.paused => (Mode::Paused, desired),
        (false, _, _) => (Mode::Normal, desired),
    };
    // New pods never get an image known to fail.
    let create_image = if latched {
        stable.unwrap_or(desired)
    } else {
        desired
    };

    let mut unavailable = 0usize;
    let mut on_goal = 0usize;
    for (i, state) in states.iter().enumerate() {
        match *state {
            State::Unselected => {}
            State::Missing => {
                unavailable += 1;
                on_goal += usize::from(create_image == goal);
                actions[i].push(Action::CreatePod {
                    node: order[i].name.clone(),
                    image: create_image.to_owned(),
                });
            }
            State::Idle { image, ready, .. } => {
                unavailable += usize::from(!ready);
                on_goal += usize::from(image == goal);
            }
            State::InFlight { image, .. } => {
                unavailable += 1;
                on_goal += usize::from(image == goal);
            }
        }
    }

    // Pass 2: starts, within maxUnavailable and the partition.
    let mut started = vec![false; order.len()];
    let mut checking = vec![false; order.len()];
    // Nodes this rollout is to upgrade (within the partition), for the tally.
    let mut due = vec![false; order.len()];
    let may_start = matches!(mode, Mode::Normal | Mode::RollingBack) && !spec.strategy.paused;
    if may_start {
        // A rollback restores every node; the partition only limits upgrades.
        let kept = if mode == Mode::RollingBack {
            0
        } else {
            partition
        };
        let mut partition_room = selected.saturating_sub(kept).saturating_sub(on_goal);
        // The nodes this rollout will upgrade, first ones first (as picked below).
        let upgradable = partition_room;
        if mode == Mode::Normal {
            if let Some(room) = canary_room {
                partition_room = partition_room.min(room);
            }
        }
        let mut budget_room = usize::try_from(budget)
            .unwrap_or(usize::MAX)
            .saturating_sub(unavailable);
        let candidate = |i: usize| -> Option<bool> {
            match states[i] {
                State::Idle {
                    image,
                    ready,
                    touched: false,
                    ..
                } if image != goal && order[i].failed_image.as_deref() != Some(goal) => Some(ready),
                _ => None,
            }
        };
        // Preflight, for upgrades only (a rollback returns to an image that served).
        let gate = if mode == Mode::Normal {
            preflight_mode
        } else {
            PreflightMode::Disabled
        };
        let passed = |i: usize| {
            preflight_of(order[i], goal).is_some_and(|p| p.state == PreflightState::Passed)
        };
        // The nodes the partition keeps on the old image are not checked.
        let to_upgrade: Vec<usize> = [false, true]
            .into_iter()
            .flat_map(|want_ready| {
                (0..order.len()).filter(move |&i| candidate(i) == Some(want_ready))
            })
            .take(upgradable)
            .collect();
        for &i in &to_upgrade {
            due[i] = true;
        }
        if gate == PreflightMode::AllNodes {
            let waiting: Vec<usize> = to_upgrade.into_iter().filter(|&i| !passed(i)).collect();
            for &i in &waiting {
                if preflight_of(order[i], goal).is_none() {
                    checking[i] = true;
                }
            }
            // Every node checks before any hands over.
            if !waiting.is_empty() {
                partition_room = 0;
            }
        }
        // Nodes that are already unavailable first: upgrading them costs no
        // budget (as a DaemonSet rolling update does), and may well heal them.
        for want_ready in [false, true] {
            for (i, start) in started.iter_mut().enumerate() {
                if partition_room == 0 {
                    break;
                }
                if candidate(i) != Some(want_ready) {
                    continue;
                }
                if want_ready {
                    if budget_room == 0 {
                        break;
                    }
                    budget_room -= 1;
                }
                partition_room -= 1;
                // Each node checks right before its own handover; the
                // check holds the node's place in the budget.
                if gate == PreflightMode::EachNode && !passed(i) {
                    checking[i] = preflight_of(order[i], goal).is_none();
                } else {
                    *start = true;
                }
            }
        }
    }

    // Pass 3: emit starts, outcomes and counts in node order. Starts go after
    // every other action: the budget above already counts this round's
    // finished and reset nodes as free, so their patches must land before a
    // new handover is announced, or the pods would show more handovers than
    // maxUnavailable between two writes (and until the next round if a
    // write fails or the operator dies in between).
    let mut starts: Vec<Action> = Vec::new();
    let mut summary = Summary {
        nodes: selected_u32,
        max_unavailable: budget,
        ..Summary::default()
    };
    let mut outcomes = Vec::with_capacity(selected);
    let mut all_idle_on_goal = true;
    let mut idle_on_goal = 0usize;
    for (i, state) in states.iter().enumerate() {
        let node = order[i];
        if matches!(state, State::Unselected) {
            continue;
        }
        let failed_image = failed_now[i].clone().or_else(|| {
            // Forget failures of images nobody aims at any more.
            node.failed_image
                .clone()
                .filter(|img| img == desired || img == goal)
        });
        if failed_image.as_deref() == Some(desired) {
            summary.failed += 1;
        }
        let mut message = failures[i].clone();
        let (phase, active_slot, version) = match *state {
            State::Unselected | State::Missing => {
                all_idle_on_goal = false;
                (NodePhase::Pending, None, None)
            }
            State::InFlight { ready, wait, .. } => {
                all_idle_on_goal = false;
                summary.upgrading += 1;
                summary.ready += u32::from(ready);
                message = wait.map(str::to_owned);
                let pod = node.pod.as_ref();
                (
                    NodePhase::Upgrading,
                    pod.map(|p| p.active),
                    pod.map(|p| p.active_image.clone()),
                )
            }
            State::Idle {
                active,
                image,
                ready,
                warm,
                ..
            } => {
                summary.ready += u32::from(ready);
                let phase = if started[i] {
                    summary.upgrading += 1;
                    // The standby already runs the goal: wake it, restart nothing.
                    let warm = warm == Some(goal);
                    let start = if mode == Mode::RollingBack {
                        Action::StartRollback {
                            node: node.name.clone(),
                            slot: active.other(),
                            image: goal.to_owned(),
                            warm,
                        }
                    } else {
                        Action::StartUpgrade {
                            node: node.name.clone(),
                            slot: active.other(),
                            image: goal.to_owned(),
                            warm,
                            soak_seconds: canary_room
                                .and(canary)
                                .map(|c| u32::try_from(c.soak_seconds.max(0)).unwrap_or(0))
                                .unwrap_or(0),
                        }
                    };
                    starts.push(start);
                    NodePhase::Upgrading
                } else if !ready {
                    NodePhase::Pending
                } else if image != desired && failed_image.as_deref() == Some(desired) {
                    NodePhase::Failed
                } else if image == goal {
                    NodePhase::Running
                } else {
                    NodePhase::Outdated
                };
                // Only an agent that serves counts: a pod whose agent never
                // became ready must not make the rollout Complete, nor its
                // image the rollback target.
                if image == desired && !started[i] && ready {
                    summary.updated += 1;
                }
                if image == goal && !started[i] && ready {
                    idle_on_goal += 1;
                } else {
                    all_idle_on_goal = false;
                }
                (phase, Some(active), Some(image.to_owned()))
            }
        };
        // A check of the goal that runs holds the node: say so.
        if let Some(PreflightState::Running { wait, .. }) =
            preflight_of(node, goal).map(|p| &p.state)
        {
            if message.is_none() && !started[i] {
                message = Some(match wait {
                    Some(w) => format!("preflight of {goal}: {w}"),
                    None => format!("preflight of {goal} running"),
                });
            }
        }
        outcomes.push(NodeOutcome {
            name: node.name.clone(),
            phase,
            active_slot,
            version,
            failed_image,
            message,
            failure: handover_failures[i].clone(),
        });
    }

    // Checks: start the due ones, remove those that served, count them.
    let mut checks: Vec<Action> = Vec::new();
    // The tally is about the spec's image, also while a failure of it rolls back.
    let mut tally = PreflightTally {
        image: desired.to_owned(),
        ..PreflightTally::default()
    };
    let mut any_check = false;
    for (i, state) in states.iter().enumerate() {
        let node = order[i];
        let done = matches!(*state, State::Idle { image, ready: true, .. } if image == desired);
        for check in &node.preflights {
            let spent = check.image != desired
                || !node.selected
                || (done && !matches!(check.state, PreflightState::Failed { .. }));
            let deleted = actions[i]
                .iter()
                .any(|a| matches!(a, Action::DeletePreflight { pod, .. } if *pod == check.pod));
            if spent && !deleted {
                checks.push(Action::DeletePreflight {
                    node: node.name.clone(),
                    pod: check.pod.clone(),
                });
            }
        }
        if checking[i] {
            checks.push(Action::RunPreflight {
                node: node.name.clone(),
                image: goal.to_owned(),
            });
        }
        if !node.selected || preflight_mode == PreflightMode::Disabled {
            continue;
        }
        match preflight_of(node, desired).map(|p| &p.state) {
            _ if checking[i] => tally.running += 1,
            // Timed out this round.
            Some(PreflightState::Running { .. }) if failed_now[i].as_deref() == Some(desired) => {
                tally.failed += 1
            }
            Some(PreflightState::Passed) => tally.passed += 1,
            Some(PreflightState::Failed { .. }) => tally.failed += 1,
            Some(PreflightState::Running { .. }) => tally.running += 1,
            None if due[i] => tally.pending += 1,
            None => continue,
        }
        any_check = true;
    }
    let settled = summary.upgrading == 0 && outcomes.iter().all(|o| o.active_slot.is_some());
    // A canary still on trial holds both: the image has not proven itself.
    let on_trial = canary_out
        .as_ref()
        .is_some_and(|c| c.phase != CanaryPhase::Passed);
    let complete = settled && !on_trial && idle_on_goal >= selected.saturating_sub(partition);
    let phase = match mode {
        Mode::Halted => RolloutPhase::Failed,
        Mode::RollingBack if all_idle_on_goal => RolloutPhase::RolledBack,
        Mode::RollingBack => RolloutPhase::RollingBack,
        _ if complete => RolloutPhase::Complete,
        Mode::Paused => RolloutPhase::Paused,
        Mode::Normal => RolloutPhase::Progressing,
    };
    let memory = Memory {
        // Only a fleet wholly on the spec's image, every agent ready (so the
        // image has served), becomes the rollback target.
        stable_image: if !latched && !on_trial && all_idle_on_goal && selected > 0 {
            Some(desired.to_owned())
        } else {
            memory.stable_image.clone()
        },
        failed_image: latched.then(|| desired.to_owned()),
        canary_passed: match &canary_out {
            Some(c) if c.phase == CanaryPhase::Passed => Some(desired.to_owned()),
            _ => memory.canary_passed.clone(),
        },
    };
    let waiting = summary.upgrading > 0
        || tally.running > 0
        || canary_out
            .as_ref()
            .is_some_and(|c| matches!(c.phase, CanaryPhase::Soaking | CanaryPhase::Upgrading));
    Ok(Plan {
        // Checks go with the starts, after every other action.
        actions: actions
            .into_iter()
            .flatten()
            .chain(checks)
            .chain(starts)
            .collect(),
        summary,
        phase,
        memory,
        nodes: outcomes,
        preflight: any_check.then_some(tally),
        canary: canary_out,
        waiting,
    })
}

/// Applies the node-local transitions: delete, finish, fail, or nothing.
fn transition<'a>(
    node: &'a NodeView,
    timeout_seconds: u64,
    actions: &mut Vec<Action>,
    failed: &mut Option<String>,
) -> State<'a> {
    let Some(pod) = node.pod.as_ref() else {
        return if node.selected {
            State::Missing
        } else {
            State::Unselected
        };
    };
    if !node.selected {
        actions.push(Action::DeletePod {
            node: node.name.clone(),
        });
        return State::Unselected;
    }
    let warm = match &pod.standby {
        Standby::Warm {
            image,
            running: true,
        } => Some(image.as_str()),
        _ => None,
    };
    let Standby::Upgrading {
        image,
        elapsed_seconds,
        report,
        ready: new_ready,
        kubelet,
    } = &pod.standby
    else {
        return State::Idle {
            active: pod.active,
            image: &pod.active_image,
            ready: pod.ready,
            touched: false,
            warm,
        };
    };
    let new_slot = pod.active.other();
    let reason = match report {
        Some(Reported::Committed) => {
            actions.push(Action::FinishUpgrade {
                node: node.name.clone(),
                active: new_slot,
                retired: pod.active,
            });
            // The committed agent serves from now on: its Committed report
            // is there, so it is ready when its container is.
            return State::Idle {
                active: new_slot,
                image,
                ready: *new_ready,
                touched: true,
                // The old agent stays as the standby; leave it alone this round.
                warm: None,
            };
        }
        Some(Reported::Failed { message }) => message.clone(),
        None if counted_seconds(*elapsed_seconds, kubelet) >= timeout_seconds => {
            timeout_reason(timeout_seconds, kubelet)
        }
        None => {
            return State::InFlight {
                image,
                ready: pod.ready,
                wait: kubelet.message.as_deref(),
            }
        }
    };
    actions.push(Action::MarkFailed {
        node: node.name.clone(),
        image: image.clone(),
        reason,
        cause: FailureCause::Handover,
    });
    actions.push(Action::ResetStandby {
        node: node.name.clone(),
        slot: new_slot,
    });
    *failed = Some(image.clone());
    State::Idle {
        active: pod.active,
        image: &pod.active_image,
        ready: pod.ready,
        touched: true,
        warm: None,
    }
}

/// Seconds of a handover that count against its timeout: kubelet back-off
/// before the new agent could start is not the agent's time (capped at
/// [`BACKOFF_GRACE_SECONDS`], so a handover still ends).
fn counted_seconds(elapsed: u64, kubelet: &KubeletWait) -> u64 {
    elapsed.saturating_sub(kubelet.backoff_seconds.min(BACKOFF_GRACE_SECONDS))
}

/// The failure text of a timed-out handover, with what the kubelet was doing.
fn timeout_reason(timeout_seconds: u64, kubelet: &KubeletWait) -> String {
    let mut reason = format!("handover did not commit within {timeout_seconds}s");
    let grace = kubelet.backoff_seconds.min(BACKOFF_GRACE_SECONDS);
    if grace > 0 {
        reason.push_str(&format!(" (plus {grace}s of kubelet back-off)"));
    }
    if let Some(m) = &kubelet.message {
        reason.push_str("; ");
        reason.push_str(m);
    }
    reason
}
