//! A fleet of fake nodes that run the REAL agent on the REAL datapath, for the
//! cluster scenarios (`upgrade.rs`, `failure.rs`).
//!
//! One [`Fleet`] is one real etcd + kube-apiserver, the real `baton-operator
//! run` (a process, restartable), and `baton-node-shim` playing the kubelet
//! for a few nodes. Per node, the test makes what a host would have:
//!
//! * a child cgroup `<cgroup2 mount>/baton-cluster-<test>-<pid>/<node>`, which
//!   the pod's hostPath `/sys/fs/cgroup` maps to (`--host-path`), so each
//!   node's agent attaches its programs there and nowhere else;
//! * a bpffs mounted at `<root>/<node>/bpffs` (the shim's default for hostPath
//!   `/sys/fs/bpf`): each node's pins are private;
//! * an address `127.0.x.N`, the node IP, so `BATON_METRICS_ADDR={host_ip}:9095`
//!   gives every node its own metrics listener.
//!
//! Images map to real binaries: `…/baton-agent:v1` → the layout-1 agent,
//! `…:v2` → the layout-2 agent (so every v1↔v2 handover migrates the
//! endpoint and backend maps), the empty image → the shim's idle mode; tests
//! add more (bad builds). The agents run as the chart's agent account (RBAC
//! from the chart's template) and read a ClusterIP Service `default/web` and
//! its EndpointSlice from the API server: three ready endpoints on pod-like
//! addresses `10.244.0.11-13`, port 80 → 8080.
//!
//! [`Traffic`] runs one `baton-probe` per node, in that node's cgroup, in a
//! private netns whose `lo` holds the three endpoint addresses
//! (`--local-backends`), connecting to the ClusterIP continuously: every
//! connect goes through that node's agent's programs.
//!
//! [`RolloutLog`] watches the agent pods and records every handover start
//! (the [`ANN_HANDOVER_STARTED`] annotation appearing) and the most
//! handovers ever in flight at once.
//!
//! Everything is undone on drop, also when a test fails: probes killed, the
//! shim stopped (its containers with it), the operator killed, pins removed,
//! bpffs unmounted, cgroups removed. `BATON_KEEP_CLUSTER_DIR=1` keeps the
//! scratch directory (operator, shim and container logs, probe reports).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_agent::cluster::standby::ENV_STANDBY;
use baton_api::admin::{Dump, Status, Verify};
use baton_api::pairpod::{self, Slot, ANN_ACTIVE_SLOT, ANN_HANDOVER_STARTED};
use baton_e2e::apiserver::{install_agent_rbac, ApiServer};
use baton_e2e::kit::bins::shim_bin;
use baton_e2e::kit::kube::{
    agent_pod_selector, create_namespace, install_crd, upgrade_object, upgrades, MANAGER,
};
use baton_e2e::kit::sandbox::{cgroup_root, BpffsMount, CgroupDir};
use baton_e2e::kit::wait::eventually;
use baton_e2e::kit::{agent, agent_bin, Operator, OperatorCmd, ProbeProcess, ProbeRun};
use baton_e2e::report::Report;
use baton_e2e::shim::launch::{ShimLaunch, ShimProcess};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::{json, Value};

/// Namespace of the KmeshUpgrade and the agent pods (the chart's release namespace).
pub const NS: &str = "baton-system";
/// Name of the KmeshUpgrade; pods are `baton-<node>`.
pub const UPGRADE: &str = "baton";
/// The agent built for map layout 1.
pub const AGENT_V1: &str = "ghcr.io/baton-dev/baton-agent:v1";
/// The agent built for map layout 2.
pub const AGENT_V2: &str = "ghcr.io/baton-dev/baton-agent:v2";
/// The empty image parked in idle slots.
pub const EMPTY: &str = "ghcr.io/baton-dev/baton-empty:1";
/// The Service the agents program.
pub const SERVICE: &str = "web";
/// Its endpoints (pod IPs; the API server refuses loopback endpoint addresses).
pub const BACKENDS: [&str; 3] = ["10.244.0.11", "10.244.0.12", "10.244.0.13"];
/// Service port.
pub const PORT: u16 = 80;
/// Endpoint (target) port.
pub const TARGET_PORT: u16 = 8080;
/// Node metrics port (on each node's own address).
pub const METRICS_PORT: u16 = 9095;
/// The operator's lease, short so a replacement takes over within seconds.
const LEASE_SECONDS: &str = "--lease-seconds=3";
/// The node label the tests' `KmeshUpgrade`s select (`=on`), as the sample
/// does: a user's choice, no part of the pair-pod contract.
pub const MESH_LABEL: &str = "baton.dev/mesh";

