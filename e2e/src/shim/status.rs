//! The pod status as the kubelet writes it: phase, the standard conditions,
//! container statuses, addresses. Sent as a strategic-merge patch, so the API
//! server merges `conditions` by `type` and conditions of other writers (the
//! agent's [`CONDITION_HANDOVER`](baton_api::pairpod::CONDITION_HANDOVER))
//! survive; `containerStatuses` is replaced.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

/// Remembers when each condition last changed, for `lastTransitionTime`.
#[derive(Debug, Default)]
pub struct ConditionClock(BTreeMap<String, (bool, Timestamp)>);

impl ConditionClock {
    fn condition(&mut self, type_: &str, status: bool) -> PodCondition {
        let entry = self
            .0
            .entry(type_.to_owned())
            .or_insert((status, Timestamp::now()));
        if entry.0 != status {
            *entry = (status, Timestamp::now());
        }
        PodCondition {
            type_: type_.to_owned(),
            status: if status { "True" } else { "False" }.into(),
            last_transition_time: Some(Time(entry.1)),
            ..PodCondition::default()
        }
    }
}

/// What the worker knows about the pod's containers.
pub struct Report<'a> {
    /// The pod as last seen (readiness gates, conditions of others, generation).
    pub pod: &'a Pod,
    /// One entry per container, in spec order.
    pub containers: Vec<ContainerStatus>,
    /// Whether any container has started yet.
    pub started_any: bool,
    /// Exit codes when every container ended for good (restart policy).
    pub finished: Option<Vec<i32>>,
    /// The node's address.
    pub host_ip: &'a str,
    /// When the shim first took the pod.
    pub start_time: Timestamp,
}

fn gates_pass(pod: &Pod) -> bool {
    let gates = pod.spec.as_ref().and_then(|s| s.readiness_gates.as_ref());
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    gates.into_iter().flatten().all(|gate| {
        conditions
            .into_iter()
            .flatten()
            .any(|c| c.type_ == gate.condition_type && c.status == "True")
    })
}

/// The status patch body (with the pod's uid as a precondition).
pub fn patch_body(report: Report<'_>, clock: &mut ConditionClock) -> serde_json::Value {
    let all_ready = report.containers.iter().all(|c| c.ready);
    let phase = match &report.finished {
        Some(codes) if codes.iter().all(|c| *c == 0) => "Succeeded",
        Some(_) => "Failed",
        None if report.started_any => "Running",
        None => "Pending",
    };
    let conditions = vec![
        clock.condition("PodReadyToStartContainers", true),
        clock.condition("Initialized", true),
        clock.condition("ContainersReady", all_ready),
        clock.condition("Ready", all_ready && gates_pass(report.pod)),
        clock.condition("PodScheduled", true),
    ];
    let status = PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        container_statuses: Some(report.containers),
        host_ip: Some(report.host_ip.to_owned()),
        host_ips: Some(vec![HostIP {
            ip: report.host_ip.to_owned(),
        }]),
        // The shim's processes share the node's network.
        pod_ip: Some(report.host_ip.to_owned()),
        pod_ips: Some(vec![PodIP {
            ip: report.host_ip.to_owned(),
        }]),
        start_time: Some(Time(report.start_time)),
        observed_generation: report.pod.metadata.generation,
        ..PodStatus::default()
    };
    json!({
        "metadata": {"uid": report.pod.metadata.uid},
        "status": status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(conditions: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "uid": "u"},
            "spec": {"containers": [], "readinessGates": [{"conditionType": "x/Gate"}]},
            "status": {"conditions": conditions}
        }))
        .expect("pod")
    }

    fn ready(c: &serde_json::Value, type_: &str) -> String {
        c["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|x| x["type"] == type_))
            .map(|x| x["status"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    }

    #[test]
    fn ready_needs_every_container_and_readiness_gate() {
        let mut clock = ConditionClock::default();
        let running = ContainerStatus {
            ready: true,
            ..ContainerStatus::default()
        };
        let gated = pod(json!([]));
        let body = patch_body(
            Report {
                pod: &gated,
                containers: vec![running.clone()],
                started_any: true,
                finished: None,
                host_ip: "127.0.0.1",
                start_time: Timestamp::now(),
            },
            &mut clock,
        );
        assert_eq!(body["status"]["phase"], "Running");
        assert_eq!(ready(&body, "ContainersReady"), "True");
        assert_eq!(ready(&body, "Ready"), "False", "gate not met");
        assert_eq!(body["metadata"]["uid"], "u");
        let open = pod(json!([{"type": "x/Gate", "status": "True"}]));
        let body = patch_body(
            Report {
                pod: &open,
                containers: vec![running],
                started_any: true,
                finished: None,
                host_ip: "127.0.0.1",
                start_time: Timestamp::now(),
            },
            &mut clock,
        );
        assert_eq!(ready(&body, "Ready"), "True");
        let names: Vec<_> = body["status"]["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .map(|c| c["type"].as_str().unwrap_or_default())
            .collect();
        assert!(
            !names.contains(&"x/Gate"),
            "others' conditions are left alone"
        );
    }
}
