//! The preflight check pods: one short-lived pod per node and image that
//! runs `baton-agent preflight` of the new image on that node, and what the
//! controller reads back from it.
//!
//! A pod of its own rather than the idle slot: running the image in the
//! slot first would make the real handover a second start of the same
//! container spec, which the kubelet's crash-loop back-off delays by 10 s
//! and more (docs/operator.md, "Preflight").

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use baton_api::admin::ProtocolRange;
use baton_api::pairpod::{DEFAULT_RUN_DIR, ENV_CGROUP, ENV_RUN_DIR};
use baton_api::preflight::{Summary, EXIT_PASSED};
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::podspec::PodTarget;
use super::podspec::{agent_mounts, agent_security, agent_volumes, pod_security};
use crate::crd::{KmeshUpgradeSpec, NodePreflight, PreflightResult};
use crate::plan::{PreflightState, PreflightView};

/// Label telling check pods from agent pods.
pub const LABEL_ROLE: &str = "baton.dev/role";
/// Value of [`LABEL_ROLE`] on check pods.
pub const ROLE_PREFLIGHT: &str = "preflight";
/// Annotation: the image a check pod checks.
pub const ANN_PREFLIGHT_IMAGE: &str = "baton.dev/preflight-image";
/// Where the agent image keeps the agent binary: the check pod runs it with
/// another subcommand than the image's entrypoint (`run`).
pub const AGENT_BINARY: &str = "/usr/local/bin/baton-agent";
/// Where the check writes its summary: the kubelet copies it into the
/// container's status (at most 4096 bytes), so reading it needs no log access.
const SUMMARY_FILE: &str = "/dev/termination-log";
/// Name of the check pod's container.
const CONTAINER: &str = "preflight";

/// Whether a pod is a check pod.
pub fn is_check_pod(pod: &Pod) -> bool {
    pod.labels().get(LABEL_ROLE).map(String::as_str) == Some(ROLE_PREFLIGHT)
}

/// Name of the check pod of `image` on `node` for `upgrade` (a hash keeps it
/// short and distinct per node and image).
pub fn preflight_pod_name(upgrade: &str, node: &str, image: &str) -> String {
    let mut hasher = DefaultHasher::new();
    (node, image).hash(&mut hasher);
    let suffix = format!("-preflight-{:016x}", hasher.finish());
    let mut prefix: String = upgrade.chars().take(253 - suffix.len()).collect();
    while prefix.ends_with(['-', '.']) {
        prefix.pop();
    }
    prefix + &suffix
}