/// `<backend>:8080` for every endpoint: what the probes' backends answer as.
pub fn backend_identities() -> BTreeSet<String> {
    BACKENDS
        .iter()
        .map(|b| format!("{b}:{TARGET_PORT}"))
        .collect()
}

/// Largest anonymous (private) RSS a warm standby may have, in KiB: it
/// holds no datapath, only a one-thread runtime and an API client. (Its
/// file-backed RSS is the agent binary's mapped pages, shared and clean.)
pub const STANDBY_RSS_MAX_KIB: u64 = 8 * 1024;

/// Whether process `pid` runs in standby mode (`BATON_STANDBY=1` in the
/// environment of its current image: the agent exec'd itself into it).
pub fn in_standby_mode(pid: u32) -> bool {
    let set = format!("{ENV_STANDBY}=1");
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|b| *b == 0).any(|kv| kv == set.as_bytes()))
        .unwrap_or(false)
}

/// One node's host side; its bpffs unmounted (pins removed), then its
/// cgroup removed, on drop.
pub struct NodeBox {
    /// Node name.
    pub name: String,
    /// Node IP (loopback address of its own).
    pub ip: Ipv4Addr,
    bpffs: BpffsMount,
    cgroup: CgroupDir,
}

impl NodeBox {
    /// Its cgroup (what the pod's `/sys/fs/cgroup` is).
    pub fn cgroup(&self) -> &Path {
        self.cgroup.path()
    }

    /// The agent's pin directory (`BATON_BPFFS`) in its bpffs (what the pod's
    /// `/sys/fs/bpf` is).
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs.path().join("baton")
    }
}

/// The per-node cgroups and bpffs mounts below one parent cgroup; removed on
/// drop (the nodes first).
pub struct Kernel {
    /// The nodes, in the order given.
    pub nodes: Vec<NodeBox>,
    parent: CgroupDir,
}

impl Kernel {
    fn new(test: &str, root: &Path, nodes: &[(String, Ipv4Addr)]) -> Self {
        let parent = CgroupDir::create(
            &cgroup_root().unwrap(),
            &format!("baton-cluster-{test}-{}", std::process::id()),
        )
        .unwrap();
        let nodes = nodes
            .iter()
            .map(|(name, ip)| NodeBox {
                name: name.clone(),
                ip: *ip,
                cgroup: parent.child(name).unwrap(),
                bpffs: BpffsMount::mount(&root.join(name).join("bpffs")).unwrap(),
            })
            .collect();
        Self { nodes, parent }
    }

    /// Node `name`.
    pub fn node(&self, name: &str) -> &NodeBox {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }
}

/// What [`RolloutLog`] saw.
#[derive(Clone, Debug, Default)]
pub struct Rollout {
    in_flight: BTreeSet<String>,
    /// Most pods with a handover running at the same time.
    pub max_in_flight: usize,
    /// Per pod, the image of every handover started there, in order.
    pub starts: BTreeMap<String, Vec<String>>,
}

impl Rollout {
    fn observe(&mut self, pod: &Pod) {
        let Some(name) = pod.metadata.name.clone() else {
            return;
        };
        let ann = pod.metadata.annotations.clone().unwrap_or_default();
        if ann.contains_key(ANN_HANDOVER_STARTED) {
            if self.in_flight.insert(name.clone()) {
                // The idle slot got the new image in the same patch.
                let active = pairpod::active_slot(ann.get(ANN_ACTIVE_SLOT).map(String::as_str));
                let image = ann
                    .get(&active.other().version_annotation())
                    .cloned()
                    .unwrap_or_default();
                self.starts.entry(name).or_default().push(image);
            }
        } else {
            self.in_flight.remove(&name);
        }
        self.max_in_flight = self.max_in_flight.max(self.in_flight.len());
    }

