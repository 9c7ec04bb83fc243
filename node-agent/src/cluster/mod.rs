//! The agent inside its operator-managed pod: which slot it is and whether it
//! may own the datapath (`slot`), its handover and start reports on the pod
//! (`condition`), the warm standby a retired agent becomes (`standby`), and
//! whether its owner is gone so SIGTERM must remove the datapath (`owner`).
//! The contract itself (names, report bodies, the rules to read them) is
//! `baton_api::pairpod`, shared with the operator; this module is the
//! agent's Kubernetes edge of it.

pub mod client;
pub mod condition;
pub mod owner;
pub mod slot;
pub mod standby;

pub use client::ClusterClient;
pub use condition::{report_handover, report_started};
pub use owner::Owner;
pub use slot::{Role, SlotInfo};

use std::time::Duration;

/// Why talking to the cluster, or reading the pod's environment, failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No API server configuration (neither in-cluster nor a kubeconfig).
    #[error("no Kubernetes API access (in-cluster or KUBECONFIG): {0}")]
    Config(#[source] kube::config::InferConfigError),
    /// The client could not be built from the configuration.
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// An API request failed.
    #[error("{what}: {source}")]
    Api {
        /// The request, e.g. `patching pod baton-system/baton-n1 status`.
        what: String,
        /// The API error.
        source: kube::Error,
    },
    /// A downward-API variable is missing or malformed.
    #[error("environment variable {var}: {reason}")]
    Env {
        /// Variable name.
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A condition message could not be encoded.
    #[error("encoding a pod condition message: {0}")]
    Encode(#[source] baton_api::pairpod::ContractError),
    /// The background runtime or thread could not start or stopped.
    #[error("kubernetes runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// A request did not finish in time.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// The request.
        what: String,
        /// The limit.
        after: Duration,
    },
}

/// A client for the API server: `config`, or inferred (the pod's service
/// account in a cluster, else `KUBECONFIG` / `~/.kube/config`). Must run
/// inside a tokio runtime, which the client's connections then belong to.
pub async fn connect(config: Option<kube::Config>) -> Result<kube::Client, ClusterError> {
    let config = match config {
        Some(c) => c,
        None => kube::Config::infer().await.map_err(ClusterError::Config)?,
    };
    kube::Client::try_from(config).map_err(ClusterError::Client)
}
