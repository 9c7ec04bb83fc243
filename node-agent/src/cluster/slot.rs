//! Which slot of the operator's pair pod this agent runs in, and what it may do.
//!
//! The operator (docs/operator.md, `operator/src/controller/{podspec,execute}.rs`)
//! hands each container, through the downward API, the pod annotations as they
//! were when the kubelet (re)started it:
//!
//! | operator step | annotations after it | containers |
//! |---|---|---|
//! | create pod | `active-slot=a`, `slot-a-version=<agent>`, `slot-b-version=<empty image>` | both start |
//! | StartUpgrade/StartRollback, cold | idle slot's image and `slot-X-version=<new>`, `handover-started` | the idle slot restarts with the new image |
//! | StartUpgrade/StartRollback, warm (the idle slot's standby already runs `<new>`) | `handover-started` only (`slot-X-version` unchanged) | none: the standby execs itself as the successor |
//! | FinishUpgrade (after Committed) | `active-slot=<new slot>`, no `handover-started`; the old slot keeps its image and version | none: the retired agent execs itself into the standby |
//! | ResetStandby (after Failed/timeout) | standby parked on the empty image, no `handover-started` | the failed slot restarts on the empty image |
//!
//! Why a warm standby and not parking: the kubelet keys crash-loop back-off
//! by container name and image and counts the kill of a swapped container as
//! an exit, so swapping a slot back to an image it ran minutes ago waited
//! 10 s, 20 s, ... 5 min (see [`super::standby`]).
//!
//! So an agent process sees one of: its slot is active (it owns the
//! datapath); its slot is the standby with its own new version (a handover
//! into it is running); its slot is a retired agent's (it waits as the warm
//! standby); or its slot is active but the other slot holds another agent
//! version. The last case is ambiguous from the environment alone: the active
//! agent restarted during a handover, or the *retired* agent restarted by the
//! kubelet after its successor committed and before the operator flipped the
//! active slot. [`SlotInfo::role`] answers from the environment;
//! [`SlotInfo::role_in`] resolves the ambiguity with the pod as it is now (its
//! handover condition), and should be preferred. A standby's environment is
//! frozen at its container's start: it reads the pod, and hands the successor
//! fresh values through `execve`.

use std::path::PathBuf;

use baton_api::pairpod::{
    active_slot, report_is_fresh, ConditionReport, HandoverOutcome, Slot, ANN_ACTIVE_SLOT,
    ANN_HANDOVER_STARTED, DEFAULT_RUN_DIR, ENV_ACTIVE_SLOT, ENV_NODE_NAME, ENV_POD_NAME,
    ENV_POD_NAMESPACE, ENV_RUN_DIR, ENV_SLOT, ENV_SLOT_VERSION, ENV_SLOT_VERSION_ALT,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::Client;

use super::condition::read_report;
use super::ClusterError;

/// What this agent may do with the datapath.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Owns the datapath: adopt the pins and program the maps.
    Active,
    /// A handover into this slot runs: take over from the active agent
    /// through `handover.sock`, then report on the pod.
    Successor,
    /// Must not touch the datapath. Wait as the slot's warm standby, do not
    /// exit (the kubelet would restart it): a later handover back to this
    /// version wakes it without a container restart.
    Retired,
}

/// The downward-API environment of an agent container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// [`ENV_SLOT`].
    pub slot: Slot,
    /// [`ENV_SLOT_VERSION`]: this slot's version annotation (empty if unset).
    pub version: String,
    /// [`ENV_SLOT_VERSION_ALT`]: the other slot's version annotation.
    pub alt_version: String,
    /// [`ENV_ACTIVE_SLOT`], read by [`active_slot`] (missing or garbled: slot a).
    pub active_slot: Slot,
    /// [`ENV_NODE_NAME`].
    pub node_name: String,
    /// [`ENV_POD_NAME`].
    pub pod_name: String,
    /// [`ENV_POD_NAMESPACE`].
    pub pod_namespace: String,
    /// [`ENV_RUN_DIR`] (default [`DEFAULT_RUN_DIR`]), shared by both slots.
    pub run_dir: PathBuf,
}

