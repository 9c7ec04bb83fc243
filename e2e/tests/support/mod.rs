//! Shared by the handover tests: real `baton-agent` processes of both map
//! layouts in one sandbox (child cgroup, private bpffs, the probe in its own
//! netns), a services fixture whose backend pools are disjoint per service
//! (so a misrouted connect names a backend outside its pool), continuous
//! traffic through `baton-probe`, and the checks run after every handover.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use baton_agent::admin::{client, Request};
use baton_e2e::harness::{agent_bin_for_layout, parse_report, wait_for_file, ProbeRun};
use baton_e2e::kernel::TestEnv;
use baton_e2e::report::Report;
use serde_json::Value;

pub const PROBE: &str = env!("CARGO_BIN_EXE_baton-probe");

/// The `baton-agent` binary of map layout 1 or 2 (the other one is built
/// into `<target>/layout-vN` on first use).
pub fn agent_bin(layout: u32) -> PathBuf {
    static BINS: OnceLock<Mutex<BTreeMap<u32, PathBuf>>> = OnceLock::new();
    let bins = BINS.get_or_init(Default::default);
    let mut g = bins.lock().unwrap_or_else(|p| p.into_inner());
    g.entry(layout)
        .or_insert_with(|| {
            agent_bin_for_layout(layout)
                .unwrap_or_else(|e| panic!("baton-agent for layout {layout}: {e}"))
        })
        .clone()
}

/// The other layout.
pub fn other(layout: u32) -> u32 {
    if layout == 1 {
        2
    } else {
        1
    }
}

// ---------------------------------------------------------------------------
// Services fixture

/// One endpoint of a fixture service.
#[derive(Clone, Debug)]
pub struct Ep {
    pub addr: IpAddr,
    /// 0 = the service's target port.
    pub port: u16,
    pub priority: u8,
}

/// One fixture service.
#[derive(Clone, Debug)]
pub struct Svc {
    pub name: String,
    pub vip: IpAddr,
    /// (service port, target port).
    pub ports: Vec<(u16, u16)>,
    pub policy: &'static str,
    pub endpoints: Vec<Ep>,
    /// Every endpoint this service may ever have (its pool); equals
    /// `endpoints` except for the churned service.
    pub pool: Vec<Ep>,
    /// The probe connects to it (bulk services only fill the maps).
    pub probed: bool,
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip literal")
}

fn ep(addr: &str, port: u16, priority: u8) -> Ep {
    Ep {
        addr: ip(addr),
        port,
        priority,
    }
}

impl Svc {
    /// Backend addresses an endpoint answers on, for one service port.
    fn backend(&self, e: &Ep, target_port: u16) -> SocketAddr {
        SocketAddr::new(e.addr, if e.port == 0 { target_port } else { e.port })
    }

    /// Backends a connect to `VIP:port` may reach: the whole pool for
    /// `random`, the lowest priority present for `failover`.
    fn allowed(&self, target_port: u16) -> BTreeSet<String> {
        let eps: Vec<&Ep> = match self.policy {
            "random" => self.pool.iter().collect(),
            _ => {
                let lowest = self.pool.iter().map(|e| e.priority).min().unwrap_or(0);
                self.pool.iter().filter(|e| e.priority == lowest).collect()
            }
        };
        eps.into_iter()
            .map(|e| self.backend(e, target_port).to_string())
            .collect()
    }

    fn targets(&self) -> Vec<(SocketAddr, u16)> {
        self.ports
            .iter()
            .map(|&(p, t)| (SocketAddr::new(self.vip, p), t))
            .collect()
    }
}

/// The services every handover test programs: 6 services, 7 VIP:ports,
/// 24 backend listeners, disjoint pools, IPv4 and IPv6, per-endpoint ports
/// (the `backend` value's port changes width between the layouts), a
/// failover service (a connect reaching priority 1 is a misroute) and one
/// service whose endpoints change with `round`.
#[derive(Clone, Debug)]
pub struct Fixture {
    pub services: Vec<Svc>,
}

const CHURN_POOL: [&str; 6] = [
    "127.0.5.10",
    "127.0.5.11",
    "127.0.5.12",
    "127.0.5.13",
    "127.0.5.14",
    "127.0.5.15",
];