/// The check pod of `image` on `node`: the agent slot's privileges, mounts
/// and cgroup (the bpffs read-write: a pinned link opens only read-write,
/// even to read its info; the check writes nothing), `restartPolicy:
/// Never`, and a deadline.
pub fn preflight_pod(
    target: &PodTarget<'_>,
    node: &str,
    spec: &KmeshUpgradeSpec,
    image: &str,
) -> Pod {
    let annotations = BTreeMap::from([(ANN_PREFLIGHT_IMAGE.to_owned(), image.to_owned())]);
    let mut command = vec![
        AGENT_BINARY.to_owned(),
        "preflight".to_owned(),
        "--summary-file".to_owned(),
        SUMMARY_FILE.to_owned(),
    ];
    // Map sizes change layouts: the check must plan with the ones `run` gets.
    let mut args = spec.pod.extra_args.iter();
    while let Some(a) = args.next() {
        if a.starts_with("--map-max-entries=") {
            command.push(a.clone());
        } else if a == "--map-max-entries" {
            command.push(a.clone());
            command.extend(args.next().cloned());
        }
    }
    let mut env = vec![EnvVar {
        name: ENV_RUN_DIR.into(),
        value: Some(DEFAULT_RUN_DIR.into()),
        ..EnvVar::default()
    }];
    if let Some(cgroup) = &spec.pod.cgroup {
        env.push(EnvVar {
            name: ENV_CGROUP.into(),
            value: Some(cgroup.clone()),
            ..EnvVar::default()
        });
    }
    Pod {
        metadata: target.metadata(
            preflight_pod_name(target.upgrade, node, image),
            [(LABEL_ROLE.to_owned(), ROLE_PREFLIGHT.to_owned())],
            annotations,
        ),
        spec: Some(PodSpec {
            node_name: Some(node.to_owned()),
            service_account_name: Some(target.service_account.to_owned()),
            // It talks to no API server.
            automount_service_account_token: Some(false),
            containers: vec![Container {
                name: CONTAINER.into(),
                image: Some(image.to_owned()),
                command: Some(command),
                env: Some(env),
                resources: spec.pod.resources.clone(),
                security_context: Some(agent_security()),
                volume_mounts: Some(agent_mounts()),
                ..Container::default()
            }],
            volumes: Some(agent_volumes()),
            host_network: spec.pod.host_network.then_some(true),
            security_context: Some(pod_security()),
            tolerations: (!spec.pod.tolerations.is_empty()).then(|| spec.pod.tolerations.clone()),
            priority_class_name: spec.pod.priority_class_name.clone(),
            restart_policy: Some("Never".into()),
            active_deadline_seconds: Some(i64::from(
                spec.strategy.preflight.timeout_seconds.max(1),
            )),
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// A check pod as the planner sees it, and as the node status shows it.
pub struct ObservedCheck {
    /// The planner's view.
    pub view: PreflightView,
    /// The status entry.
    pub status: NodePreflight,
}

/// Reads a check pod at `now`; `serving` is the protocol range the node's
/// serving agent reported (its Started condition), if it did.
pub fn observe_check(
    pod: &Pod,
    serving: Option<ProtocolRange>,
    now: Timestamp,
) -> Option<ObservedCheck> {
    let image = pod.annotations().get(ANN_PREFLIGHT_IMAGE)?.clone();
    let status = pod.status.as_ref();
    let container = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == CONTAINER));
    let terminated = container
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref());
    let mut entry = NodePreflight {
        at: terminated.and_then(|t| t.finished_at.clone()),
        ..NodePreflight::new(image.clone(), PreflightResult::Running)
    };
    let state = match terminated {
        Some(t) => {
            let text = t.message.clone().unwrap_or_default();
            let summary = serde_json::from_str::<Summary>(text.trim()).ok();
            if let Some(s) = &summary {
                entry.kernel = Some(s.kernel.clone());
                entry.maps_reused = i32::try_from(s.maps_reused).unwrap_or(i32::MAX);
                entry.maps_migrated = i32::try_from(s.maps_migrated).unwrap_or(i32::MAX);
                entry.entries_to_copy = i64::try_from(s.entries_to_copy).unwrap_or(i64::MAX);
                entry.estimated_copy_ms =
                    i64::try_from(s.estimated_copy_us.div_ceil(1000)).unwrap_or(i64::MAX);
                entry.session_protocol = s.session_protocol.and_then(|p| i32::try_from(p).ok());
            }
            verdict(t.exit_code, &text, summary.as_ref(), serving)
        }
        None if status.and_then(|s| s.phase.as_deref()) == Some("Failed") => {
            // Killed before its container ended (the deadline, an eviction).
            let s = status;
            PreflightState::Failed {
                message: format!(
                    "check pod failed: {}",
                    s.and_then(|s| s.message.clone().or_else(|| s.reason.clone()))
                        .unwrap_or_else(|| "no reason given".into())
                ),
            }
        }
        None => {
            let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
            let waiting = container
                .and_then(|c| c.state.as_ref())
                .and_then(|s| s.waiting.as_ref());
            PreflightState::Running {
                elapsed_seconds: created
                    .map(|c| u64::try_from(now.as_second() - c.as_second()).unwrap_or(0))
                    .unwrap_or(0),
                wait: waiting.and_then(|w| {
                    let reason = w.reason.as_deref()?;
                    // Plain start-up is no news.
                    (reason != "ContainerCreating" && reason != "PodInitializing").then(|| match w
                        .message
                        .as_deref()
                    {
                        Some(m) => format!("kubelet: {reason}: {m}"),
                        None => format!("kubelet: {reason}"),
                    })
                }),
            }
        }
    };
    match &state {
        PreflightState::Running { wait, .. } => entry.message = wait.clone(),
        PreflightState::Passed => entry.result = PreflightResult::Passed,
        PreflightState::Failed { message } => {
            entry.result = PreflightResult::Failed;
            entry.message = Some(message.clone());
        }
    }
    Some(ObservedCheck {
        view: PreflightView {
            pod: pod.name_any(),
            image,
            state,
        },
        status: entry,
    })
}

/// The verdict of a finished check: its exit code and summary, and whether
/// the build speaks a handover protocol the serving agent speaks.
fn verdict(
    exit_code: i32,
    text: &str,
    summary: Option<&Summary>,
    serving: Option<ProtocolRange>,
) -> PreflightState {
    let failed = |message: String| PreflightState::Failed { message };
    match summary {
        Some(s) if !s.passed => failed(if s.failures.is_empty() {
            "a check failed".into()
        } else {
            s.failures.join("; ")
        }),
        Some(s) if exit_code == i32::from(EXIT_PASSED) => match serving {
            Some(range) if s.build.handover_protocol.common(range).is_none() => failed(format!(
                "handover protocol: the new build speaks {}, the serving agent {range}: they share no version",
                s.build.handover_protocol
            )),
            _ => PreflightState::Passed,
        },
        _ if text.trim().is_empty() => failed(format!(
            "the check exited with code {exit_code} and wrote no summary"
        )),
        _ => failed(format!(
            "the check exited with code {exit_code}: {}",
            text.trim()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_api::preflight::Build;
    use serde_json::json;

    fn summary(passed: bool, protocol: ProtocolRange) -> Summary {
        Summary {
            report_version: 1,
            passed,
            failures: if passed {
                vec![]
            } else {
                vec!["programs: baton_connect4 rejected by the verifier".into()]
            },
            build: Build {
                version: "0.2.0".into(),
                layout_version: 2,
                handover_protocol: protocol,
            },
            kernel: "6.18.0".into(),
            programs_loaded: 2,
            programs_total: 2,
            maps_reused: 4,
            maps_migrated: 2,
            maps_recreated: 0,
            maps_created: 0,
            entries_to_copy: 220_000,
            estimated_copy_us: 180_500,
            session_protocol: None,
            duration_us: 90_000,
        }
    }

    fn check_pod(terminated: Option<(i32, String)>) -> Pod {
        let state = match terminated {
            Some((code, message)) => json!({"terminated": {"exitCode": code, "message": message,
                "finishedAt": "2026-01-01T00:00:20Z"}}),
            None => json!({"waiting": {"reason": "ErrImageNeverPull", "message": "not present"}}),
        };
        serde_json::from_value(json!({
            "metadata": {"name": "baton-preflight-1", "creationTimestamp": "2026-01-01T00:00:00Z",
                         "annotations": {ANN_PREFLIGHT_IMAGE: "agent:v2"},
                         "labels": {LABEL_ROLE: ROLE_PREFLIGHT}},
            "spec": {"containers": [{"name": CONTAINER, "image": "agent:v2"}]},
            "status": {"containerStatuses": [{"name": CONTAINER, "ready": false, "image": "",
                       "imageID": "", "restartCount": 0, "state": state}]}
        }))
        .expect("pod")
    }

    fn now() -> Timestamp {
        "2026-01-01T00:00:30Z".parse().expect("time")
    }

    const V12: ProtocolRange = ProtocolRange { min: 1, max: 2 };

    #[test]
    fn a_passed_summary_passes_with_its_figures() {
        let text = summary(true, V12).to_bounded_json().expect("json");
        let o = observe_check(&check_pod(Some((0, text))), Some(V12), now()).expect("a check");
        assert!(is_check_pod(&check_pod(None)));
        assert_eq!(o.view.state, PreflightState::Passed);
        assert_eq!(o.view.image, "agent:v2");
        assert_eq!(o.status.result, PreflightResult::Passed);
        assert_eq!(
            (o.status.maps_migrated, o.status.entries_to_copy),
            (2, 220_000)
        );
        assert_eq!(o.status.estimated_copy_ms, 181);
        assert_eq!(o.status.kernel.as_deref(), Some("6.18.0"));
    }

    #[test]
    fn failures_say_why_in_the_checks_words() {
        let text = summary(false, V12).to_bounded_json().expect("json");
        let o = observe_check(&check_pod(Some((1, text))), Some(V12), now()).expect("a check");
        let PreflightState::Failed { message } = &o.view.state else {
            panic!("{:?}", o.view.state)
        };
        assert!(message.contains("rejected by the verifier"), "{message}");
        // The build and the serving agent share no protocol.
        let text = summary(true, ProtocolRange { min: 3, max: 4 })
            .to_bounded_json()
            .expect("json");
        let o =
            observe_check(&check_pod(Some((0, text.clone()))), Some(V12), now()).expect("a check");
        let PreflightState::Failed { message } = &o.view.state else {
            panic!("{:?}", o.view.state)
        };
        assert!(
            message.contains("3..=4") && message.contains("1..=2"),
            "{message}"
        );
        // An agent that does not say its protocol: nothing to compare.
        let o = observe_check(&check_pod(Some((0, text))), None, now()).expect("a check");
        assert_eq!(o.view.state, PreflightState::Passed);
        // Could not run: the plain-text reason.
        let o = observe_check(
            &check_pod(Some((2, "no bpffs at /sys/fs/bpf".into()))),
            None,
            now(),
        )
        .expect("a check");
        assert_eq!(
            o.view.state,
            PreflightState::Failed {
                message: "the check exited with code 2: no bpffs at /sys/fs/bpf".into()
            }
        );
    }

    #[test]
    fn a_waiting_check_runs_with_the_kubelets_words() {
        let o = observe_check(&check_pod(None), None, now()).expect("a check");
        assert_eq!(
            o.view.state,
            PreflightState::Running {
                elapsed_seconds: 30,
                wait: Some("kubelet: ErrImageNeverPull: not present".into())
            }
        );
    }

    #[test]
    fn names_are_bounded_and_differ_per_node_and_image() {
        let a = preflight_pod_name("baton", "n1", "agent:v2");
        assert!(a.starts_with("baton-preflight-"));
        assert_ne!(a, preflight_pod_name("baton", "n2", "agent:v2"));
        assert_ne!(a, preflight_pod_name("baton", "n1", "agent:v3"));
        assert!(preflight_pod_name(&"u".repeat(300), "n", "i").len() <= 253);
    }
}