    /// Handover starts on `node`'s pod.
    pub fn starts_on(&self, node: &str) -> Vec<String> {
        self.starts
            .get(&pod_name(node))
            .cloned()
            .unwrap_or_default()
    }

    /// Whether `node`'s pod has a handover running now.
    pub fn in_flight_on(&self, node: &str) -> bool {
        self.in_flight.contains(&pod_name(node))
    }
}

/// A watch of the agent pods feeding a [`Rollout`]; stopped on drop.
pub struct RolloutLog {
    state: Arc<tokio::sync::watch::Sender<Rollout>>,
    task: tokio::task::JoinHandle<()>,
}

impl RolloutLog {
    fn start(client: &kube::Client) -> Self {
        let state = Arc::new(tokio::sync::watch::Sender::new(Rollout::default()));
        let api: Api<Pod> = Api::namespaced(client.clone(), NS);
        let config = watcher::Config::default().labels(&agent_pod_selector());
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(api, config));
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                        shared.send_modify(|s| s.observe(&pod))
                    }
                    Ok(watcher::Event::Delete(pod)) => shared.send_modify(|s| {
                        if let Some(name) = &pod.metadata.name {
                            s.in_flight.remove(name);
                        }
                    }),
                    Ok(_) => {}
                    Err(e) => eprintln!("rollout watch: {e}"),
                }
            }
        });
        Self { state, task }
    }

    /// What was seen so far.
    pub fn get(&self) -> Rollout {
        self.state.borrow().clone()
    }

    /// Returns as soon as the watch shows `ok` (no polling delay); panics
    /// after `timeout`.
    pub async fn wait_for(&self, what: &str, timeout: Duration, ok: impl FnMut(&Rollout) -> bool) {
        let mut rx = self.state.subscribe();
        let seen = matches!(
            tokio::time::timeout(timeout, rx.wait_for(ok)).await,
            Ok(Ok(_))
        );
        if !seen {
            panic!(
                "timed out after {timeout:?} waiting for {what}: {:?}",
                self.get()
            );
        }
    }
}

impl Drop for RolloutLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The agent pod of `node`.
pub fn pod_name(node: &str) -> String {
    format!("{UPGRADE}-{node}")
}

/// A running fleet. Field order is drop order: probes, operator, shim (and
/// with it every agent), the pod watch, then the kernel side, the API server
/// and the scratch directory.
pub struct Fleet {
    traffic: Option<Traffic>,
    operator: Option<Operator>,
    /// The node shim.
    pub shim: ShimProcess,
    /// Handover starts and concurrency, from a pod watch.
    pub rollout: RolloutLog,
    /// Per-node cgroups and bpffs mounts.
    pub kernel: Kernel,
    /// Admin client.
    pub client: kube::Client,
    /// The API server.
    pub server: ApiServer,
    /// The ClusterIP:port of `default/web`.
    pub vip: SocketAddr,
    /// The layout-1 and layout-2 agent binaries.
    pub agent_bins: [PathBuf; 2],
    /// Scratch directory (shim root, logs, probe output).
    pub dir: PathBuf,
    operator_generation: u32,
    /// Holds the scratch directory (removed on drop unless kept).
    _tmp: tempfile::TempDir,
}

/// Extra images of a fleet: `(image, command)`, as `--image IMAGE=COMMAND`.
pub type ExtraImages = Vec<(String, String)>;