impl Fixture {
    /// The fixture at churn round `round` (round 0 = the initial file).
    pub fn at(round: u64) -> Self {
        Self::with_bulk(round, 0)
    }

    /// The fixture plus `bulk` services of 4 endpoints each that nobody
    /// connects to: they make the migrated maps big enough for the copy to
    /// count (10.97.0.0/16 VIPs, 10.200.0.0/16 backends).
    pub fn with_bulk(round: u64, bulk: usize) -> Self {
        let pool = |addrs: &[&str]| addrs.iter().map(|a| ep(a, 0, 0)).collect::<Vec<_>>();
        let churn_pool = pool(&CHURN_POOL);
        // A changing, never empty subset: 3 consecutive endpoints of 6.
        let churn: Vec<Ep> = (0..3)
            .map(|i| churn_pool[((round as usize) + i) % churn_pool.len()].clone())
            .collect();
        let svc = |name: &str, vip: &str, ports: Vec<(u16, u16)>, policy, eps: Vec<Ep>| Svc {
            name: name.to_string(),
            vip: ip(vip),
            ports,
            policy,
            pool: eps.clone(),
            endpoints: eps,
            probed: true,
        };
        let mut services = vec![
            svc(
                "web",
                "10.96.0.10",
                vec![(80, 8080)],
                "random",
                pool(&["127.0.1.10", "127.0.1.11", "127.0.1.12", "127.0.1.13"]),
            ),
            svc(
                "api",
                "10.96.0.11",
                vec![(443, 8443), (80, 8080)],
                "random",
                pool(&["127.0.2.10", "127.0.2.11", "127.0.2.12"]),
            ),
            svc(
                "ports",
                "10.96.0.12",
                vec![(80, 8080)],
                "random",
                vec![
                    ep("127.0.3.10", 9001, 0),
                    ep("127.0.3.10", 9002, 0),
                    ep("127.0.3.11", 0, 0),
                ],
            ),
            svc(
                "v6",
                "fd00::10",
                vec![(80, 8080)],
                "random",
                vec![ep("::1", 9101, 0), ep("::1", 9102, 0)],
            ),
            svc(
                "fo",
                "10.96.0.13",
                vec![(80, 8080)],
                "failover",
                vec![
                    ep("127.0.4.10", 0, 0),
                    ep("127.0.4.11", 0, 0),
                    ep("127.0.4.20", 0, 1),
                ],
            ),
            svc("churn", "10.96.0.14", vec![(80, 8080)], "random", churn),
        ];
        if let Some(c) = services.iter_mut().find(|s| s.name == "churn") {
            c.pool = churn_pool;
        }
        for i in 0..bulk {
            let addr = |k: usize| format!("10.200.{}.{}", k / 250, k % 250 + 1);
            let eps: Vec<Ep> = (0..4).map(|j| ep(&addr(i * 4 + j), 0, 0)).collect();
            services.push(Svc {
                name: format!("bulk-{i}"),
                vip: ip(&format!("10.97.{}.{}", i / 250, i % 250 + 1)),
                ports: vec![(80, 8080)],
                policy: "random",
                pool: eps.clone(),
                endpoints: eps,
                probed: false,
            });
        }
        Self { services }
    }

    /// The services file.
    pub fn yaml(&self) -> String {
        let mut y = String::from("services:\n");
        for s in &self.services {
            y.push_str(&format!(
                "  - name: {}\n    vips: [\"{}\"]\n    policy: {}\n    ports:\n",
                s.name, s.vip, s.policy
            ));
            for (p, t) in &s.ports {
                y.push_str(&format!("      - {{port: {p}, targetPort: {t}}}\n"));
            }
            y.push_str("    endpoints:\n");
            for e in &s.endpoints {
                y.push_str(&format!(
                    "      - {{address: \"{}\", port: {}, priority: {}}}\n",
                    e.addr, e.port, e.priority
                ));
            }
        }
        y
    }

    /// Every VIP:port the probe connects to.
    pub fn targets(&self) -> Vec<SocketAddr> {
        self.services
            .iter()
            .filter(|s| s.probed)
            .flat_map(|s| s.targets().into_iter().map(|(t, _)| t))
            .collect()
    }