impl SlotInfo {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ClusterError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the variables through `get` (tests, or another source of env).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ClusterError> {
        let required = |var: &'static str| {
            get(var).filter(|v| !v.is_empty()).ok_or(ClusterError::Env {
                var,
                reason: "not set (is the agent running in its operator-managed pod?)".into(),
            })
        };
        let slot = required(ENV_SLOT)?
            .parse::<Slot>()
            .map_err(|e| ClusterError::Env {
                var: ENV_SLOT,
                reason: e.to_string(),
            })?;
        Ok(Self {
            slot,
            version: get(ENV_SLOT_VERSION).unwrap_or_default(),
            alt_version: get(ENV_SLOT_VERSION_ALT).unwrap_or_default(),
            active_slot: active_slot(get(ENV_ACTIVE_SLOT).as_deref()),
            node_name: required(ENV_NODE_NAME)?,
            pod_name: required(ENV_POD_NAME)?,
            pod_namespace: required(ENV_POD_NAMESPACE)?,
            run_dir: get(ENV_RUN_DIR)
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| DEFAULT_RUN_DIR.into())
                .into(),
        })
    }

    /// The role from the environment alone: active slot → `Active`; standby
    /// slot with a version of its own that differs from the active one →
    /// `Successor`; otherwise `Retired`. An active slot whose partner holds
    /// another agent version is `Active` here though it may be a retired agent
    /// restarted before the operator parked it: use [`SlotInfo::role_in`].
    pub fn role(&self) -> Role {
        if self.slot == self.active_slot {
            Role::Active
        } else if !self.version.is_empty() && self.version != self.alt_version {
            Role::Successor
        } else {
            Role::Retired
        }
    }

    /// The role given the pod as it is now (annotations and the handover
    /// condition, whose report counts only if fresh by
    /// [`report_is_fresh`], as the operator reads it). In order:
    /// 1. this slot's version annotation moved on → `Retired` (the kubelet is
    ///    about to replace this container);
    /// 2. this slot is active: `Retired` if the other slot's agent reported
    ///    Committed at its current version (the flip is pending), else `Active`;
    /// 3. this agent reported Committed → `Active` (the flip is pending);
    /// 4. this agent reported Failed → `Retired` (the operator parks it);
    /// 5. a handover is running (`handover-started`) → `Successor`;
    /// 6. otherwise `Retired`.
    pub fn role_in(&self, pod: &Pod) -> Role {
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        let ann = |k: &str| annotations.get(k).map(String::as_str);
        if ann(&self.slot.version_annotation()).is_some_and(|v| v != self.version) {
            return Role::Retired;
        }
        let active = active_slot(ann(ANN_ACTIVE_SLOT));
        let started = ann(ANN_HANDOVER_STARTED);
        let other = self.slot.other();
        let other_version = ann(&other.version_annotation()).unwrap_or(&self.alt_version);
        let start = started
            .and_then(|s| s.parse::<Timestamp>().ok())
            .map(|t| t.as_second());
        let report = read_report(pod).and_then(|(c, outcome, report)| {
            let at = c.last_transition_time.as_ref().map(|t| t.0.as_second());
            Some((outcome?, report?)).filter(|_| report_is_fresh(start, at))
        });
        let reported = |slot: Slot, version: &str| {
            report
                .as_ref()
                .filter(|(_, r)| r.is_from(slot, version))
                .map(|(o, _)| *o)
        };
        if active == self.slot {
            return match reported(other, other_version) {
                Some(HandoverOutcome::Committed) => Role::Retired,
                _ => Role::Active,
            };
        }
        match reported(self.slot, &self.version) {
            Some(HandoverOutcome::Committed) => Role::Active,
            Some(HandoverOutcome::Failed) => Role::Retired,
            None if started.is_some() => Role::Successor,
            None => Role::Retired,
        }
    }

    /// Reads this agent's pod and decides with [`SlotInfo::role_in`]. Needs
    /// `get` on `pods` in the pod's namespace.
    pub async fn current_role(&self, client: &Client) -> Result<Role, ClusterError> {
        let pod = Api::<Pod>::namespaced(client.clone(), &self.pod_namespace)
            .get(&self.pod_name)
            .await
            .map_err(|source| ClusterError::Api {
                what: format!("reading pod {}/{}", self.pod_namespace, self.pod_name),
                source,
            })?;
        Ok(self.role_in(&pod))
    }

    /// `<run dir>/handover.sock`, where the active agent listens for its successor.
    pub fn handover_socket(&self) -> PathBuf {
        self.run_dir.join(crate::handover::SOCKET)
    }
}

#[cfg(test)]
#[path = "slot_tests.rs"]
mod tests;
