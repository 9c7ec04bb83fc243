//! The warm standby: the agent that retired at a commit stays in its slot
//! instead of being parked on the empty image.
//!
//! Why: the kubelet keys crash-loop back-off by pod, container name and a
//! hash of the container's name and image, and counts the kill of a swapped
//! container as an exit (`kuberuntime_manager.go` `doBackOff`). Parking the
//! retired slot and swapping an agent back into it later met a back-off of
//! 10 s, 20 s, ... 5 min. A standby that re-execs itself as the successor
//! never restarts its container, so the kubelet is not involved at all.
//!
//! Life of a standby: after handing everything over, the retired agent
//! execs `/proc/self/exe` with its own arguments and [`ENV_STANDBY`] set (so
//! it drops the memory of its old datapath and threads); in that mode it
//! closes every inherited descriptor, watches its own pod, and when the
//! operator asks its slot to take over (the handover-started annotation with
//! this slot's own version, see [`SlotInfo::role_in`]) it execs itself again,
//! without [`ENV_STANDBY`] and with the downward-API variables refreshed
//! from the pod (the container's own env is frozen at its start).

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use baton_api::pairpod::{
    ANN_ACTIVE_SLOT, ANN_SOAK_SECONDS, ENV_ACTIVE_SLOT, ENV_SLOT_VERSION, ENV_SLOT_VERSION_ALT,
    ENV_SOAK_SECONDS,
};
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, WatchEvent, WatchParams};

use super::slot::{Role, SlotInfo};
use super::{connect, ClusterError};

/// Set (to `1`) in the environment of an agent that must wait as a standby.
pub const ENV_STANDBY: &str = "BATON_STANDBY";

/// How often the stop flag is checked, and the poll period when the agent
/// may not watch its pod.
const TICK: Duration = Duration::from_millis(200);
/// Poll period without `watch` permission on pods.
const POLL: Duration = Duration::from_secs(2);
/// Server-side timeout of one watch; the loop re-reads the pod after it.
const WATCH_SECONDS: u32 = 240;

/// Why the standby wait ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Wake {
    /// The operator asked this slot to take over: exec the successor with these variables.
    TakeOver(Vec<(&'static str, String)>),
    /// SIGTERM/SIGINT.
    Stopped,
}

/// The downward-API variables as the pod's annotations give them now.
pub fn successor_env(me: &SlotInfo, pod: &Pod) -> Vec<(&'static str, String)> {
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let ann = |k: &str| annotations.get(k).cloned().unwrap_or_default();
    vec![
        (ENV_SLOT_VERSION, ann(&me.slot.version_annotation())),
        (
            ENV_SLOT_VERSION_ALT,
            ann(&me.slot.other().version_annotation()),
        ),
        (ENV_ACTIVE_SLOT, ann(ANN_ACTIVE_SLOT)),
        // The canary's soak is set with the handover that wakes us.
        (ENV_SOAK_SECONDS, ann(ANN_SOAK_SECONDS)),
    ]
}

/// What a standby does with its pod as it is now.
pub fn decide(me: &SlotInfo, pod: &Pod) -> Option<Wake> {
    // Only a request for this slot at its own version wakes it; whatever
    // else the pod says (even "active" without a handover) is not for a
    // process that gave its datapath away.
    (me.role_in(pod) == Role::Successor).then(|| Wake::TakeOver(successor_env(me, pod)))
}

/// Closes every descriptor above stderr: a standby holds nothing, so no
/// program, map or socket of the old datapath survives in it by accident.
pub fn close_inherited_fds() {
    // SAFETY: close_range only closes descriptors; nothing in this process
    // uses any above 2 yet (called first thing in standby mode).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "close_range");
    }
}

/// Replaces this process with `/proc/self/exe` and the same arguments, with
/// `set` added to and `remove` taken from the environment. Returns only on
/// failure. The pid stays, so the kubelet sees the same container running.
pub fn exec_self(set: &[(&str, String)], remove: &[&str]) -> std::io::Error {
    let mut args = std::env::args_os();
    let mut cmd = Command::new("/proc/self/exe");
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    cmd.args(args);
    for k in remove {
        cmd.env_remove(k);
    }
    for (k, v) in set {
        cmd.env(k, v);
    }
    cmd.exec()
}