impl Fleet {
    /// Starts everything for `nodes` (named `<name>` with IPs `net.N`, N = 1..),
    /// labelled [`MESH_LABEL`]`=on`; `extra` maps more images (it gets the
    /// layout-1 and layout-2 agent binaries and the scratch dir). `None` when
    /// API-server tests are skipped.
    pub async fn start(
        test: &str,
        net: [u8; 3],
        nodes: &[&str],
        extra: impl FnOnce(&[PathBuf; 2], &Path) -> ExtraImages,
    ) -> Option<Fleet> {
        let server = ApiServer::start().await?;
        let t0 = Instant::now();
        // The other layout may need a build (scripts/test.sh prebuilds it).
        let agent_bins = [1, 2].map(|layout| agent_bin(layout).unwrap());
        let client = server.client().await;
        install_crd(&client).await.unwrap();
        create_namespace(&client, NS).await.unwrap();
        install_agent_rbac(&client, NS).await;
        let vip = create_service(&client).await;

        let keep = std::env::var_os("BATON_KEEP_CLUSTER_DIR").is_some();
        let tmp = tempfile::Builder::new()
            .prefix("baton-cluster-")
            .disable_cleanup(keep)
            .tempdir()
            .expect("tempdir");
        if keep {
            eprintln!("keeping {} (BATON_KEEP_CLUSTER_DIR)", tmp.path().display());
        }
        let dir = tmp.path().to_path_buf();
        let root = dir.join("root");
        let nodes: Vec<(String, Ipv4Addr)> = nodes
            .iter()
            .zip(1u8..)
            .map(|(n, i)| ((*n).to_owned(), Ipv4Addr::new(net[0], net[1], net[2], i)))
            .collect();
        let kernel = Kernel::new(test, &root, &nodes);
        let run = |bin: &Path| format!("{} run", bin.display());
        let mut launch = ShimLaunch::new(&shim_bin().unwrap(), server.kubeconfig(), &root)
            .image(AGENT_V1, &run(&agent_bins[0]))
            .image(AGENT_V2, &run(&agent_bins[1]))
            .image(EMPTY, "idle")
            .arg(
                "--host-path",
                format!("/sys/fs/cgroup={}/{{node}}", kernel.parent.path().display()),
            )
            .env("BATON_METRICS_ADDR", &format!("{{host_ip}}:{METRICS_PORT}"))
            .backoff(Duration::from_millis(300), Duration::from_secs(2))
            .process_env("RUST_LOG", "info");
        for (image, command) in extra(&agent_bins, &dir) {
            launch = launch.image(&image, &command);
        }
        for (name, ip) in &nodes {
            launch = launch.node(&format!("{name}={ip},{MESH_LABEL}=on"));
        }
        let shim = launch.spawn().expect("starting baton-node-shim");
        let rollout = RolloutLog::start(&client);
        let mut fleet = Fleet {
            traffic: None,
            operator: None,
            shim,
            rollout,
            kernel,
            client,
            server,
            vip,
            agent_bins,
            dir,
            operator_generation: 0,
            _tmp: tmp,
        };
        fleet.start_operator();
        eprintln!(
            "fleet {test}: {} nodes, ClusterIP {}, ready in {:.1} s",
            nodes.len(),
            fleet.vip,
            t0.elapsed().as_secs_f64()
        );
        Some(fleet)
    }

    /// Starts a `baton-operator run` (a new identity each time).
    pub fn start_operator(&mut self) {
        self.operator_generation += 1;
        let identity = format!("baton-operator-{}", self.operator_generation);
        self.operator = Some(
            OperatorCmd::new(self.server.kubeconfig(), NS, &identity)
                .unwrap()
                .arg(LEASE_SECONDS)
                .spawn(&self.dir.join("operator.log"))
                .unwrap(),
        );
    }

    /// SIGKILLs the operator (its lease stays until it expires).
    pub fn kill_operator(&mut self) {
        if let Some(op) = self.operator.take() {
            op.kill();
        }
    }

    /// Logs for failure messages: operator, shim and containers, API server.
    pub fn logs(&self) -> String {
        let op = std::fs::read_to_string(self.dir.join("operator.log")).unwrap_or_default();
        let lines: Vec<&str> = op.lines().collect();
        format!(
            "--- operator.log ---\n{}\n{}\n{}",
            lines[lines.len().saturating_sub(80)..].join("\n"),
            self.shim.logs(),
            self.server.logs()
        )
    }

    fn upgrades(&self) -> Api<DynamicObject> {
        upgrades(&self.client, NS)
    }

    /// Creates the KmeshUpgrade for `image` with `strategy`, selecting the mesh nodes.
    pub async fn create_upgrade(&self, image: &str, mut strategy: Value) {
        // The emulated kubelet runs agent slots, not check pods: preflight
        // is proven on the real node (real_node.rs), off here.
        if strategy.get("preflight").is_none() {
            strategy["preflight"] = json!({"mode": "Disabled"});
        }
        let upgrade = upgrade_object(
            UPGRADE,
            NS,
            json!({
                "nodeSelector": {"matchLabels": {MESH_LABEL: "on"}},
                "agentImage": image,
                "emptyImage": EMPTY,
                "strategy": strategy,
            }),
        )
        .unwrap();
        self.upgrades()
            .create(&PostParams::default(), &upgrade)
            .await
            .expect("creating the KmeshUpgrade");
    }

