//! The real-node rig (`e2e/node/rig.sh`) as seen from a test running inside
//! it (`rig.sh exec`): kubectl and Helm against its API server, waits that
//! fail with the node's state attached, and traffic from the cgroup the agent
//! attaches to. A test harness: it panics with context instead of returning
//! errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use baton_api::pairpod::{self, Slot, ANN_ACTIVE_SLOT, LABEL_UPGRADE, UPGRADE_PLURAL};
use serde_json::Value;

use crate::kit::probe::{ProbeProcess, ProbeRun};
use crate::kit::wait::poll;
use crate::report::Report;

/// Tag prefix of the images `e2e/images/build.sh --tag rig` builds.
pub const TAG: &str = "rig";
/// The layout-1 agent image.
pub const AGENT_V1: &str = "ghcr.io/baton-dev/baton-agent:rig-v1";
/// The layout-2 agent image.
pub const AGENT_V2: &str = "ghcr.io/baton-dev/baton-agent:rig-v2";
/// A test-hooks agent whose programs the verifier rejects (`build.sh --test-images`).
pub const AGENT_BROKEN: &str = "ghcr.io/baton-dev/baton-agent:rig-broken";
/// A test-hooks agent that refuses 1 connect to a VIP in 4 (`build.sh --test-images`).
pub const AGENT_FAULTY: &str = "ghcr.io/baton-dev/baton-agent:rig-faulty";
/// The empty image (idle slot, pod sandbox).
pub const EMPTY: &str = "ghcr.io/baton-dev/baton-empty:1";
/// The probe image (backends).
pub const PROBE: &str = "ghcr.io/baton-dev/baton-probe:rig";
/// Namespace of the release.
pub const NS: &str = "baton-system";

/// The rig, from the environment `rig.sh exec` sets.
pub struct Rig {
    /// The rig's directory (logs, kubeconfigs).
    pub dir: PathBuf,
    /// Node name.
    pub node: String,
    /// Node address (the API server listens there on 6443).
    pub node_ip: String,
    /// cgroup v2 directory the agent attaches to; clients run in it.
    pub cgroup: PathBuf,
    /// Directory of helm (and the Kubernetes binaries).
    pub bins: PathBuf,
    /// Repository root.
    pub repo: PathBuf,
}

impl Rig {
    /// The rig this test runs in; `None` (test skipped, said loudly) only when
    /// `BATON_SKIP_REAL_NODE=1`, a panic with the way to start it otherwise.
    pub fn from_env() -> Option<Rig> {
        if std::env::var("BATON_SKIP_REAL_NODE").as_deref() == Ok("1") {
            eprintln!("SKIPPED: real-node scenario (BATON_SKIP_REAL_NODE=1): nothing was checked");
            return None;
        }
        let var = |k: &str| {
            std::env::var(k).unwrap_or_else(|_| {
                panic!(
                    "{k} is unset: run the real-node tests inside the rig:\n  \
                     e2e/node/rig.sh up --images DIR && e2e/node/rig.sh exec cargo test \
                     -p baton-e2e --features real-node --test real_node\n\
                     (scripts/test.sh does all of it), or set BATON_SKIP_REAL_NODE=1"
                )
            })
        };
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        Some(Rig {
            dir: var("BATON_NODE_DIR").into(),
            node: var("BATON_NODE_NAME"),
            node_ip: var("BATON_NODE_IP"),
            cgroup: var("BATON_NODE_CGROUP").into(),
            bins: crate::apiserver::bin_dir(),
            repo,
        })
    }

    /// Runs a program; stdout on success, panics with stderr otherwise.
    pub fn run(&self, program: &Path, args: &[&str]) -> String {
        let out = self.try_run(program, args);
        assert!(
            out.status.success(),
            "{} {}: {}\n{}",
            program.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a program and returns its output, whatever its status.
    pub fn try_run(&self, program: &Path, args: &[&str]) -> Output {
        Command::new(program)
            .args(args)
            .current_dir(&self.repo)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()))
    }

