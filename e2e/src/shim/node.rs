//! One fake node: its Node object (Ready, capacity, addresses), heartbeats
//! (a Lease in `kube-node-lease` and the Ready condition), and the watch of
//! the pods bound to it, one [`Worker`] per pod.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo, Pod,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::pod::{NodeCtx, Worker};
use super::ShimError;

/// Field manager of the shim's writes.
pub const FIELD_MANAGER: &str = "baton-node-shim";
/// Annotation (`true`) on the nodes the shim registered: the shim's own
/// marker, no part of the pair-pod contract.
pub const NODE_ANNOTATION: &str = "baton.dev/node-shim";
/// Namespace of node heartbeat Leases.
const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Lease duration the kubelet uses.
const LEASE_SECONDS: i32 = 40;

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn conditions(since: Timestamp) -> Vec<NodeCondition> {
    let now = Time(Timestamp::now());
    let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(Time(since)),
    };
    vec![
        condition(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "no pressure",
        ),
        condition(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "no pressure",
        ),
        condition(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "no pressure",
        ),
        condition(
            "Ready",
            "True",
            "KubeletReady",
            "baton-node-shim is posting ready status",
        ),
    ]
}

fn status(ctx: &NodeCtx, since: Timestamp) -> NodeStatus {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let capacity = BTreeMap::from([
        ("cpu".to_owned(), Quantity(cpus.to_string())),
        ("memory".to_owned(), Quantity("16Gi".into())),
        ("ephemeral-storage".to_owned(), Quantity("100Gi".into())),
        ("pods".to_owned(), Quantity("110".into())),
    ]);
    let info = |s: &str| s.to_owned();
    NodeStatus {
        capacity: Some(capacity.clone()),
        allocatable: Some(capacity),
        conditions: Some(conditions(since)),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: ctx.host_ip(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: ctx.node.name.clone(),
            },
        ]),
        node_info: Some(NodeSystemInfo {
            architecture: info(arch()),
            operating_system: info("linux"),
            os_image: info("baton-node-shim"),
            kernel_version: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            kubelet_version: info("v1.34.4-baton-node-shim"),
            kube_proxy_version: String::new(),
            container_runtime_version: info("baton-node-shim://processes"),
            machine_id: ctx.node.name.clone(),
            system_uuid: ctx.node.name.clone(),
            boot_id: format!("{}-{}", ctx.node.name, since.as_second()),
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    }
}

/// Creates or updates the Node (labels) and writes its status.
pub async fn register(ctx: &NodeCtx, since: Timestamp) -> Result<(), ShimError> {
    let name = &ctx.node.name;
    let err = |source| ShimError::Register {
        node: name.clone(),
        source,
    };
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), name.clone()),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        ("kubernetes.io/arch".to_owned(), arch().to_owned()),
    ]);
    labels.extend(ctx.node.labels.clone());
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {NODE_ANNOTATION: "true"},
        },
    });
    let api: Api<Node> = Api::all(ctx.client.clone());
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&node),
    )
    .await
    .map_err(err)?;
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Strategic(json!({"status": status(ctx, since)})),
    )
    .await
    .map_err(err)?;
    Ok(())
}

async fn beat(ctx: &NodeCtx, since: Timestamp) -> Result<(), kube::Error> {
    let name = &ctx.node.name;
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let node = nodes.get(name).await?;
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(LEASE_NAMESPACE.into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: name.clone(),
                uid: node.metadata.uid.unwrap_or_default(),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name.clone()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..LeaseSpec::default()
        }),
    };
    let mut body = serde_json::to_value(&lease).map_err(kube::Error::SerdeError)?;
    body["apiVersion"] = json!("coordination.k8s.io/v1");
    body["kind"] = json!("Lease");
    Api::<Lease>::namespaced(ctx.client.clone(), LEASE_NAMESPACE)
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Strategic(json!({"status": {"conditions": conditions(since)}})),
        )
        .await?;
    Ok(())
}

/// Renews the Lease and the Ready heartbeat until shutdown.
pub async fn heartbeat(ctx: Arc<NodeCtx>, since: Timestamp, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(ctx.cfg.heartbeat);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = beat(&ctx, since).await {
            tracing::warn!(node = %ctx.node.name, error = %e, "node heartbeat failed");
        }
    }
}

/// A pod worker: its feed and its task.
struct Running {
    feed: watch::Sender<Option<Arc<Pod>>>,
    task: JoinHandle<()>,
}

struct Workers {
    ctx: Arc<NodeCtx>,
    shutdown: watch::Receiver<bool>,
    done: mpsc::UnboundedSender<String>,
    running: HashMap<String, Running>,
    listing: Option<HashSet<String>>,
}

impl Workers {
    fn apply(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        if let Some(seen) = &mut self.listing {
            seen.insert(uid.clone());
        }
        let pod = Arc::new(pod);
        if let Some(running) = self.running.get(&uid) {
            running.feed.send_replace(Some(pod));
            return;
        }
        let (feed, rx) = watch::channel(Some(pod.clone()));
        let worker = Worker::new(self.ctx.clone(), &pod, rx, self.shutdown.clone());
        let done = self.done.clone();
        let id = uid.clone();
        let task = tokio::spawn(async move {
            worker.run().await;
            let _ = done.send(id);
        });
        self.running.insert(uid, Running { feed, task });
    }

    fn gone(&mut self, uid: &str) {
        if let Some(running) = self.running.get(uid) {
            running.feed.send_replace(None);
        }
    }

    /// The worker of `uid` returned (its last act is to say so).
    fn finished(&mut self, uid: &str) {
        self.running.remove(uid);
    }
}

/// Watches the pods bound to this node and runs a worker for each, until shutdown.
pub async fn watch_pods(ctx: Arc<NodeCtx>, mut shutdown: watch::Receiver<bool>) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node.name));
    let mut events = watcher(api, config).default_backoff().boxed();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut workers = Workers {
        ctx: ctx.clone(),
        shutdown: shutdown.clone(),
        done: done_tx,
        running: HashMap::new(),
        listing: None,
    };
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => workers.apply(pod),
                Some(Ok(watcher::Event::Delete(pod))) => {
                    if let Some(uid) = pod.metadata.uid.as_deref() {
                        workers.gone(uid);
                    }
                }
                Some(Ok(watcher::Event::Init)) => workers.listing = Some(HashSet::new()),
                Some(Ok(watcher::Event::InitDone)) => {
                    // Pods that vanished while the watch was down.
                    let seen = workers.listing.take().unwrap_or_default();
                    let stale: Vec<String> = workers
                        .running
                        .keys()
                        .filter(|uid| !seen.contains(*uid))
                        .cloned()
                        .collect();
                    for uid in stale {
                        workers.gone(&uid);
                    }
                }
                Some(Err(e)) => tracing::warn!(node = %ctx.node.name, error = %e, "pod watch failed; retrying"),
                None => break,
            },
            Some(uid) = done_rx.recv() => workers.finished(&uid),
            _ = shutdown.changed() => break,
        }
    }
    // Workers see the same shutdown and stop their containers.
    for (_, running) in workers.running.drain() {
        let _ = running.task.await;
    }
}