/// Waits until the operator asks this slot to take over, or `stop` is set.
/// Reads the pod, then watches it (needs `get`, and `watch` on pods; without
/// `watch` it polls every 2 s). Errors from the API server are retried: a
/// standby has nothing to lose by waiting.
pub fn wait(me: &SlotInfo, stop: &AtomicBool) -> Result<Wake, ClusterError> {
    // One thread: a standby should cost next to nothing.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ClusterError::Runtime)?;
    runtime.block_on(wait_async(me, stop))
}

async fn wait_async(me: &SlotInfo, stop: &AtomicBool) -> Result<Wake, ClusterError> {
    let stopped = || stop.load(Ordering::Relaxed);
    let client = connect(None).await?;
    let pods: Api<Pod> = Api::namespaced(client, &me.pod_namespace);
    let mut may_watch = true;
    while !stopped() {
        let pod = match pods.get(&me.pod_name).await {
            Ok(pod) => pod,
            Err(e) => {
                tracing::warn!(error = %e, "standby: reading the pod; retrying");
                sleep_unless(stop, POLL).await;
                continue;
            }
        };
        if let Some(wake) = decide(me, &pod) {
            return Ok(wake);
        }
        if !may_watch {
            sleep_unless(stop, POLL).await;
            continue;
        }
        let rv = pod.metadata.resource_version.clone().unwrap_or_default();
        let params = WatchParams::default()
            .fields(&format!("metadata.name={}", me.pod_name))
            .timeout(WATCH_SECONDS);
        let stream = match pods.watch(&params, &rv).await {
            Ok(s) => s,
            Err(kube::Error::Api(s)) if s.code == 403 => {
                tracing::info!("standby: may not watch pods; polling the pod instead");
                may_watch = false;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "standby: watching the pod; retrying");
                sleep_unless(stop, POLL).await;
                continue;
            }
        };
        let mut stream = std::pin::pin!(stream);
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                event = stream.try_next() => match event {
                    Ok(Some(WatchEvent::Added(pod) | WatchEvent::Modified(pod))) => {
                        if let Some(wake) = decide(me, &pod) {
                            return Ok(wake);
                        }
                    }
                    // Deleted, bookmark, error or the end: read the pod again.
                    Ok(Some(WatchEvent::Bookmark(_))) => {}
                    Ok(Some(_)) | Ok(None) | Err(_) => break,
                },
                _ = tick.tick() => if stopped() { return Ok(Wake::Stopped) },
            }
        }
        // The stream is dropped here; the next round re-reads the pod.
    }
    Ok(Wake::Stopped)
}

/// Turns this process into the standby: execs itself with [`ENV_STANDBY`]
/// set, so the memory of the agent it was is returned (measured: a few MiB
/// of RSS remain). Falls back to waiting in this process if the exec fails.
/// Returns when the standby was stopped; on a takeover request it never
/// returns (it has exec'd the successor) unless that exec fails.
pub fn enter(me: &SlotInfo) -> Result<(), ClusterError> {
    tracing::info!(slot = %me.slot, version = %me.version,
        "retired: becoming the warm standby of this slot");
    let err = exec_self(&[(ENV_STANDBY, "1".to_owned())], &[]);
    tracing::warn!(error = %err, "exec into standby mode failed; waiting in this process");
    run(me)
}

/// Standby mode (the process was started with [`ENV_STANDBY`]): waits for a
/// takeover request and execs the successor, or returns on SIGTERM/SIGINT.
pub fn run(me: &SlotInfo) -> Result<(), ClusterError> {
    close_inherited_fds();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).map_err(ClusterError::Runtime)?;
    }
    tracing::info!(slot = %me.slot, version = %me.version, pid = std::process::id(),
        "standby: waiting for a takeover request on the pod");
    match wait(me, &stop)? {
        Wake::Stopped => {
            tracing::info!("standby: stopped");
            Ok(())
        }
        Wake::TakeOver(env) => {
            tracing::info!(?env, "standby: asked to take over; exec'ing the successor");
            let err = exec_self(&env, &[ENV_STANDBY]);
            Err(ClusterError::Runtime(err))
        }
    }
}