    /// Every backend listener (all pools, all target ports).
    pub fn backends(&self) -> Vec<SocketAddr> {
        let mut all = BTreeSet::new();
        for s in self.services.iter().filter(|s| s.probed) {
            for (_, t) in s.targets() {
                for e in &s.pool {
                    all.insert(s.backend(e, t));
                }
            }
        }
        all.into_iter().collect()
    }

    /// Total endpoint slots (`status.endpoints`).
    pub fn endpoint_count(&self) -> u64 {
        self.services.iter().map(|s| s.endpoints.len() as u64).sum()
    }

    /// Differences between an agent's `dump` and this fixture (empty = every
    /// service, VIP, port and endpoint present, in the right priority bucket).
    pub fn dump_diff(&self, dump: &Value) -> Vec<String> {
        let mut problems = Vec::new();
        let got: BTreeMap<&str, &Value> = dump["services"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| Some((s["name"].as_str()?, s)))
                    .collect()
            })
            .unwrap_or_default();
        if got.len() != self.services.len() {
            problems.push(format!(
                "{} services in the dump, {} expected: {:?}",
                got.len(),
                self.services.len(),
                got.keys().collect::<Vec<_>>()
            ));
        }
        for s in &self.services {
            let Some(d) = got.get(s.name.as_str()) else {
                problems.push(format!("service {} missing", s.name));
                continue;
            };
            if d["vips"] != serde_json::json!([s.vip.to_string()]) {
                problems.push(format!("{}: vips {}", s.name, d["vips"]));
            }
            // `dump` prints the policy as `some(random)` (the Debug of an
            // Option, reported); accept it with or without the wrapper.
            let policy = d["policy"].as_str().unwrap_or_default();
            let policy = policy
                .strip_prefix("some(")
                .and_then(|p| p.strip_suffix(')'))
                .unwrap_or(policy);
            if policy != s.policy {
                problems.push(format!("{}: policy {}", s.name, d["policy"]));
            }
            let ports: BTreeSet<(u64, u64)> = d["ports"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|p| {
                            (
                                p["port"].as_u64().unwrap_or(0),
                                p["target_port"].as_u64().unwrap_or(0),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let want_ports: BTreeSet<(u64, u64)> = s
                .ports
                .iter()
                .map(|&(p, t)| (u64::from(p), u64::from(t)))
                .collect();
            if ports != want_ports {
                problems.push(format!("{}: ports {ports:?}", s.name));
            }
            let mut buckets: BTreeMap<usize, Vec<String>> = BTreeMap::new();
            if let Some(bs) = d["buckets"].as_array() {
                for (prio, b) in bs.iter().enumerate() {
                    let mut v: Vec<String> = b
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default();
                    v.sort();
                    if !v.is_empty() {
                        buckets.insert(prio, v);
                    }
                }
            }
            let mut want: BTreeMap<usize, Vec<String>> = BTreeMap::new();
            for e in &s.endpoints {
                let shown = if e.port == 0 {
                    e.addr.to_string()
                } else {
                    SocketAddr::new(e.addr, e.port).to_string()
                };
                want.entry(usize::from(e.priority)).or_default().push(shown);
            }
            for v in want.values_mut() {
                v.sort();
            }
            if buckets != want {
                problems.push(format!(
                    "{}: buckets {buckets:?}, expected {want:?}",
                    s.name
                ));
            }
        }
        problems
    }

    /// Failed and misrouted connects in a probe report, and dead held
    /// connections (empty = clean). `pools` are those of every round.
    pub fn traffic_problems(&self, r: &Report) -> Vec<String> {
        let mut problems = Vec::new();
        if r.totals.failed != 0 {
            problems.push(format!(
                "{} failed connects of {}: {:?}, first: {:?}",
                r.totals.failed, r.totals.attempted, r.totals.errors, r.totals.first_error
            ));
        }
        for s in self.services.iter().filter(|s| s.probed) {
            for (t, tp) in s.targets() {
                let Some(tr) = r.target(&t.to_string()) else {
                    problems.push(format!("target {t} not in the report"));
                    continue;
                };
                if tr.ok == 0 {
                    problems.push(format!("target {t}: no successful connect"));
                }
                let allowed = s.allowed(tp);
                let wrong: Vec<_> = tr
                    .identities
                    .iter()
                    .filter(|(id, _)| !allowed.contains(*id))
                    .collect();
                if !wrong.is_empty() {
                    problems.push(format!("target {t}: misrouted to {wrong:?}"));
                }
            }
        }
        if let Some(h) = &r.hold {
            if h.held != h.requested || h.alive != h.held {
                problems.push(format!(
                    "held connections: requested {}, opened {}, alive at the end {}; dead: {:?}",
                    h.requested, h.held, h.alive, h.dead
                ));
            }
        }
        problems
    }
}

// ---------------------------------------------------------------------------
// Agent processes

/// A `baton-agent run` child, reaped by a thread as soon as it exits (so the
/// other agent's liveness check never sees a zombie); SIGKILLed on drop.
pub struct AgentProc {
    pub pid: i32,
    pub layout: u32,
    pub name: String,
    pub log: PathBuf,
    pub started: Instant,
    exit: Arc<Mutex<Option<(ExitStatus, Instant)>>>,
    reaper: Option<std::thread::JoinHandle<()>>,
}

impl AgentProc {
    fn spawn(name: String, layout: u32, mut cmd: Command, log: PathBuf) -> Self {
        let log_file = std::fs::File::create(&log).expect("agent log file");
        cmd.stdout(Stdio::null()).stderr(Stdio::from(log_file));
        let started = Instant::now();
        let mut child: Child = cmd.spawn().expect("spawn baton-agent");
        let pid = child.id() as i32;
        let exit = Arc::new(Mutex::new(None));
        let slot = exit.clone();
        let reaper = std::thread::spawn(move || {
            if let Ok(st) = child.wait() {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some((st, Instant::now()));
            }
        });
        Self {
            pid,
            layout,
            name,
            log,
            started,
            exit,
            reaper: Some(reaper),
        }
    }

    /// Exit status, once it exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.exit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|(s, _)| s)
    }

    /// When it exited.
    pub fn exited_at(&self) -> Option<Instant> {
        self.exit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|(_, t)| t)
    }

    pub fn alive(&self) -> bool {
        self.exited().is_none()
    }

    /// Waits up to `timeout` for the exit.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the exit and insists on it.
    pub fn expect_exit(&self, timeout: Duration, why: &str) -> ExitStatus {
        self.wait_exit(timeout).unwrap_or_else(|| {
            panic!(
                "{} (pid {}) did not exit within {timeout:?} ({why}); log:\n{}",
                self.name,
                self.pid,
                self.log_text()
            )
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if self.alive() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), sig);
        }
    }

    /// SIGKILL and wait for the reaper.
    pub fn kill(&self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        self.expect_exit(Duration::from_secs(10), "SIGKILL");
    }

    /// SIGTERM and expect a clean exit.
    pub fn stop(&self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let st = self.expect_exit(Duration::from_secs(20), "SIGTERM");
        assert!(st.success(), "{} exit {st}: {}", self.name, self.log_text());
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if self.alive() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Some(r) = self.reaper.take() {
            let _ = r.join();
        }
    }
}

