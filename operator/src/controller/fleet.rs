//! Gathers one `KmeshUpgrade`'s nodes and pods into planner views.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use baton_api::pairpod::LABEL_UPGRADE;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::observe::{observe, selects};
use super::preflight::{is_check_pod, observe_check};
use crate::crd::{HandoverFigures, KmeshUpgrade, NodePreflight};
use crate::plan::{NodeView, PreflightView};

/// The planner's input for one upgrade, plus the agents' latest figures.
pub struct Fleet {
    /// One view per node, and one per pod whose node is gone.
    pub views: Vec<NodeView>,
    /// Handover figures reported for the running handovers, by node.
    pub figures: HashMap<String, HandoverFigures>,
    /// Preflight results of the spec's image, by node.
    pub preflights: HashMap<String, NodePreflight>,
}

/// Builds the views from the caches' `nodes` and `pods` at time `now`.
pub fn observe_fleet(
    upgrade: &KmeshUpgrade,
    namespace: &str,
    nodes: &[Arc<Node>],
    pods: &[Arc<Pod>],
    now: Timestamp,
) -> Fleet {
    let name = upgrade.name_any();
    let uid = upgrade.uid();
    // Only pods this very object owns: a recreated KmeshUpgrade of the same
    // name must not adopt its predecessor's pods (they go with it).
    let mut by_node: BTreeMap<String, &Arc<Pod>> = BTreeMap::new();
    let mut checks_by_node: BTreeMap<String, Vec<&Arc<Pod>>> = BTreeMap::new();
    for pod in pods {
        let ours = pod.metadata.namespace.as_deref() == Some(namespace)
            && pod.labels().get(LABEL_UPGRADE) == Some(&name)
            && pod
                .owner_references()
                .iter()
                .any(|o| Some(&o.uid) == uid.as_ref());
        if let (true, Some(node)) = (ours, pod.spec.as_ref().and_then(|s| s.node_name.clone())) {
            if is_check_pod(pod) {
                checks_by_node.entry(node).or_default().push(pod);
            } else {
                by_node.insert(node, pod);
            }
        }
    }
    let failed_by_node: HashMap<&str, &str> = upgrade
        .status
        .iter()
        .flat_map(|s| &s.node_statuses)
        .filter_map(|n| Some((n.node.as_str(), n.failed_image.as_deref()?)))
        .collect();
    let check_nodes: Vec<String> = checks_by_node.keys().cloned().collect();
    let mut figures = HashMap::new();
    let mut preflights = HashMap::new();
    let mut view = |node: String, selected: bool, pod: Option<&Arc<Pod>>| {
        // A terminating pod on a node we are leaving is as good as gone; on a
        // selected node it stays in view (not ready) so nothing is created twice.
        let pod = pod.filter(|p| selected || p.metadata.deletion_timestamp.is_none());
        let mut protocol = None;
        let pod = pod.map(|p| {
            let observed = observe(p, &upgrade.spec.empty_image, now);
            if let Some(f) = observed.figures {
                figures.insert(node.clone(), f);
            }
            protocol = observed.protocol;
            observed.view
        });
        let mut checks: Vec<PreflightView> = Vec::new();
        for check in checks_by_node.remove(&node).unwrap_or_default() {
            // A check pod being deleted has served; another may replace it.
            if check.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if let Some(o) = observe_check(check, protocol, now) {
                if o.view.image == upgrade.spec.agent_image {
                    preflights.insert(node.clone(), o.status);
                }
                checks.push(o.view);
            }
        }
        NodeView {
            failed_image: failed_by_node.get(node.as_str()).map(|s| s.to_string()),
            name: node,
            selected,
            pod,
            preflights: checks,
        }
    };
    let mut views = Vec::with_capacity(nodes.len());
    for node in nodes {
        let node_name = node.name_any();
        let selected = node.metadata.deletion_timestamp.is_none()
            && selects(&upgrade.spec.node_selector.match_labels, node);
        let pod = by_node.remove(&node_name);
        views.push(view(node_name, selected, pod));
    }
    // Pods on nodes that no longer exist are unselected: they get deleted.
    for (node_name, pod) in by_node {
        views.push(view(node_name, false, Some(pod)));
    }
    // Check pods on nodes without an agent pod still need cleaning up.
    for node_name in check_nodes {
        if !views.iter().any(|v| v.name == node_name) {
            views.push(view(node_name, false, None));
        }
    }
    Fleet {
        views,
        figures,
        preflights,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn upgrade() -> KmeshUpgrade {
        serde_json::from_value(json!({
            "apiVersion": "baton.dev/v1alpha1", "kind": "KmeshUpgrade",
            "metadata": {"name": "baton", "namespace": "ns", "uid": "u1"},
            "spec": {"agentImage": "v2", "emptyImage": "e",
                     "nodeSelector": {"matchLabels": {"mesh": "on"}}},
            "status": {"nodeStatuses": [{"node": "a", "phase": "Failed", "failedImage": "v2"}]}
        }))
        .expect("upgrade")
    }

    fn node(name: &str, mesh: bool) -> Arc<Node> {
        let labels = if mesh {
            json!({"mesh": "on"})
        } else {
            json!({})
        };
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
                .expect("node"),
        )
    }

    fn pod(name: &str, node: &str, owner_uid: &str, terminating: bool) -> Arc<Pod> {
        let mut meta = json!({"name": name, "namespace": "ns",
            "labels": {"baton.dev/upgrade": "baton"},
            "ownerReferences": [{"apiVersion": "baton.dev/v1alpha1", "kind": "KmeshUpgrade",
                                 "name": "baton", "uid": owner_uid}]});
        if terminating {
            meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        Arc::new(
            serde_json::from_value(json!({"metadata": meta, "spec": {"nodeName": node,
                "containers": [{"name": "slot-a", "image": "v1"}, {"name": "slot-b", "image": "e"}]}}))
            .expect("pod"),
        )
    }

    #[test]
    fn views_cover_nodes_orphans_and_remembered_failures() {
        let nodes = [node("a", true), node("b", false), node("c", true)];
        let pods = [
            pod("baton-a", "a", "u1", false),
            pod("baton-b", "b", "u1", true),
            pod("baton-gone", "gone", "u1", false),
            pod("other-c", "c", "someone-else", false),
        ];
        let fleet = observe_fleet(&upgrade(), "ns", &nodes, &pods, Timestamp::UNIX_EPOCH);
        let summary: Vec<_> = fleet
            .views
            .iter()
            .map(|v| {
                (
                    v.name.as_str(),
                    v.selected,
                    v.pod.is_some(),
                    v.failed_image.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("a", true, true, Some("v2")),
                // Leaving and already terminating: nothing left to do.
                ("b", false, false, None),
                // Another owner's pod is not ours: node c still needs one.
                ("c", true, false, None),
                ("gone", false, true, None),
            ]
        );
    }
}