async fn sleep_unless(stop: &AtomicBool, total: Duration) {
    let mut left = total;
    while !left.is_zero() && !stop.load(Ordering::Relaxed) {
        let step = left.min(TICK);
        tokio::time::sleep(step).await;
        left -= step;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_api::pairpod::Slot;
    use serde_json::json;

    fn me() -> SlotInfo {
        // Slot a ran v1 and retired when slot b committed v2.
        SlotInfo {
            slot: Slot::A,
            version: "agent:v1".into(),
            alt_version: "empty:1".into(),
            active_slot: Slot::A,
            node_name: "n1".into(),
            pod_name: "baton-n1".into(),
            pod_namespace: "baton-system".into(),
            run_dir: "/run/baton".into(),
        }
    }

    fn pod(annotations: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "baton-n1", "annotations": annotations},
            "status": {"conditions": [{"type": "baton.dev/Handover", "status": "True",
                "reason": "Committed", "lastTransitionTime": "2026-01-01T00:00:00Z",
                "message": json!({"slot": "b", "version": "agent:v2", "durationMs": 1,
                    "freezeMs": 1, "mapsReused": 6, "mapsMigrated": 0, "entriesCopied": 0,
                    "message": ""}).to_string()}]}}),
        )
        .expect("pod")
    }

    #[test]
    fn waits_until_its_own_version_is_asked_to_take_over() {
        // Before the flip (the successor's report is there) and after it.
        let before = json!({"baton.dev/active-slot": "a", "baton.dev/slot-a-version": "agent:v1",
            "baton.dev/slot-b-version": "agent:v2",
            "baton.dev/handover-started": "2026-01-01T00:00:00Z"});
        assert_eq!(decide(&me(), &pod(before)), None);
        let after = json!({"baton.dev/active-slot": "b", "baton.dev/slot-a-version": "agent:v1",
            "baton.dev/slot-b-version": "agent:v2"});
        assert_eq!(decide(&me(), &pod(after)), None);
        // A cold upgrade into this slot: the kubelet replaces the container.
        let cold = json!({"baton.dev/active-slot": "b", "baton.dev/slot-a-version": "agent:v3",
            "baton.dev/slot-b-version": "agent:v2",
            "baton.dev/handover-started": "2026-01-01T00:01:00Z"});
        assert_eq!(decide(&me(), &pod(cold)), None);
        // A warm takeover: annotations only, this slot's version unchanged.
        let warm = json!({"baton.dev/active-slot": "b", "baton.dev/slot-a-version": "agent:v1",
            "baton.dev/slot-b-version": "agent:v2",
            "baton.dev/handover-started": "2026-01-01T00:01:00Z"});
        assert_eq!(
            decide(&me(), &pod(warm)),
            Some(Wake::TakeOver(vec![
                ("BATON_SLOT_VERSION", "agent:v1".into()),
                ("BATON_SLOT_VERSION_ALT", "agent:v2".into()),
                ("BATON_ACTIVE_SLOT", "b".into()),
                // No soak asked: empty, as the downward API gives it.
                ("BATON_SOAK_SECONDS", String::new()),
            ]))
        );
        // A canary: the soak set with the handover reaches the successor.
        let canary = json!({"baton.dev/active-slot": "b", "baton.dev/slot-a-version": "agent:v1",
            "baton.dev/slot-b-version": "agent:v2", "baton.dev/soak-seconds": "300",
            "baton.dev/handover-started": "2026-01-01T00:01:00Z"});
        let Some(Wake::TakeOver(env)) = decide(&me(), &pod(canary)) else {
            panic!("a canary wakes the standby");
        };
        assert!(
            env.contains(&("BATON_SOAK_SECONDS", "300".into())),
            "{env:?}"
        );
    }
}
