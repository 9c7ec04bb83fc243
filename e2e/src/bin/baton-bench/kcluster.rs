//! The cluster of the `kube-proxy` section: etcd + kube-apiserver inside the bench's private
//! network namespace, the bench's Services and EndpointSlices, the churn writer, and one
//! any-address backend that answers with the address it was reached on.
//!
//! Addresses (all inside the private namespace): Service VIPs in `10.96.0.0/16` (the API
//! server's service range), endpoints in `10.128.0.0/10` (a `local` route on `lo`, so one
//! listener on `0.0.0.0:8080` accepts every endpoint address: the API server refuses loopback
//! endpoints), the node address `10.200.0.1` on an interface `kp0` (one end of a veth pair
//! whose other end is in the same namespace) that also carries the
//! VIP route kube-proxy needs (its DNAT happens after the route lookup of a local connect).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use baton_e2e::kit::process::checked_output;
use futures::stream::{FuturesUnordered, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use crate::common::Rng;

/// Namespace of the bench's objects.
pub const NS: &str = "bench";
/// Node name kube-proxy and the agent run as.
pub const NODE: &str = "bench-node";
/// The node's address (on `kp0`).
pub const NODE_IP: &str = "10.200.0.1";
/// Service range of the API server: room for 10 000 Services and more.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// Single-endpoint Services whose endpoint the propagation measurement moves.
pub const PROBES: usize = 4;
/// Endpoints of every bulk Service.
pub const EPS: usize = 10;
/// Port of every Service and of every endpoint.
pub const SVC_PORT: u16 = 80;
pub const EP_PORT: u16 = 8080;
/// Endpoint addresses live in 10.128.0.0/10: 4 Mi addresses, never reused within a run.
const EP_BASE: u32 = u32::from_be_bytes([10, 128, 0, 0]);
const EP_SPACE: u32 = 1 << 22;

/// VIP of bulk Service `s-<i>` (from 10.96.1.0 up; 10.96.0.1 is the `kubernetes` Service).
pub fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be_bytes([10, 96, 1, 0]) + i as u32)
}

/// VIP of probe Service `probe-<j>`.
pub fn probe_vip(j: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 250, 1 + j as u8)
}

/// Endpoint address number `k` (wraps within the /10).
pub fn ep_addr(k: u32) -> Ipv4Addr {
    Ipv4Addr::from(EP_BASE + 1 + k % (EP_SPACE - 2))
}

/// Routes and the dummy interface of the section (idempotent within one namespace).
pub fn setup_netns() -> Result<()> {
    let ip = |args: &[&str]| -> Result<()> {
        let mut cmd = Command::new("ip");
        cmd.args(args);
        checked_output(cmd).with_context(|| format!("ip {}", args.join(" ")))?;
        Ok(())
    };
    // A veth pair with both ends here (this kernel has no dummy driver): what leaves kp0
    // arrives on kp1 and is dropped (forwarding is off in a new namespace).
    ip(&["link", "add", "kp0", "type", "veth", "peer", "name", "kp1"])?;
    ip(&["link", "set", "kp1", "up"])?;
    ip(&["link", "set", "kp0", "up"])?;
    ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "kp0"])?;
    ip(&["route", "add", SERVICE_CIDR, "dev", "kp0"])?;
    ip(&["route", "add", "local", "10.128.0.0/10", "dev", "lo"])?;
    Ok(())
}

/// One listener on `0.0.0.0:8080` answering every connection with the local address it was
/// reached on (`"10.128.0.17\n"`), so a connect tells which endpoint the proxy chose.
pub struct AnyBackend {
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl AnyBackend {
    pub fn start(threads: usize) -> Result<Self> {
        let listener = TcpListener::bind(("0.0.0.0", EP_PORT)).context("binding 0.0.0.0:8080")?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for n in 0..threads {
            let l = listener.try_clone()?;
            let stop = Arc::clone(&stop);
            handles.push(
                std::thread::Builder::new()
                    .name(format!("any-backend-{n}"))
                    .spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            let Ok((mut s, _)) = l.accept() else { continue };
                            if let Ok(local) = s.local_addr() {
                                let _ = s.write_all(format!("{}\n", local.ip()).as_bytes());
                            }
                        }
                    })?,
            );
        }
        Ok(Self {
            listener,
            stop,
            threads: handles,
        })
    }
}

impl Drop for AnyBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // shutdown(2) on a listening socket wakes every blocked accept() (EINVAL).
        // SAFETY: the fd is open for the lifetime of `self.listener`.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One connect to `target` and the address that answered; `None` on any failure (no rule