    /// Merge-patches `spec` (as `kubectl patch --type merge`); returns the new generation.
    pub async fn patch_spec(&self, spec: Value) -> Result<i64, kube::Error> {
        let patched = self
            .upgrades()
            .patch(
                UPGRADE,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": spec })),
            )
            .await?;
        Ok(patched.metadata.generation.unwrap_or_default())
    }

    /// The KmeshUpgrade as stored.
    pub async fn upgrade(&self) -> DynamicObject {
        self.upgrades()
            .get(UPGRADE)
            .await
            .expect("reading the KmeshUpgrade")
    }

    /// Waits until the status of generation `generation` satisfies `ok`.
    pub async fn wait_status(
        &self,
        what: &str,
        generation: i64,
        timeout: Duration,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        let upgrades = self.upgrades();
        eventually(
            what,
            timeout,
            || self.logs(),
            async || {
                let status = upgrades.get(UPGRADE).await.ok()?.data["status"].clone();
                (status["observedGeneration"].as_i64() >= Some(generation) && ok(&status))
                    .then_some(status)
            },
        )
        .await
        .unwrap()
    }

    /// The agent pod of `node`.
    pub async fn pod(&self, node: &str) -> Pod {
        Api::<Pod>::namespaced(self.client.clone(), NS)
            .get(&pod_name(node))
            .await
            .unwrap_or_else(|e| panic!("reading pod {}: {e}", pod_name(node)))
    }

    /// Events of the KmeshUpgrade with `reason` (events.k8s.io).
    pub async fn events(&self, reason: &str) -> Vec<Event> {
        Api::<Event>::namespaced(self.client.clone(), NS)
            .list(&ListParams::default())
            .await
            .expect("listing events")
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect()
    }

    /// Events with `reason` about `node` (its agent pod is the related object).
    pub async fn node_events(&self, reason: &str, node: &str) -> Vec<Event> {
        let pod = pod_name(node);
        self.events(reason)
            .await
            .into_iter()
            .filter(|e| e.related.as_ref().and_then(|r| r.name.as_deref()) == Some(pod.as_str()))
            .collect()
    }

