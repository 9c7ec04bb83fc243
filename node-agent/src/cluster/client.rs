//! A blocking handle on the API server for the agent's synchronous code: a
//! one-worker tokio runtime that owns the client's connections, and a
//! deadline on every call so a handover never hangs on the API server.

use std::future::Future;
use std::time::Duration;

use baton_api::pairpod::{HandoverOutcome, HandoverReport};
use kube::Client;

use super::condition::{now_in_seconds, report_handover_at, report_soak, report_started};
use super::owner::{owner_of, Owner};
use super::slot::{Role, SlotInfo};
use super::{connect, ClusterError};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Deadline of one call when none is given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The API server, callable from plain threads (not from inside a tokio runtime).
pub struct ClusterClient {
    runtime: tokio::runtime::Runtime,
    client: Client,
    timeout: Duration,
}

impl ClusterClient {
    /// Connects with `config`, or the inferred one (in-cluster, else `KUBECONFIG`).
    pub fn connect(config: Option<kube::Config>) -> Result<Self, ClusterError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("baton-kube-client")
            .enable_all()
            .build()
            .map_err(ClusterError::Runtime)?;
        let client = runtime.block_on(connect(config))?;
        Ok(Self {
            runtime,
            client,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The same handle with another per-call deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets this agent's `baton.dev/Handover` condition on its own pod.
    pub fn report_handover(
        &self,
        me: &SlotInfo,
        outcome: HandoverOutcome,
        report: &HandoverReport,
    ) -> Result<(), ClusterError> {
        self.report_handover_at(me, outcome, report, now_in_seconds())
    }

    /// [`report_handover`](Self::report_handover) stamped `at`.
    pub fn report_handover_at(
        &self,
        me: &SlotInfo,
        outcome: HandoverOutcome,
        report: &HandoverReport,
        at: Time,
    ) -> Result<(), ClusterError> {
        let what = format!(
            "reporting the handover on {}/{}",
            me.pod_namespace, me.pod_name
        );
        self.call(
            what,
            report_handover_at(
                &self.client,
                &me.pod_namespace,
                &me.pod_name,
                outcome,
                report,
                at,
            ),
        )
    }

    /// Rewrites this agent's Committed handover condition with a soak's
    /// updated report, `lastTransitionTime` kept at `at` (the commit's).
    pub fn report_soak(
        &self,
        me: &SlotInfo,
        report: &HandoverReport,
        at: Time,
    ) -> Result<(), ClusterError> {
        let what = format!(
            "rewriting the handover report on {}/{}",
            me.pod_namespace, me.pod_name
        );
        self.call(
            what,
            report_soak(&self.client, &me.pod_namespace, &me.pod_name, report, at),
        )
    }

    /// Sets this agent's `baton.dev/Started` condition: it started as the
    /// active slot and owns the datapath.
    pub fn report_started(&self, me: &SlotInfo) -> Result<(), ClusterError> {
        let what = format!(
            "reporting the start on {}/{}",
            me.pod_namespace, me.pod_name
        );
        self.call(
            what,
            report_started(
                &self.client,
                &me.pod_namespace,
                &me.pod_name,
                me.slot,
                &me.version,
            ),
        )
    }

    /// What became of the `KmeshUpgrade` that owns this agent's pod.
    pub fn owner(&self, me: &SlotInfo) -> Result<Owner, ClusterError> {
        let what = format!("reading the owner of {}/{}", me.pod_namespace, me.pod_name);
        self.call(
            what,
            owner_of(&self.client, &me.pod_namespace, &me.pod_name),
        )
    }

    /// This agent's role given its pod as it is now ([`SlotInfo::role_in`]).
    pub fn role(&self, me: &SlotInfo) -> Result<Role, ClusterError> {
        let what = format!("reading pod {}/{}", me.pod_namespace, me.pod_name);
        self.call(what, me.current_role(&self.client))
    }

    /// The async client, for calls this handle does not wrap.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn call<T>(
        &self,
        what: String,
        f: impl Future<Output = Result<T, ClusterError>>,
    ) -> Result<T, ClusterError> {
        // The timer is created inside the runtime: `tokio::time::timeout`
        // evaluated on a plain thread (the agent's main thread) has no
        // runtime context and panics.
        let timeout = self.timeout;
        self.runtime
            .block_on(async move { tokio::time::timeout(timeout, f).await })
            .unwrap_or(Err(ClusterError::Timeout {
                what,
                after: self.timeout,
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_api::pairpod::Slot;

    /// From a plain thread, as `baton-agent`'s main thread calls it: a call
    /// ends with an error (nothing listens), it does not panic for want of a
    /// runtime.
    #[test]
    fn calls_from_a_plain_thread_fail_cleanly() {
        let config = kube::Config::new("http://127.0.0.1:1".parse().expect("url"));
        let client = ClusterClient::connect(Some(config))
            .expect("client")
            .with_timeout(Duration::from_secs(5));
        let me = SlotInfo {
            slot: Slot::A,
            version: "v1".into(),
            alt_version: "empty".into(),
            active_slot: Slot::A,
            node_name: "n1".into(),
            pod_name: "baton-n1".into(),
            pod_namespace: "baton-system".into(),
            run_dir: "/run/baton".into(),
        };
        let role = std::thread::spawn(move || client.role(&me).map_err(|e| e.to_string()))
            .join()
            .expect("the call must not panic");
        assert!(role.is_err(), "{role:?}");
    }
}