/// Killed by SIGKILL (a crash hook fired, or the test killed it).
pub fn killed(st: ExitStatus) -> bool {
    st.signal() == Some(nix::sys::signal::Signal::SIGKILL as i32)
}

// ---------------------------------------------------------------------------
// The sandbox with a services file, a run directory and the agents' CLI

/// One test's world: cgroup + bpffs (TestEnv), services file, run directory.
pub struct Ctx {
    pub env: TestEnv,
    pub services: PathBuf,
    pub run_dir: PathBuf,
    pub metrics: Option<String>,
    /// `--poll-ms` of every agent.
    pub poll_ms: u64,
    seq: std::sync::atomic::AtomicU32,
}

/// Extra settings of one agent start.
#[derive(Clone, Debug, Default)]
pub struct Opts {
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
}

impl Opts {
    pub fn crash_at(step: &str) -> Self {
        Self::default().with_env("BATON_TEST_CRASH_AT", step)
    }

    pub fn with_env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn with_args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }
}

impl Ctx {
    pub fn new(name: &str, fixture: &Fixture) -> Self {
        let env = TestEnv::new(name);
        let services = env.path("services.yaml");
        std::fs::write(&services, fixture.yaml()).expect("write services file");
        let run_dir = env.path("run");
        Self {
            env,
            services,
            run_dir,
            metrics: None,
            poll_ms: 50,
            seq: Default::default(),
        }
    }