    /// Names of the nodes.
    pub fn node_names(&self) -> Vec<String> {
        self.kernel.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// The run dir ([`ENV_RUN_DIR`](baton_api::pairpod::ENV_RUN_DIR), the
    /// pod's emptyDir) of `node`'s agent pod.
    pub async fn run_dir(&self, node: &str) -> PathBuf {
        let pod = self.pod(node).await;
        let uid: String = pod
            .metadata
            .uid
            .unwrap_or_default()
            .chars()
            .take(8)
            .collect();
        self.dir
            .join("root")
            .join(node)
            .join(format!("{}-{uid}", pod_name(node)))
            .join("run")
    }

    /// `baton-agent CMD` against `node`'s agent (admin socket, else the pins).
    pub async fn agent_cli(&self, node: &str, cmd: &str) -> Output {
        let run_dir = self.run_dir(node).await;
        agent::cli(
            &self.agent_bins[1],
            cmd,
            &run_dir,
            &self.kernel.node(node).pin_dir(),
        )
        .unwrap()
    }

    /// The answer of `baton-agent CMD` on `node` (`status`: [`Status`],
    /// `dump`: [`Dump`], `verify`: [`Verify`]), if it succeeded and an
    /// agent answered it.
    pub async fn agent_answer<T: serde::de::DeserializeOwned>(
        &self,
        node: &str,
        cmd: &str,
    ) -> Option<T> {
        let out = self.agent_cli(node, cmd).await;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `baton-agent status` on `node`, if its agent answered.
    pub async fn agent_status(&self, node: &str) -> Option<Status> {
        self.agent_answer(node, "status").await
    }

    /// Waits until `node`'s agent (of map layout `layout`) serves `default/web`
    /// with its three endpoints.
    pub async fn wait_serving(&self, node: &str, layout: u64) {
        let want: BTreeSet<String> = backend_identities();
        eventually(
            &format!("the layout-{layout} agent on {node} to program default/{SERVICE}"),
            Duration::from_secs(60),
            || self.logs(),
            async || {
                let status = self.agent_status(node).await?;
                if u64::from(status.layout_version) != layout {
                    return None;
                }
                let dump: Dump = self.agent_answer(node, "dump").await?;
                let web = dump
                    .services
                    .into_iter()
                    .find(|s| s.name == format!("default/{SERVICE}"))?;
                let seen: BTreeSet<String> = web
                    .buckets
                    .into_iter()
                    .flatten()
                    .map(|e| {
                        if e.contains(':') {
                            e
                        } else {
                            format!("{e}:{TARGET_PORT}")
                        }
                    })
                    .collect();
                (web.vips.first() == Some(&self.vip.ip().to_string()) && seen == want).then_some(())
            },
        )
        .await
        .unwrap();
    }

    /// `baton-agent verify` on `node` exits 0 with no violation; returns the report.
    pub async fn assert_verify_clean(&self, node: &str, when: &str) -> Verify {
        let out = self.agent_cli(node, "verify").await;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{when}: baton-agent verify on {node}: {}\n{text}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Verify = serde_json::from_str(&text).expect("verify prints its report");
        assert!(report.is_clean(), "{when}: {node}: {report:#?}");
        report
    }

    /// How many times the shim started `image` in either slot of `node`'s pod
    /// (from the container logs' run headers).
    pub fn process_starts(&self, node: &str, image: &str) -> usize {
        let logs = self.dir.join("root").join(node).join("logs");
        Slot::ALL
            .iter()
            .map(|slot| {
                let container = slot.container();
                let file = logs.join(format!("{NS}_{}_{container}.log", pod_name(node)));
                std::fs::read_to_string(file)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| {
                        l.starts_with("--- baton-node-shim: ")
                            && l.contains(&format!(" image {image} at "))
                    })
                    .count()
            })
            .sum()
    }

    /// The pod annotations of `node`.
    pub async fn annotations(&self, node: &str) -> BTreeMap<String, String> {
        self.pod(node)
            .await
            .metadata
            .annotations
            .unwrap_or_default()
    }

    /// Starts one probe per node (see [`Traffic`]).
    pub fn start_traffic(&mut self, rate_per_node: f64) {
        assert!(self.traffic.is_none(), "traffic already runs");
        self.traffic = Some(Traffic::start(self, rate_per_node));
    }

    /// Stops the probes; panics unless every connect of every node reached one
    /// of the three backends. Returns the total connects.
    pub fn stop_traffic(&mut self, when: &str) -> u64 {
        let traffic = self.traffic.take().expect("traffic runs");
        let reports = traffic.stop();
        assert_clean(&reports, when)
    }

    /// Scrapes `node`'s agent metrics (its own address).
    pub fn scrape(&self, node: &str) -> String {
        use std::io::{Read, Write};
        let addr = SocketAddr::from((self.kernel.node(node).ip, METRICS_PORT));
        let mut s = match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => s,
            Err(e) => return format!("connect {addr}: {e}"),
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body
    }
}

/// Creates `default/web` (ClusterIP, 80 → 8080) and its ready EndpointSlice;
/// returns the allocated ClusterIP:80.
async fn create_service(client: &kube::Client) -> SocketAddr {
    let pp = PostParams::default();
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": SERVICE, "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": PORT, "targetPort": TARGET_PORT}]}
    }))
    .expect("Service");
    let svc = Api::<Service>::namespaced(client.clone(), "default")
        .create(&pp, &svc)
        .await
        .expect("creating the Service");
    let ip: Ipv4Addr = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .and_then(|ip| ip.parse().ok())
        .expect("an IPv4 ClusterIP");
    let endpoints: Vec<Value> = BACKENDS
        .iter()
        .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
        .collect();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": format!("{SERVICE}-1"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": SERVICE,
                                "endpointslice.kubernetes.io/managed-by": MANAGER}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
    .expect("EndpointSlice");
    Api::<EndpointSlice>::namespaced(client.clone(), "default")
        .create(&pp, &slice)
        .await
        .expect("creating the EndpointSlice");
    SocketAddr::from((ip, PORT))
}