/// yet, refused, timeout).
pub fn answer(target: SocketAddr, timeout: Duration) -> Option<Ipv4Addr> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
    sock.set_linger(Some(Duration::ZERO)).ok()?;
    sock.set_read_timeout(Some(timeout)).ok()?;
    sock.connect_timeout(&target.into(), timeout).ok()?;
    let mut stream: std::net::TcpStream = sock.into();
    let mut buf = [0u8; 32];
    let mut got = 0;
    while got < buf.len() {
        let n = stream.read(&mut buf[got..]).ok()?;
        if n == 0 {
            break;
        }
        got += n;
        if buf[..got].contains(&b'\n') {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    std::str::from_utf8(&buf[..got]).ok()?.trim().parse().ok()
}

pub fn sock(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

fn service_json(name: &str, vip: Ipv4Addr) -> Value {
    json!({
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "clusterIP": vip.to_string(),
            "ports": [{"name": "http", "port": SVC_PORT, "targetPort": EP_PORT, "protocol": "TCP"}],
        }
    })
}

fn endpoints_json(eps: &[u32]) -> Value {
    Value::Array(
        eps.iter()
            .map(|&k| {
                json!({
                    "addresses": [ep_addr(k).to_string()],
                    "conditions": {"ready": true},
                    "nodeName": NODE,
                })
            })
            .collect(),
    )
}

fn slice_json(svc: &str, eps: &[u32]) -> Value {
    json!({
        "metadata": {
            "name": format!("{svc}-x"),
            "namespace": NS,
            "labels": {
                "kubernetes.io/service-name": svc,
                "endpointslice.kubernetes.io/managed-by": "baton-bench",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": EP_PORT, "protocol": "TCP"}],
        "endpoints": endpoints_json(eps),
    })
}

/// The bench's objects in the API server and the endpoint numbers it handed out.
pub struct Objects {
    pub client: kube::Client,
    /// Bulk Services created so far (`s-0` ..).
    pub services: usize,
    /// Current endpoints of every bulk Service (the churn carries them from run to run).
    pub bulk: Vec<Vec<u32>>,
    /// Current endpoint of each probe Service.
    pub probe_eps: Vec<u32>,
    /// Next never-used endpoint number.
    pub next_ep: u32,
}

/// Endpoints of bulk Service `i` as created.
pub fn bulk_eps(i: usize) -> Vec<u32> {
    (0..EPS).map(|j| (PROBES + i * EPS + j) as u32).collect()
}

/// First endpoint number the churn and the probes may hand out for a cluster of `max` services.
pub fn first_free_ep(max: usize) -> u32 {
    (PROBES + max * EPS) as u32
}

impl Objects {
    /// Namespace, Node and the probe Services with one endpoint each.
    pub async fn create(client: kube::Client, max: usize) -> Result<Self> {
        let pp = PostParams::default();
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&pp, &ns)
            .await
            .context("creating the namespace")?;
        // kube-proxy reads its node's addresses from the Node object.
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": NODE},
            "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]},
        }))?;
        let nodes = Api::<Node>::all(client.clone());
        nodes
            .create(&pp, &node)
            .await
            .context("creating the node")?;
        nodes
            .patch_status(
                NODE,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]}}),
                ),
            )
            .await
            .context("setting the node's address")?;
        let objects = Objects {
            client,
            services: 0,
            bulk: Vec::new(),
            probe_eps: (0..PROBES as u32).collect(),
            next_ep: first_free_ep(max),
        };
        let svcs: Api<Service> = Api::namespaced(objects.client.clone(), NS);
        let slices: Api<EndpointSlice> = Api::namespaced(objects.client.clone(), NS);
        for j in 0..PROBES {
            let name = format!("probe-{j}");
            svcs.create(
                &pp,
                &serde_json::from_value(service_json(&name, probe_vip(j)))?,
            )
            .await
            .with_context(|| format!("creating {name}"))?;
            slices
                .create(
                    &pp,
                    &serde_json::from_value(slice_json(&name, &[objects.probe_eps[j]]))?,
                )
                .await
                .with_context(|| format!("creating the slice of {name}"))?;
        }
        Ok(objects)
    }

    /// Creates bulk Services (each with one slice of `EPS` endpoints) up to `n` in total.
    pub async fn grow(&mut self, n: usize) -> Result<()> {
        let svcs: Api<Service> = Api::namespaced(self.client.clone(), NS);
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), NS);
        let pp = PostParams::default();
        let mut pending = FuturesUnordered::new();
        let mut next = self.services;
        // 32 writes in flight: enough to keep the API server busy on 2 cores.
        while next < n || !pending.is_empty() {
            while next < n && pending.len() < 32 {
                let i = next;
                next += 1;
                let (svcs, slices, pp) = (svcs.clone(), slices.clone(), pp.clone());
                pending.push(async move {
                    let name = format!("s-{i}");
                    let svc: Service = serde_json::from_value(service_json(&name, vip(i)))?;
                    svcs.create(&pp, &svc)
                        .await
                        .with_context(|| format!("creating {name}"))?;
                    let slice: EndpointSlice =
                        serde_json::from_value(slice_json(&name, &bulk_eps(i)))?;
                    slices
                        .create(&pp, &slice)
                        .await
                        .with_context(|| format!("creating the slice of {name}"))?;
                    anyhow::Ok(())
                });
            }
            if let Some(r) = pending.next().await {
                r?;
            }
        }
        self.bulk.extend((self.services..n).map(bulk_eps));
        self.services = n;
        Ok(())
    }

    /// Moves probe `j` to a never-used endpoint; returns it and when the API server acknowledged.
    pub async fn move_probe(&mut self, j: usize) -> Result<(Ipv4Addr, Instant)> {
        let k = self.next_ep;
        self.next_ep += 1;
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), NS);
        slices
            .patch(
                &format!("probe-{j}-x"),
                &PatchParams::default(),
                &Patch::Merge(json!({"endpoints": endpoints_json(&[k])})),
            )
            .await
            .with_context(|| format!("moving probe-{j}"))?;
        let acked = Instant::now();
        self.probe_eps[j] = k;
        Ok((ep_addr(k), acked))
    }
}