    /// Rewrites the services file (via rename, so an agent never reads half).
    pub fn write_services(&self, fixture: &Fixture) {
        let tmp = self.env.path("services.yaml.tmp");
        std::fs::write(&tmp, fixture.yaml()).expect("write services file");
        std::fs::rename(&tmp, &self.services).expect("rename services file");
    }

    /// Starts `baton-agent run` of `layout` (does not wait for anything).
    pub fn spawn(&self, layout: u32, opts: &Opts) -> AgentProc {
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("agent#{n} (layout {layout})");
        let mut cmd = Command::new(agent_bin(layout));
        cmd.args(["run", "--services"])
            .arg(&self.services)
            .arg("--cgroup")
            .arg(&self.env.cgroup)
            .arg("--bpffs")
            .arg(&self.env.pin_dir)
            .arg("--run-dir")
            .arg(&self.run_dir)
            .args(["--poll-ms", &self.poll_ms.to_string()]);
        match &self.metrics {
            Some(m) => cmd.args(["--metrics-addr", m]),
            None => cmd.arg("--no-metrics"),
        };
        cmd.args(&opts.args);
        cmd.env_remove("BATON_TEST_CRASH_AT")
            .env_remove("BATON_TEST_REJECT_PROGRAMS");
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        AgentProc::spawn(name, layout, cmd, self.env.path(&format!("agent-{n}.log")))
    }

    /// Starts an agent and waits until it serves status with a first sync.
    pub fn start(&self, layout: u32, opts: &Opts) -> AgentProc {
        let a = self.spawn(layout, opts);
        self.wait_serving(&a, Duration::from_secs(30));
        a
    }

    pub fn admin(&self, req: Request) -> Option<Value> {
        client::request(&self.run_dir.join("admin.sock"), req).ok()
    }

    pub fn status(&self) -> Option<Value> {
        self.admin(Request::Status)
    }