/// One `baton-probe` per node in that node's cgroup and its own netns,
/// connecting to the ClusterIP at a paced rate until stopped; killed on drop.
pub struct Traffic {
    probes: Vec<(String, ProbeProcess)>,
}

static TRAFFIC_RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Traffic {
    fn start(fleet: &Fleet, rate_per_node: f64) -> Self {
        let run = TRAFFIC_RUN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = fleet.dir.join(format!("traffic-{run}"));
        std::fs::create_dir_all(&dir).expect("traffic dir");
        let mut traffic = Traffic { probes: Vec::new() };
        for node in &fleet.kernel.nodes {
            let mut args = ProbeRun::new()
                .cgroup(node.cgroup())
                .local_backends()
                .target(fleet.vip)
                .duration(Duration::from_secs(900))
                .rate(rate_per_node)
                .concurrency(2);
            for b in BACKENDS {
                args = args.backend(SocketAddr::from((
                    b.parse::<Ipv4Addr>().expect("backend address"),
                    TARGET_PORT,
                )));
            }
            let probe =
                ProbeProcess::start(args, &dir, &node.name, Duration::from_secs(10)).unwrap();
            traffic.probes.push((node.name.clone(), probe));
        }
        traffic
    }

    /// Stops every probe and returns its report, by node.
    fn stop(mut self) -> Vec<(String, Report)> {
        // All stop at once, then each is collected.
        for (_, p) in &self.probes {
            p.request_stop().unwrap();
        }
        std::mem::take(&mut self.probes)
            .into_iter()
            .map(|(node, p)| (node, p.report(Duration::from_secs(20)).unwrap()))
            .collect()
    }
}

/// Panics unless every connect of every report succeeded and reached one of
/// the three backends (no failed, no misrouted connect); returns the total.
pub fn assert_clean(reports: &[(String, Report)], when: &str) -> u64 {
    let want = backend_identities();
    let mut total = 0;
    for (node, r) in reports {
        let t = &r.totals;
        let misrouted: Vec<&String> = t.identities.keys().filter(|k| !want.contains(*k)).collect();
        assert!(
            t.attempted > 0
                && t.failed == 0
                && t.ok == t.attempted
                && misrouted.is_empty()
                && t.identities.len() == want.len(),
            "{when}: traffic on {node}: {} attempted, {} ok, {} failed ({:?}, first error {:?}), \
             misrouted to {misrouted:?}, backends seen {:?}",
            t.attempted,
            t.ok,
            t.failed,
            t.errors,
            t.first_error,
            t.identities
        );
        total += t.attempted;
    }
    let max_ms = reports
        .iter()
        .map(|(_, r)| r.totals.latency.max_ns / 1_000_000)
        .max()
        .unwrap_or(0);
    eprintln!(
        "{when}: {total} connects on {} nodes, 0 failed, 0 misrouted (slowest {max_ms} ms)",
        reports.len()
    );
    total
}

/// The `nodeStatuses` entry of `node`.
pub fn node_status(status: &Value, node: &str) -> Value {
    status["nodeStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["node"] == node))
        .cloned()
        .unwrap_or(Value::Null)
}

/// The status condition of `type_`.
pub fn status_condition(status: &Value, type_: &str) -> Value {
    status["conditions"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["type"] == type_))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Counts `[nodes, updated, ready, failed]` of a status.
pub fn counts(status: &Value) -> [Option<i64>; 4] {
    ["nodes", "updated", "ready", "failed"].map(|k| status[k].as_i64())
}

/// One line per node: slot, version and last handover figures.
pub fn print_nodes(when: &str, status: &Value) {
    for n in status["nodeStatuses"].as_array().into_iter().flatten() {
        let h = &n["lastHandover"];
        eprintln!(
            "{when}: {} slot {} {} {}: durationMs {} freezeMs {} mapsReused {} mapsMigrated {} entriesCopied {} ({})",
            n["node"].as_str().unwrap_or("?"),
            n["activeSlot"].as_str().unwrap_or("-"),
            n["version"].as_str().unwrap_or("-"),
            n["phase"].as_str().unwrap_or("-"),
            h["durationMs"],
            h["freezeMs"],
            h["mapsReused"],
            h["mapsMigrated"],
            h["entriesCopied"],
            h["message"].as_str().unwrap_or("")
        );
    }
}