/// A steady stream of endpoint changes: every change replaces one endpoint of a random bulk
/// Service with a never-used address (one EndpointSlice merge patch), paced at `rate`/s from
/// its own thread and tokio runtime, at most 64 writes in flight.
pub struct Churn {
    stop: Arc<AtomicBool>,
    pub done: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    pub behind: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<ChurnEnd>>>,
}

/// What a churn hands back: every bulk Service's endpoints and the next unused endpoint number.
type ChurnEnd = (Vec<Vec<u32>>, u32);

impl Churn {
    /// Starts churning the bulk Services of `objects` (whose view it takes over until
    /// [`Churn::stop`] gives it back).
    pub fn start(config: kube::Config, objects: &mut Objects, rate: u32) -> Result<Self> {
        let view = std::mem::take(&mut objects.bulk);
        // The probes' addresses come from the same counter: leave the churn a range of its own.
        let first_ep = objects.next_ep + 1_000;
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let behind = Arc::new(AtomicU64::new(0));
        let (s, d, f, b) = (
            Arc::clone(&stop),
            Arc::clone(&done),
            Arc::clone(&failed),
            Arc::clone(&behind),
        );
        let thread = std::thread::Builder::new()
            .name("kube-churn".into())
            .spawn(move || -> Result<ChurnEnd> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(churn(config, view, rate, first_ep, s, d, f, b))
            })?;
        Ok(Self {
            stop,
            done,
            failed,
            behind,
            thread: Some(thread),
        })
    }

    /// Stops, waits for the writes in flight and gives the view back to `objects`.
    pub fn stop(mut self, objects: &mut Objects) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => {
                let (view, next_ep) = r?;
                objects.bulk = view;
                objects.next_ep = next_ep;
                Ok(())
            }
            Some(Err(_)) => bail!("the churn thread panicked"),
            None => bail!("the churn was already stopped"),
        }
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn churn(
    config: kube::Config,
    mut eps: Vec<Vec<u32>>,
    rate: u32,
    mut next_ep: u32,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    behind: Arc<AtomicU64>,
) -> Result<ChurnEnd> {
    let client = kube::Client::try_from(config)?;
    let slices: Api<EndpointSlice> = Api::namespaced(client, NS);
    // Only the churn writes bulk slices, so its view is what the API server holds.
    let services = eps.len();
    let mut rng = Rng(0xD1B5_4A32_D192_ED03 ^ u64::from(rate));
    let start = Instant::now();
    let mut issued: u64 = 0;
    let mut pending = FuturesUnordered::new();
    let tick = Duration::from_millis(5);
    while !stop.load(Ordering::Relaxed) {
        let due = (start.elapsed().as_secs_f64() * f64::from(rate)) as u64;
        while issued < due {
            if pending.len() >= 64 {
                // Writes are slower than the rate: skip (and count) rather than queue up.
                behind.fetch_add(due - issued, Ordering::Relaxed);
                issued = due;
                break;
            }
            issued += 1;
            let i = rng.below(services);
            let j = rng.below(EPS);
            eps[i][j] = next_ep;
            next_ep += 1;
            let body = json!({"endpoints": endpoints_json(&eps[i])});
            let slices = slices.clone();
            pending.push(async move {
                slices
                    .patch(
                        &format!("s-{i}-x"),
                        &PatchParams::default(),
                        &Patch::Merge(body),
                    )
                    .await
            });
        }
        let sleep = tokio::time::sleep(tick);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                Some(r) = pending.next() => {
                    match r {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }
        }
    }
    while let Some(r) = pending.next().await {
        match r {
            Ok(_) => done.fetch_add(1, Ordering::Relaxed),
            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
        };
    }
    Ok((eps, next_ep))
}