    /// Waits until `agent` answers status (its own pid) after its first sync.
    pub fn wait_serving(&self, agent: &AgentProc, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status() {
                if s["pid"] == agent.pid && s["last_sync"].is_object() {
                    return s;
                }
            }
            if let Some(st) = agent.exited() {
                panic!(
                    "{} exited ({st}) before serving; log:\n{}",
                    agent.name,
                    agent.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} (pid {}) not serving within {timeout:?}; status: {:?}; log:\n{}",
                agent.name,
                agent.pid,
                self.status(),
                agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until status satisfies `ok`.
    pub fn wait_status(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.status() {
                if ok(&s) {
                    return s;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; status: {:?}",
                self.status()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `verify` through the running agent: no violation.
    pub fn assert_verify_clean(&self, when: &str) {
        let v = self
            .admin(Request::Verify)
            .unwrap_or_else(|| panic!("{when}: verify: no agent answers"));
        assert_eq!(
            v["violations"],
            serde_json::json!([]),
            "{when}: verify found violations: {v}"
        );
    }

    /// The `baton-agent verify` command (admin socket when an agent runs,
    /// else the pins with the binary of `layout`).
    pub fn verify_cli(&self, layout: u32) -> std::process::Output {
        Command::new(agent_bin(layout))
            .args(["verify", "--run-dir"])
            .arg(&self.run_dir)
            .arg("--bpffs")
            .arg(&self.env.pin_dir)
            .output()
            .expect("baton-agent verify")
    }

    /// Waits until the running agent's dump matches `fixture`.
    pub fn assert_dump(&self, fixture: &Fixture, when: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let diff = match self.admin(Request::Dump) {
                Some(d) => fixture.dump_diff(&d),
                None => vec!["no agent answers dump".into()],
            };
            if diff.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{when}: dump does not match the services: {diff:#?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `staging-*` directories left in the bpffs.
    pub fn staging_dirs(&self) -> Vec<String> {
        std::fs::read_dir(&self.env.pin_dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.starts_with("staging-"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Scrapes /metrics.
    pub fn scrape(&self) -> String {
        let addr = self.metrics.as_deref().expect("metrics address");
        let mut s = std::net::TcpStream::connect(addr).expect("metrics connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("metrics request");
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body
    }
}

// ---------------------------------------------------------------------------
// Traffic

/// A `baton-probe run` in the test cgroup and its own netns, running until
/// [`Traffic::stop`] (bounded by `limit` in any case); killed on drop.
pub struct Traffic {
    child: Option<Child>,
    stop: PathBuf,
    stderr: PathBuf,
}

impl Traffic {
    /// Starts backends for every pool, opens `hold` long-lived connections,
    /// then connects to every VIP:port at `rate` per second.
    pub fn start(ctx: &Ctx, fixture: &Fixture, rate: f64, hold: u64, limit: Duration) -> Self {
        let ready = ctx.env.path("probe-ready");
        let stop = ctx.env.path("probe-stop");
        let stderr = ctx.env.path("probe.log");
        let _ = std::fs::remove_file(&ready);
        let _ = std::fs::remove_file(&stop);
        let mut run = ProbeRun::new()
            .cgroup(&ctx.env.cgroup)
            .duration(limit)
            .rate(rate)
            .concurrency(8)
            .hold(hold)
            .ready_file(&ready)
            .stop_file(&stop);
        for b in fixture.backends() {
            run = run.backend(b);
        }
        for t in fixture.targets() {
            run = run.target(t);
        }
        let child = run
            .command(PROBE)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(&stderr).expect("probe log"),
            ))
            .spawn()
            .expect("spawn baton-probe");
        let t = Self {
            child: Some(child),
            stop,
            stderr,
        };
        assert!(
            wait_for_file(&ready, Duration::from_secs(20)),
            "probe not ready: {}",
            std::fs::read_to_string(&t.stderr).unwrap_or_default()
        );
        t
    }

    /// Stops the load and returns the report.
    pub fn stop(mut self) -> Report {
        std::fs::write(&self.stop, b"").expect("probe stop file");
        let child = self.child.take().expect("probe child");
        let out = child.wait_with_output().expect("probe output");
        assert!(
            out.status.success(),
            "probe failed ({}): {}",
            out.status,
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        );
        parse_report(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "probe report ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Figures of one handover as the new agent reports them.
#[derive(Clone, Debug, Default)]
pub struct HandoverFigures {
    pub from: u32,
    pub to: u32,
    pub handover_us: u64,
    pub freeze_us: u64,
    pub precopy_us: u64,
    pub journal_keys: u64,
    pub reused: u64,
    pub migrated: u64,
    pub entries_copied: u64,
    pub self_committed: bool,
    /// Spawn of the new agent → exit of the old one, as the test saw it.
    pub wall_ms: u64,
    /// Edits ran during this handover (with a pause to journal them).
    pub journaled: bool,
}

impl HandoverFigures {
    pub fn from_status(st: &Value) -> Option<Self> {
        let h = st.get("handover")?;
        if h.is_null() {
            return None;
        }
        let u = |v: &Value| v.as_u64().unwrap_or(0);
        Some(Self {
            from: u(&h["from_layout"]) as u32,
            to: u(&st["layout_version"]) as u32,
            handover_us: u(&h["handover_us"]),
            freeze_us: u(&h["freeze_us"]),
            precopy_us: u(&h["precopy_us"]),
            journal_keys: u(&h["journal_keys"]),
            reused: u(&h["maps"]["reused"]),
            migrated: u(&h["maps"]["migrated"]),
            entries_copied: u(&h["maps"]["entries_copied"]),
            self_committed: h["self_committed"].as_bool().unwrap_or(false),
            wall_ms: 0,
            journaled: false,
        })
    }
}

/// Polls `cond` until true or `timeout`.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