    /// `kubectl ARGS` (KUBECONFIG is the rig's admin).
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.run(Path::new("kubectl"), args)
    }

    /// `kubectl get ... -o json`, parsed; `None` when the object does not exist.
    pub fn get(&self, args: &[&str]) -> Option<Value> {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json", "--ignore-not-found"]);
        let out = self.kubectl(&a);
        if out.trim().is_empty() {
            return None;
        }
        Some(serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl {a:?}: {e}: {out}")))
    }

    /// `helm ARGS` with the rig's Helm.
    pub fn helm(&self, args: &[&str]) -> String {
        self.run(&self.bins.join("helm"), args)
    }

    /// `e2e/node/rig.sh ARGS` (e.g. `restart kubelet`).
    pub fn rig(&self, args: &[&str]) -> String {
        self.run(&self.repo.join("e2e/node/rig.sh"), args)
    }

    /// Polls `f` every 100 ms until it returns `Some`; panics after `timeout`
    /// with what the node looks like.
    pub fn wait_until<T>(&self, what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
        poll(what, timeout, Duration::from_millis(100), f, || {
            self.diagnostics()
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Pods, the KmeshUpgrade, recent events and the operator's log tail.
    pub fn diagnostics(&self) -> String {
        let show = |args: &[&str]| {
            let out = self.try_run(Path::new("kubectl"), args);
            format!(
                "$ kubectl {}\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        };
        [
            show(&["get", "pods", "-A", "-o", "wide"]),
            show(&["get", UPGRADE_PLURAL, "-A", "-o", "yaml"]),
            show(&["get", "events", "-A", "--sort-by=.lastTimestamp"]),
            show(&["logs", "-n", NS, "deploy/baton-operator", "--tail=40"]),
        ]
        .join("\n")
    }

    /// The KmeshUpgrade `name`'s status (empty object before the first write).
    pub fn upgrade_status(&self, name: &str) -> Value {
        self.get(&[UPGRADE_PLURAL, "-n", NS, name])
            .map(|u| u["status"].clone())
            .unwrap_or(Value::Null)
    }

    /// Waits until the KmeshUpgrade is Complete on `image` with every node
    /// ready; returns its status.
    pub fn wait_complete(&self, name: &str, image: &str, timeout: Duration) -> Value {
        self.wait_until(&format!("kmu/{name} Complete on {image}"), timeout, || {
            let s = self.upgrade_status(name);
            let nodes = s["nodes"].as_i64().unwrap_or(0);
            (s["phase"] == "Complete"
                && s["stableImage"] == image
                && nodes > 0
                && s["updated"].as_i64() == Some(nodes)
                && s["ready"].as_i64() == Some(nodes))
            .then_some(s)
        })
    }

    /// The agent pair pod on this node (label [`LABEL_UPGRADE`]`=<name>`).
    pub fn agent_pod(&self, name: &str) -> Option<Value> {
        // Not its preflight check pods, which carry the same upgrade label.
        let selector = format!("{LABEL_UPGRADE}={name},!baton.dev/role");
        let list = self.get(&["pods", "-n", NS, "-l", &selector])?;
        list["items"].as_array()?.first().cloned()
    }
}

/// Resident memory (KiB, `VmRSS`) of each container's main process in `pod`,
/// by container name, read through containerd's task list.
pub fn container_rss(pod: &Value) -> Vec<(String, u64)> {
    let Ok(sock) = std::env::var("BATON_NODE_CONTAINERD") else {
        return Vec::new();
    };
    let out = Command::new("ctr")
        .args(["-a", &sock, "-n", "k8s.io", "tasks", "ls"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let pid_of = |id: &str| {
        out.lines()
            .find(|l| l.starts_with(id))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_owned)
    };
    let statuses = pod["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    statuses
        .iter()
        .filter_map(|c| {
            let id = c["containerID"].as_str()?.strip_prefix("containerd://")?;
            let pid = pid_of(id)?;
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let kib = status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((c["name"].as_str()?.to_owned(), kib))
        })
        .collect()
}

/// `ClusterIP:port` of a Service.
pub fn cluster_ip(svc: &Value) -> String {
    format!(
        "{}:{}",
        svc["spec"]["clusterIP"].as_str().unwrap_or_default(),
        svc["spec"]["ports"][0]["port"]
    )
}

/// A container status of a pod by container name.
pub fn container_status<'a>(pod: &'a Value, container: &str) -> Option<&'a Value> {
    pod["status"]["containerStatuses"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == container)
}

/// The status of `slot`'s container in the agent pair pod.
pub fn slot_status(pod: &Value, slot: Slot) -> Option<&Value> {
    container_status(pod, slot.container())
}

/// Annotation `key` of a pod, if set.
pub fn annotation<'a>(pod: &'a Value, key: &str) -> Option<&'a str> {
    pod["metadata"]["annotations"][key].as_str()
}

/// The slot the pair pod's annotation makes active (slot a when missing or
/// garbled: `baton_api::pairpod::active_slot`).
pub fn active_slot(pod: &Value) -> Slot {
    pairpod::active_slot(annotation(pod, ANN_ACTIVE_SLOT))
}

/// One `baton-probe run` in the rig's client cgroup: paced connects to a
/// target plus held connections, until [`Traffic::stop`].
pub struct Traffic(ProbeProcess);

impl Traffic {
    /// Starts connecting to `target` at `rate`/s with `hold` held connections.
    pub fn start(rig: &Rig, dir: &Path, target: &str, rate: f64, hold: u64) -> Traffic {
        let target = target
            .parse()
            .unwrap_or_else(|e| panic!("target {target}: {e}"));
        let run = ProbeRun::new()
            .cgroup(&rig.cgroup)
            .no_netns()
            .target(target)
            .duration(Duration::from_secs(1800))
            .rate(rate)
            .concurrency(4)
            .hold(hold);
        Traffic(
            ProbeProcess::start(run, dir, "traffic", Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("{e}")),
        )
    }

    /// Stops the probe and returns its report.
    pub fn stop(self) -> Report {
        self.0
            .report(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}"))
    }
}
