//! The node shim: plays the kubelet for one or more fake nodes against a real
//! kube-apiserver, running each pod's containers as local processes.
//!
//! * **Nodes**: registered with labels, capacity, addresses and a Ready
//!   condition; heartbeats renew a Lease in `kube-node-lease` and the Ready
//!   condition every [`ShimConfig::heartbeat`].
//! * **Images**: a table maps an image reference to a command
//!   ([`ImageMapping`]); the container's `args` follow the mapped command.
//!   `idle` is the shim's own idle mode (for the empty image). An unmapped
//!   image waits in `ErrImagePull`; `command` is refused
//!   (`CreateContainerConfigError`): the mapping is the entrypoint.
//! * **Env**: literals with `$(VAR)`, the downward API (`fieldRef`: name,
//!   namespace, uid, nodeName, serviceAccountName, labels/annotations
//!   `['key']`, host/pod IP) read from the pod as it is when the container
//!   starts, like the kubelet. Then, since a process cannot see the
//!   container's mounts, the [`MountEnv`] variables (by default
//!   `BATON_BPFFS`, `BATON_CGROUP`, `BATON_RUN_DIR`) are set to the local
//!   directories behind their in-container paths, `KUBECONFIG` to a per-pod
//!   kubeconfig with the pod's service-account token (when the pod mounts
//!   one), the [`EnvTemplate`]s, and `BATON_SHIM_NODE`, `_NAMESPACE`, `_POD`,
//!   `_CONTAINER`, `_RESTART`. Nothing else is inherited except
//!   [`ShimConfig::pass_env`].
//! * **Volumes**: see [`volumes`] for the layout under the root.
//! * **Lifecycle**: a patched image stops the old process (SIGTERM, SIGKILL
//!   after `terminationGracePeriodSeconds`) and starts the new image,
//!   `restartCount + 1`; an exited process restarts per `restartPolicy` with
//!   crash-loop back-off and `lastState.terminated`; a deleted pod's
//!   processes are stopped within the deletion grace, then the pod is removed
//!   (grace 0, uid precondition), as the kubelet does.
//! * **Status**: phase, `PodScheduled`/`Initialized`/`ContainersReady`/`Ready`
//!   (readiness gates honoured), container statuses, host/pod IP, through a
//!   strategic-merge patch that leaves other writers' conditions alone.
//! * **Logs**: `<root>/<node>/logs/<namespace>_<pod>_<container>.log`, every
//!   run appended with a header line; kept after the pod goes.
//!
//! No isolation: processes run as the shim's user in its namespaces and
//! network (host and pod IP are the node's address), with no resource limits
//! and no probes (a running container is ready).

pub mod command;
pub mod config;
pub mod container;
pub mod credentials;
pub mod env;
pub mod launch;
pub mod node;
pub mod pod;
pub mod process;
pub mod standin;
pub mod status;
pub mod volumes;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use tokio::sync::watch;

pub use config::{
    Backoff, EnvTemplate, HostPathRule, ImageMapping, MountEnv, NodeConfig, PodApiAccess,
    ShimConfig,
};

/// Why the shim could not run.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// Creating or updating a Node failed.
    #[error("registering node {node}: {source}")]
    Register {
        /// Node name.
        node: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A local directory could not be created.
    #[error("creating {}: {source}", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Registers the nodes, runs their pods until `shutdown` resolves, then stops
/// every container process (the API objects stay, as with a stopped kubelet).
pub async fn run(
    client: kube::Client,
    cfg: ShimConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ShimError> {
    let cfg = Arc::new(cfg);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let since = Timestamp::now();
    for node in &cfg.nodes {
        // A host has these directories before any pod mounts them.
        for rule in config::DEFAULT_HOST_PATHS {
            let dir =
                volumes::host_path_local(&cfg.host_path_rules(), &cfg.root, &node.name, rule.0);
            if dir.starts_with(&cfg.root) {
                std::fs::create_dir_all(&dir).map_err(|source| ShimError::Io {
                    path: dir.clone(),
                    source,
                })?;
            }
        }
        let ctx = Arc::new(pod::NodeCtx {
            client: client.clone(),
            cfg: cfg.clone(),
            node: node.clone(),
        });
        node::register(&ctx, since).await?;
        tracing::info!(node = %node.name, ip = %node.ip, "node registered");
        tasks.spawn(node::heartbeat(ctx.clone(), since, stop_rx.clone()));
        tasks.spawn(node::watch_pods(ctx, stop_rx.clone()));
    }
    tracing::info!(nodes = cfg.nodes.len(), root = %cfg.root.display(), "node shim ready");
    shutdown.await;
    tracing::info!("node shim stopping its containers");
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}
