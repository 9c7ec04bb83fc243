//! `baton-bench`: connect latency (direct / BPF VIP / iptables DNAT), map programming speed,
//! agent memory and agent hot upgrades (handover), measured in a private cgroup + network
//! namespace of this process.
//!
//! Safety: the bench creates its own child cgroup (`baton-bench-<pid>`) and its own bpffs mount in a
//! temporary directory, and removes both on exit (Drop guards). All traffic, routes and iptables rules
//! live in the private network namespace created by [`baton_e2e::sandbox::enter`]; only loopback
//! backends are used. Run as root: `baton-bench [--quick] [--rounds N]`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use baton_agent::datapath::{Datapath, DatapathConfig};
use baton_agent::model::{DesiredState, EndpointSpec, PortSpec, ServiceSpec};
use baton_agent::programmer::Programmer;
use baton_e2e::backend::Backends;
use baton_e2e::upgrade::{AgentCmd, AgentProc, Expected, Traffic, TrafficConfig};
use baton_ebpf::LbPolicy;
use socket2::{Domain, Socket, Type};

/// Backends every latency service balances over.
const BACKENDS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 0, 0, 10),
    Ipv4Addr::new(127, 0, 0, 11),
    Ipv4Addr::new(127, 0, 0, 12),
];
const BACKEND_PORT: u16 = 8080;
const VIP_PORT: u16 = 80;
const SIZES: [usize; 3] = [10, 1_000, 10_000];
const BIG: usize = 10_000;
const EPS_PER_SVC: usize = 10;
/// Sections `--only` accepts.
const SECTIONS: [&str; 4] = ["latency", "programming", "rss", "handover"];

struct Opts {
    quick: bool,
    rounds: usize,
    /// CPU to pin the whole bench (client, backends, agent) to; `None` = no pinning.
    cpu: Option<usize>,
    /// Sections to run (latency, programming, rss, handover); empty = all.
    only: Vec<String>,
}

impl Opts {
    fn runs(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

fn parse_args() -> Result<Opts> {
    let mut quick = false;
    let mut rounds = None;
    let mut cpu = Some(0);
    let mut only = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--rounds" => {
                let v = args.next().context("--rounds needs a value")?;
                rounds = Some(v.parse().with_context(|| format!("--rounds {v}"))?);
            }
            "--cpu" => {
                let v = args.next().context("--cpu needs a value")?;
                cpu = Some(v.parse().with_context(|| format!("--cpu {v}"))?);
            }
            "--no-pin" => cpu = None,
            "--only" => {
                let v = args
                    .next()
                    .context("--only needs latency, programming, rss or handover")?;
                if !SECTIONS.contains(&v.as_str()) {
                    bail!("--only {v}: expected one of {}", SECTIONS.join(", "));
                }
                only.push(v);
            }
            "-h" | "--help" => {
                println!("usage: baton-bench [--quick] [--rounds N] [--cpu N | --no-pin] [--only latency|programming|rss|handover]...   (run as root)");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    let rounds = rounds.unwrap_or(if quick { 300 } else { 20_000 });
    Ok(Opts {
        quick,
        rounds,
        cpu,
        only,
    })
}

// ---------------------------------------------------------------------------------------------
// Guards

/// Our own child cgroup; on drop moves this process back to its original cgroup and removes it.
struct CgroupGuard {
    dir: PathBuf,
    home: PathBuf,
}

impl CgroupGuard {
    fn create() -> Result<Self> {
        let mount = baton_agent::sys::find_cgroup2_mount().context("no cgroup v2 mount found")?;
        let own = baton_e2e::sandbox::current_cgroup().context("reading /proc/self/cgroup")?;
        let home = mount.join(own.trim_start_matches('/'));
        let dir = mount.join(format!("baton-bench-{}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        Ok(Self { dir, home })
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        let _ = std::fs::write(
            self.home.join("cgroup.procs"),
            format!("{}\n", std::process::id()),
        );
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "baton-bench: could not remove cgroup {}",
            self.dir.display()
        );
    }
}

/// A private bpffs mount in a temporary directory; unmounted (dropping every pin) on drop.
struct BpffsGuard {
    dir: tempfile::TempDir,
}

impl BpffsGuard {
    fn mount() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("baton-bench-bpffs")
            .tempdir()?;
        nix::mount::mount(
            Some("bpf"),
            dir.path(),
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mount -t bpf bpf {}", dir.path().display()))?;
        Ok(Self { dir })
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for BpffsGuard {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("baton-bench: umount {}: {e}", self.dir.path().display());
        }
    }
}

/// A child process killed (SIGTERM, then SIGKILL) and reaped on drop.
struct ChildGuard(Option<std::process::Child>);

impl ChildGuard {
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.0.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// xorshift64*: deterministic, dependency-free randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// VIP number `i` (0-based) in the /16 `10.<b>.0.0`.
fn vip(b: u8, i: usize) -> Ipv4Addr {
    let n = i + 1;
    Ipv4Addr::new(10, b, (n >> 8) as u8, (n & 0xff) as u8)
}

fn service(name: String, vip: Ipv4Addr, backends: impl Iterator<Item = Ipv4Addr>) -> ServiceSpec {
    ServiceSpec {
        name,
        vips: vec![IpAddr::V4(vip)],
        ports: vec![PortSpec {
            port: VIP_PORT,
            target_port: BACKEND_PORT,
        }],
        policy: LbPolicy::Random,
        endpoints: backends
            .map(|a| EndpointSpec {
                address: IpAddr::V4(a),
                port: 0,
                priority: 0,
            })
            .collect(),
    }
}

/// `n` latency services on VIPs 10.96.x.y, each balancing over the three live backends.
fn latency_state(n: usize) -> DesiredState {
    DesiredState {
        services: (0..n)
            .map(|i| service(format!("lat-{i}"), vip(96, i), BACKENDS.iter().copied()))
            .collect(),
    }
}

/// Distinct backend address number `k` inside 127.0.0.0/8, avoiding 127.0.0.0/16.
fn backend_addr(k: u32) -> Ipv4Addr {
    let k = k + 65_536;
    Ipv4Addr::new(127, (k >> 16) as u8, (k >> 8) as u8, k as u8)
}

/// `BIG` services × `EPS_PER_SVC` distinct backends.
fn big_state() -> DesiredState {
    DesiredState {
        services: (0..BIG)
            .map(|i| {
                let eps = (0..EPS_PER_SVC).map(|j| backend_addr((i * EPS_PER_SVC + j) as u32));
                service(format!("svc-{i}"), vip(96, i), eps)
            })
            .collect(),
    }
}

/// One timed connect()+first line; the socket is created (and later reset-closed) untimed.
fn sample(target: SocketAddr, buf: &mut [u8]) -> Result<u64> {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    sock.set_linger(Some(Duration::ZERO))?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    let addr = target.into();
    let start = Instant::now();
    sock.connect(&addr)
        .with_context(|| format!("connect {target}"))?;
    let mut stream: std::net::TcpStream = sock.into();
    let mut got = 0;
    loop {
        let n = stream
            .read(&mut buf[got..])
            .with_context(|| format!("read from {target}"))?;
        if n == 0 {
            bail!("{target}: EOF before identity line");
        }
        got += n;
        if buf[..got].contains(&b'\n') || got == buf.len() {
            break;
        }
    }
    let ns = start.elapsed().as_nanos() as u64;
    if !buf[..got].starts_with(b"127.0.0.1") {
        bail!(
            "{target}: unexpected identity {:?}",
            String::from_utf8_lossy(&buf[..got])
        );
    }
    Ok(ns)
}

/// How a path picks its target each round.
enum Target {
    Fixed(SocketAddr),
    /// Random one of `n` VIPs in 10.<b>.0.0/16.
    Random {
        b: u8,
        n: usize,
    },
    /// Random one of the backends, directly (same backend mix as the VIP paths).
    RandomBackend,
}

struct Path_ {
    name: String,
    target: Target,
}

struct Row {
    name: String,
    p50: f64,
    p90: f64,
    p99: f64,
    n: usize,
}

fn q(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

/// Round-robin over `paths` for `rounds` rounds (after a short warm-up); rows in µs.
fn run_paths(paths: &[Path_], rounds: usize, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut samples: Vec<Vec<u64>> = paths.iter().map(|_| Vec::with_capacity(rounds)).collect();
    let mut buf = [0u8; 64];
    let warm = (rounds / 20).max(20);
    for r in 0..warm + rounds {
        for (i, p) in paths.iter().enumerate() {
            let t = match p.target {
                Target::Fixed(a) => a,
                Target::RandomBackend => SocketAddr::V4(SocketAddrV4::new(
                    BACKENDS[rng.below(BACKENDS.len())],
                    BACKEND_PORT,
                )),
                Target::Random { b, n } => {
                    SocketAddr::V4(SocketAddrV4::new(vip(b, rng.below(n)), VIP_PORT))
                }
            };
            let ns = sample(t, &mut buf).with_context(|| format!("path {}", p.name))?;
            if r >= warm {
                samples[i].push(ns);
            }
        }
    }
    Ok(paths
        .iter()
        .zip(samples)
        .map(|(p, mut s)| {
            s.sort_unstable();
            Row {
                name: p.name.clone(),
                p50: q(&s, 0.5),
                p90: q(&s, 0.9),
                p99: q(&s, 0.99),
                n: s.len(),
            }
        })
        .collect())
}

fn table(out: &mut String, title: &str, rows: &[Row], base: Option<f64>) {
    let _ = writeln!(out, "\n#### {title}\n");
    let _ = writeln!(
        out,
        "| path | samples | p50 µs | p90 µs | p99 µs | p50 vs direct |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    let base = base.or_else(|| rows.first().map(|r| r.p50)).unwrap_or(0.0);
    for r in rows {
        let ratio = if base > 0.0 {
            (r.p50 / base - 1.0) * 100.0
        } else {
            0.0
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:+.1}% |",
            r.name, r.n, r.p50, r.p90, r.p99, ratio
        );
    }
}

fn fixed(name: &str, ip: Ipv4Addr, port: u16) -> Path_ {
    Path_ {
        name: name.into(),
        target: Target::Fixed(SocketAddr::V4(SocketAddrV4::new(ip, port))),
    }
}

fn direct() -> Path_ {
    fixed("direct 127.0.0.10:8080", BACKENDS[0], BACKEND_PORT)
}

fn direct_random() -> Path_ {
    Path_ {
        name: "direct, random of 3 backends".into(),
        target: Target::RandomBackend,
    }
}

// ---------------------------------------------------------------------------------------------
// iptables

/// kube-proxy-style ruleset: one KUBE-SERVICES-<n> chain per size, reached from nat OUTPUT by the
/// set's /16, with one rule per service → KUBE-SVC → 3 × KUBE-SEP (statistic random) → DNAT.
fn iptables_rules() -> String {
    let mut s = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n");
    let mut rules = String::new();
    for (k, &n) in SIZES.iter().enumerate() {
        let b = 97 + k as u8;
        let top = format!("KUBE-SERVICES-{n}");
        let _ = writeln!(s, ":{top} - [0:0]");
        let _ = writeln!(rules, "-A OUTPUT -d 10.{b}.0.0/16 -j {top}");
        for i in 0..n {
            let svc = format!("KUBE-SVC-{n}-{i}");
            let _ = writeln!(s, ":{svc} - [0:0]");
            let _ = writeln!(
                rules,
                "-A {top} -d {}/32 -p tcp -m tcp --dport {VIP_PORT} -j {svc}",
                vip(b, i)
            );
            for (j, be) in BACKENDS.iter().enumerate() {
                let sep = format!("KUBE-SEP-{n}-{i}-{j}");
                let _ = writeln!(s, ":{sep} - [0:0]");
                let left = BACKENDS.len() - j;
                if left > 1 {
                    let _ = writeln!(
                        rules,
                        "-A {svc} -m statistic --mode random --probability {:.11} -j {sep}",
                        1.0 / left as f64
                    );
                } else {
                    let _ = writeln!(rules, "-A {svc} -j {sep}");
                }
                let _ = writeln!(
                    rules,
                    "-A {sep} -p tcp -m tcp -j DNAT --to-destination {be}:{BACKEND_PORT}"
                );
            }
        }
    }
    s.push_str(&rules);
    s.push_str("COMMIT\n");
    s
}

fn check_iptables() -> Result<()> {
    match Command::new("iptables-restore").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => bail!(
            "iptables-restore --version failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => bail!("iptables-restore not found ({e}); install the `iptables` package (apt-get install iptables)"),
    }
}

/// Loads the ruleset into this process's (private) netns; returns the load time.
fn load_iptables() -> Result<Duration> {
    // Route the VIP ranges to lo so connect() gets past the route lookup to nat OUTPUT
    // (on a real node the default route does this). Private netns only.
    for b in 97..97 + SIZES.len() as u8 {
        run(
            "ip",
            &["route", "add", &format!("10.{b}.0.0/16"), "dev", "lo"],
        )?;
    }
    let rules = iptables_rules();
    let start = Instant::now();
    let mut child = Command::new("iptables-restore")
        .arg("-w")
        .stdin(Stdio::piped())
        .spawn()
        .context("spawning iptables-restore")?;
    child
        .stdin
        .take()
        .context("iptables-restore stdin")?
        .write_all(rules.as_bytes())?;
    let st = child.wait()?;
    if !st.success() {
        bail!("iptables-restore failed: {st}");
    }
    Ok(start.elapsed())
}

fn run(cmd: &str, args: &[&str]) -> Result<()> {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !o.status.success() {
        bail!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Benchmarks

fn datapath(pin_dir: PathBuf, cgroup: &Path) -> Result<Datapath> {
    let cfg = DatapathConfig {
        pin_dir,
        cgroup: cgroup.to_owned(),
        mount_bpffs: false,
        max_entries: BTreeMap::new(),
    };
    Datapath::start(&cfg).context("starting the datapath")
}

fn sync(
    p: &mut Programmer,
    dp: &Datapath,
    st: &DesiredState,
) -> Result<baton_agent::programmer::SyncReport> {
    let r = p.sync(&dp.maps, st).context("sync")?;
    if !r.failed.is_empty() {
        bail!(
            "sync failed for {} services, first: {:?}",
            r.failed.len(),
            r.failed.first()
        );
    }
    Ok(r)
}

fn latency(opts: &Opts, bpffs: &Path, cgroup: &Path, out: &mut String) -> Result<()> {
    let backends: Vec<SocketAddr> = BACKENDS
        .iter()
        .map(|a| SocketAddr::V4(SocketAddrV4::new(*a, BACKEND_PORT)))
        .collect();
    let _backends = Backends::start(&backends).context("starting backends")?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let n = opts.rounds;
    let _ = writeln!(
        out,
        "\n### 1. connect()+first line latency ({n} interleaved rounds per table)"
    );

    eprintln!("latency: direct, no BPF program attached");
    let base = run_paths(
        &[fixed(
            "direct, no program attached",
            BACKENDS[0],
            BACKEND_PORT,
        )],
        n,
        &mut rng,
    )?;
    let base_p50 = base[0].p50;
    table(out, "Baseline: no BPF program, no iptables", &base, None);

    let dp = datapath(bpffs.join("bench"), cgroup)?;
    let mut prog = Programmer::new();
    for &size in &SIZES {
        let r = sync(&mut prog, &dp, &latency_state(size))?;
        eprintln!("latency: BPF with {size} services (sync {:?})", r.duration);
        let paths = [
            direct(),
            fixed(
                &format!("BPF VIP, last of {size}"),
                vip(96, size - 1),
                VIP_PORT,
            ),
            Path_ {
                name: format!("BPF VIP, random of {size}"),
                target: Target::Random { b: 96, n: size },
            },
            direct_random(),
        ];
        let rows = run_paths(&paths, n, &mut rng)?;
        table(
            out,
            &format!("BPF attached, {size} services programmed (no iptables)"),
            &rows,
            None,
        );
        let _ = writeln!(
            out,
            "\nVIP p50 overhead vs direct (same run, program attached): {:+.1}%; vs no-program baseline: {:+.1}%; direct with program vs baseline: {:+.1}%",
            (rows[1].p50 / rows[0].p50 - 1.0) * 100.0,
            (rows[1].p50 / base_p50 - 1.0) * 100.0,
            (rows[0].p50 / base_p50 - 1.0) * 100.0,
        );
    }

    eprintln!("latency: loading iptables rules");
    let load = load_iptables()?;
    let total: usize = SIZES.iter().sum();
    let _ = writeln!(
        out,
        "\niptables-restore of {total} kube-proxy-style services ({} rules): {:.2} s",
        total * 7 + SIZES.len(),
        load.as_secs_f64()
    );
    let mut paths = vec![
        direct(),
        fixed(
            &format!("BPF VIP, last of {BIG}"),
            vip(96, BIG - 1),
            VIP_PORT,
        ),
        Path_ {
            name: format!("BPF VIP, random of {BIG}"),
            target: Target::Random { b: 96, n: BIG },
        },
    ];
    for (k, &size) in SIZES.iter().enumerate() {
        let b = 97 + k as u8;
        paths.push(fixed(
            &format!("iptables, last of {size}"),
            vip(b, size - 1),
            VIP_PORT,
        ));
        paths.push(Path_ {
            name: format!("iptables, random of {size}"),
            target: Target::Random { b, n: size },
        });
    }
    paths.push(direct_random());
    eprintln!("latency: BPF vs iptables");
    let rows = run_paths(&paths, n, &mut rng)?;
    table(
        out,
        &format!("BPF ({BIG} services) vs iptables DNAT, same run (nat table loaded, so conntrack is on for every path)"),
        &rows,
        None,
    );
    let _ = writeln!(out, "\n| comparison (p50) | iptables / BPF |\n|---|---:|");
    for (k, &size) in SIZES.iter().enumerate() {
        let last = &rows[3 + 2 * k];
        let rnd = &rows[4 + 2 * k];
        let _ = writeln!(out, "| last of {size} | {:.2}× |", last.p50 / rows[1].p50);
        let _ = writeln!(out, "| random of {size} | {:.2}× |", rnd.p50 / rows[2].p50);
    }
    dp.teardown().context("datapath teardown")?;
    Ok(())
}

fn programming(opts: &Opts, bpffs: &Path, cgroup: &Path, out: &mut String) -> Result<()> {
    let _ = writeln!(out, "\n### 2. Map programming");
    let dp = datapath(bpffs.join("prog"), cgroup)?;
    let mut prog = Programmer::new();
    let mut st = big_state();
    eprintln!("programming: full sync of {BIG} × {EPS_PER_SVC}");
    let start = Instant::now();
    let r = sync(&mut prog, &dp, &st)?;
    let full = start.elapsed();
    let _ = writeln!(
        out,
        "\n- full sync of {BIG} services × {EPS_PER_SVC} endpoints (distinct backends): **{:.3} s** wall ({:.3} s reported), {} map writes, {} services created",
        full.as_secs_f64(),
        r.duration.as_secs_f64(),
        r.writes,
        r.created
    );
    let again = sync(&mut prog, &dp, &st)?;
    let _ = writeln!(
        out,
        "- re-sync of the unchanged state: {:.3} s, {} writes",
        again.duration.as_secs_f64(),
        again.writes
    );

    let secs = if opts.quick { 0.5 } else { 3.0 };
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let mut next = (BIG * EPS_PER_SVC) as u32;
    for batch in [100usize, 1_000] {
        let (mut changes, mut writes, mut syncs) = (0usize, 0usize, 0usize);
        eprintln!("programming: endpoint churn, batch {batch}, for {secs} s");
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < secs {
            for _ in 0..batch {
                let s = &mut st.services[rng.below(BIG)];
                let idx = rng.below(s.endpoints.len());
                s.endpoints.swap_remove(idx);
                s.endpoints.push(EndpointSpec {
                    address: IpAddr::V4(backend_addr(next)),
                    port: 0,
                    priority: 0,
                });
                next += 1;
                changes += 1;
            }
            let r = sync(&mut prog, &dp, &st)?;
            writes += r.writes;
            syncs += 1;
        }
        let el = start.elapsed().as_secs_f64();
        let _ = writeln!(
            out,
            "- endpoint churn, batches of {batch} replacements (remove one endpoint + add a new backend, random service), one sync per batch: {changes} replacements in {el:.2} s = **{:.0} replacements/s** ({:.0} endpoint add+remove events/s), {syncs} syncs ({:.1} ms each), {:.1} map writes per replacement",
            changes as f64 / el,
            2.0 * changes as f64 / el,
            el * 1000.0 / syncs.max(1) as f64,
            writes as f64 / changes.max(1) as f64
        );
    }
    dp.teardown().context("datapath teardown")?;
    Ok(())
}

fn agent_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("BATON_AGENT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let p = exe.with_file_name("baton-agent");
    if !p.exists() {
        bail!(
            "{} not found: build it (cargo build --release -p baton-agent) or set BATON_AGENT_BIN",
            p.display()
        );
    }
    Ok(p)
}

/// Service `svc-<i>` of the big state as a services-file item, with backends number `eps`.
fn service_yaml(i: usize, eps: &[u32]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  - {{name: svc-{i}, vips: [{}], ports: [{{port: {VIP_PORT}, targetPort: {BACKEND_PORT}}}], policy: random, endpoints: [",
        vip(96, i)
    );
    for (j, &k) in eps.iter().enumerate() {
        let sep = if j + 1 < eps.len() { "," } else { "" };
        let _ = writeln!(s, "      {{address: {}}}{sep}", backend_addr(k));
    }
    s.push_str("    ]}\n");
    s
}

/// Backend numbers of `svc-<i>` in the big state.
fn big_eps(i: usize) -> Vec<u32> {
    (0..EPS_PER_SVC)
        .map(|j| (i * EPS_PER_SVC + j) as u32)
        .collect()
}

fn services_yaml() -> String {
    let mut s = String::from("services:\n");
    for i in 0..BIG {
        s.push_str(&service_yaml(i, &big_eps(i)));
    }
    s
}

fn status(bin: &Path, run_dir: &Path) -> Option<serde_json::Value> {
    let o = Command::new(bin)
        .args(["status", "--run-dir"])
        .arg(run_dir)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !o.status.success() {
        return None;
    }
    serde_json::from_slice(&o.stdout).ok()
}

fn proc_kib(pid: u32, key: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .with_context(|| format!("{key} missing in /proc/{pid}/status"))?;
    let v = line
        .trim_start_matches(':')
        .split_whitespace()
        .next()
        .unwrap_or("");
    v.parse().with_context(|| format!("{key}: {line:?}"))
}

fn agent_rss(bpffs: &Path, cgroup: &Path, out: &mut String) -> Result<()> {
    let _ = writeln!(
        out,
        "\n### 3. Agent memory with {BIG} services × {EPS_PER_SVC} endpoints"
    );
    let bin = agent_bin()?;
    let tmp = tempfile::Builder::new()
        .prefix("baton-bench-agent")
        .tempdir()?;
    let file = tmp.path().join("services.yaml");
    std::fs::write(&file, services_yaml())?;
    let run_dir = tmp.path().join("run");
    std::fs::create_dir(&run_dir)?;
    let pins = bpffs.join("agent");
    eprintln!("agent: starting {}", bin.display());
    let log = std::fs::File::create(tmp.path().join("agent.log"))?;
    let start = Instant::now();
    let child = Command::new(&bin)
        .arg("run")
        .arg("--services")
        .arg(&file)
        .arg("--cgroup")
        .arg(cgroup)
        .arg("--bpffs")
        .arg(&pins)
        .arg("--run-dir")
        .arg(&run_dir)
        .arg("--no-metrics")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))?;
    let pid = child.id();
    let mut guard = ChildGuard(Some(child));
    let st = loop {
        if let Some(c) = guard.0.as_mut() {
            if let Some(ex) = c.try_wait()? {
                let log = std::fs::read_to_string(tmp.path().join("agent.log")).unwrap_or_default();
                bail!("baton-agent exited early ({ex}); log:\n{log}");
            }
        }
        if let Some(v) = status(&bin, &run_dir) {
            let n = v.get("services").and_then(|s| s.as_u64()).unwrap_or(0);
            if n as usize >= BIG && !v.get("last_sync").is_none_or(|s| s.is_null()) {
                break v;
            }
        }
        if start.elapsed() > Duration::from_secs(180) {
            bail!("baton-agent did not program {BIG} services within 180 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let ready = start.elapsed();
    let rss = proc_kib(pid, "VmRSS")?;
    let hwm = proc_kib(pid, "VmHWM")?;
    let exit = guard.stop();
    let _ = writeln!(
        out,
        "\n- time from spawn to {BIG} services programmed (status polled every 100 ms): {:.2} s",
        ready.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "- VmRSS **{:.1} MiB**, VmHWM (peak) **{:.1} MiB**",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    let _ = writeln!(
        out,
        "- status: services={}, endpoints={}, backends={}; last_sync={}",
        st["services"], st["endpoints"], st["backends"], st["last_sync"]
    );
    let _ = writeln!(out, "- agent exit after SIGTERM: {exit:?}");
    let _ = baton_agent::datapath::remove_pins(&pins);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Hot upgrade (handover)

/// Services of the big state whose ten backends listen during the upgrade traffic.
const TRAFFIC_SVC_COUNT: usize = 8;
/// Pacing of the upgrade traffic: one connect every 250 µs (4 000/s).
const TRAFFIC_INTERVAL: Duration = Duration::from_micros(250);
/// Quiet traffic before the upgrade starts and after the new agent synced.
const TRAFFIC_MARGIN: Duration = Duration::from_millis(300);
/// Services an edit of the edit stream changes (one endpoint replaced in each).
const EDIT_SERVICES: usize = 20;
/// Time between two edits of the services file.
const EDIT_INTERVAL: Duration = Duration::from_millis(100);
/// How long the successor is held after its pre-copy in the "held" rounds.
const HOLD_MS: u64 = 700;
/// Agents' services-file polling (ms) in the edit rounds, and otherwise.
const FAST_POLL: &str = "10";
const POLL: &str = "100";
/// Limit of every wait for an agent.
const LONG: Duration = Duration::from_secs(120);

/// The services the upgrade traffic connects to: spread over the services file (a sync programs
/// the services in file order), each with backends whose last octet is neither 0 nor 255.
fn traffic_svcs() -> Vec<usize> {
    (0..TRAFFIC_SVC_COUNT)
        .filter_map(|k| {
            (k * BIG / TRAFFIC_SVC_COUNT + 1..BIG).find(|&i| {
                big_eps(i)
                    .into_iter()
                    .all(|b| !matches!(backend_addr(b).octets()[3], 0 | 255))
            })
        })
        .collect()
}

/// What the handover section needs from before the bench pins itself and enters its sandbox.
struct UpgradeSetup {
    /// `baton-agent` for map layouts 1 and 2.
    bins: [PathBuf; 2],
    /// The CPUs the bench could use before pinning itself: the agents get all of them.
    cpus: nix::sched::CpuSet,
}

fn upgrade_setup() -> Result<UpgradeSetup> {
    let cpus = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .context("sched_getaffinity")?;
    let bin = |l: u32| {
        baton_e2e::harness::agent_bin_for_layout(l)
            .with_context(|| format!("baton-agent for map layout {l}"))
    };
    Ok(UpgradeSetup {
        bins: [bin(1)?, bin(2)?],
        cpus,
    })
}

/// The services file the edit stream rewrites: backend numbers per service of the big state.
struct EditState {
    eps: Vec<Vec<u32>>,
    chunks: Vec<String>,
    next: u32,
    rng: Rng,
}

impl EditState {
    fn new() -> Self {
        let eps: Vec<Vec<u32>> = (0..BIG).map(big_eps).collect();
        let chunks = eps
            .iter()
            .enumerate()
            .map(|(i, e)| service_yaml(i, e))
            .collect();
        Self {
            eps,
            chunks,
            next: (BIG * EPS_PER_SVC) as u32,
            rng: Rng(0x5851_F42D_4C95_7F2D),
        }
    }

    /// Replaces one endpoint of `EDIT_SERVICES` random services (never a traffic service) by a
    /// backend never used before.
    fn edit(&mut self) {
        for _ in 0..EDIT_SERVICES {
            let i = self.rng.below(BIG);
            if traffic_svcs().contains(&i) {
                continue;
            }
            let j = self.rng.below(EPS_PER_SVC);
            self.eps[i][j] = self.next;
            self.next += 1;
            self.chunks[i] = service_yaml(i, &self.eps[i]);
        }
    }

    /// Writes the file atomically (the agent never reads half of it).
    fn write(&self, path: &Path) -> Result<()> {
        let mut text =
            String::with_capacity(self.chunks.iter().map(String::len).sum::<usize>() + 16);
        text.push_str("services:\n");
        for c in &self.chunks {
            text.push_str(c);
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming onto {}", path.display()))
    }
}

/// Edits the services file every `EDIT_INTERVAL` on its own thread until stopped.
struct Editor {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<(EditState, Result<u64>)>>,
}

impl Editor {
    fn start(mut state: EditState, path: PathBuf) -> Result<Self> {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("edit-stream".into())
            .spawn(move || {
                let mut edits = 0u64;
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    state.edit();
                    if let Err(e) = state.write(&path) {
                        return (state, Err(e));
                    }
                    edits += 1;
                    std::thread::sleep(EDIT_INTERVAL);
                }
                (state, Ok(edits))
            })
            .context("spawning the edit stream")?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops; returns the file's state and the number of edits.
    fn stop(mut self) -> Result<(EditState, u64)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let handle = self.handle.take().context("edit stream already stopped")?;
        match handle.join() {
            Ok((state, Ok(n))) => Ok((state, n)),
            Ok((_, Err(e))) => Err(e.context("edit stream")),
            Err(_) => bail!("the edit stream panicked"),
        }
    }
}

impl Drop for Editor {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Agents of either layout on one services file, in the bench cgroup, one pin dir per scenario.
struct Lab<'a> {
    setup: &'a UpgradeSetup,
    cgroup: &'a Path,
    bpffs: &'a Path,
    dir: tempfile::TempDir,
    services: PathBuf,
    edits: Option<EditState>,
    spawned: usize,
}

/// A committed handover, as the bench saw it.
struct Round {
    /// The successor's `status.handover`.
    figures: serde_json::Value,
    /// Successor spawned → its status shows the commit (programs loaded, handover, adopt).
    serving: Duration,
    /// The successor's adopt after the commit (its log's `adopt_us`).
    adopt: Option<Duration>,
    /// `verify` violations right after the commit (`None`: verify failed).
    violations: Option<usize>,
    /// Edits of the services file while it ran.
    edits: u64,
    /// The successor paused after its pre-copy (`BATON_TEST_PAUSE_AT` took effect).
    held: bool,
    /// The old agent's last sync → the successor's first (from their logs).
    gap: Option<Duration>,
    /// Median time between the old agent's syncs under the edit stream (set by the caller).
    cadence: Option<Duration>,
    /// How long the freeze waited for a sync of the old agent that was in flight (from the
    /// logs: the successor's last `map copied` line, plus the hold, is when it sent `Freeze`).
    sync_wait: Option<Duration>,
    /// `verify` violations once the successor applied the last edit.
    settled: Option<usize>,
}

impl Round {
    fn f(&self, key: &str) -> f64 {
        self.figures[key].as_f64().unwrap_or(f64::NAN)
    }
    fn maps(&self, key: &str) -> u64 {
        self.figures["maps"][key].as_u64().unwrap_or(0)
    }
    fn adopt_ms(&self) -> f64 {
        self.adopt.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    }
}

impl<'a> Lab<'a> {
    fn new(setup: &'a UpgradeSetup, cgroup: &'a Path, bpffs: &'a Path) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("baton-bench-handover")
            .tempdir()?;
        let services = dir.path().join("services.yaml");
        let edits = EditState::new();
        edits.write(&services)?;
        Ok(Self {
            setup,
            cgroup,
            bpffs,
            dir,
            services,
            edits: Some(edits),
            spawned: 0,
        })
    }

    /// Back to the unedited 10 000 × 10 file.
    fn reset_services(&mut self) -> Result<()> {
        let edits = EditState::new();
        edits.write(&self.services)?;
        self.edits = Some(edits);
        Ok(())
    }

    fn pins(&self, scenario: &str) -> PathBuf {
        self.bpffs.join(format!("handover-{scenario}"))
    }

    fn run_dir(&self, scenario: &str) -> PathBuf {
        self.dir.path().join(format!("run-{scenario}"))
    }

    /// `baton-agent run` of `layout` for `scenario` with extra arguments and environment.
    fn spawn(
        &mut self,
        layout: u32,
        scenario: &str,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Result<AgentProc> {
        let bin = &self.setup.bins[if layout == 2 { 1 } else { 0 }];
        let mut cmd = AgentCmd::new(
            bin,
            &self.services,
            self.cgroup,
            &self.pins(scenario),
            &self.run_dir(scenario),
        )
        .env("NO_COLOR", "1");
        for a in args {
            cmd = cmd.arg(*a);
        }
        for (k, v) in env {
            cmd = cmd.env(*k, v);
        }
        self.spawned += 1;
        let log = self.dir.path().join(format!(
            "agent-{:02}-{scenario}-v{layout}.log",
            self.spawned
        ));
        let agent = cmd.spawn(&log)?;
        // The bench pinned itself to one CPU; an agent gets every CPU the bench had, as on a
        // node. Set right after exec, before the agent starts any thread.
        if let Ok(pid) = i32::try_from(agent.pid()) {
            let _ =
                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(pid), &self.setup.cpus);
        }
        Ok(agent)
    }

    /// Starts a successor of `layout` next to `old` and waits for the commit, the old agent's
    /// exit (0) and the successor's first sync.
    fn hand_over(
        &mut self,
        old: &mut AgentProc,
        layout: u32,
        scenario: &str,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Result<(AgentProc, Round)> {
        let t0 = Instant::now();
        let mut new = self.spawn(layout, scenario, args, env)?;
        let st = new.wait_status("the handover to commit", LONG, |v| {
            v["handover"].is_object()
        })?;
        let serving = t0.elapsed();
        let exit = old.wait_exit(Duration::from_secs(30))?;
        if !exit.success() {
            bail!(
                "the old agent (pid {}) exited with {exit} after handing over; log tail:\n{}",
                old.pid(),
                old.log_tail()
            );
        }
        let violations = verify_violations(&self.run_dir(scenario));
        new.wait_status("the first sync after the handover", LONG, |v| {
            v["last_sync"].is_object()
        })?;
        let new_log = log_text(new.log_path());
        let old_log = log_text(old.log_path());
        let gap = match (sync_times(&old_log).last(), sync_times(&new_log).first()) {
            (Some(a), Some(b)) => Some(Duration::from_secs_f64((b - a).rem_euclid(86_400.0))),
            _ => None,
        };
        let old_syncs = sync_times(&old_log);
        let held = new_log.contains("BATON_TEST_PAUSE_AT: pausing");
        let freeze = st["handover"]["freeze_us"].as_f64().unwrap_or(0.0) / 1e6;
        let sync_wait = line_times(&new_log, "map copied").last().and_then(|&t| {
            let t = t + if held { HOLD_MS as f64 / 1e3 } else { 0.0 };
            old_syncs
                .iter()
                .map(|s| s - t)
                .find(|d| (0.0..=freeze).contains(d))
                .map(Duration::from_secs_f64)
        });
        let round = Round {
            sync_wait,
            cadence: None,
            adopt: adopt_time(&new_log),
            figures: st["handover"].clone(),
            serving,
            violations,
            edits: 0,
            held,
            gap,
            settled: None,
        };
        Ok((new, round))
    }

    /// Stops an agent with a full teardown and removes whatever it left pinned.
    fn retire(&self, mut agent: AgentProc, scenario: &str) -> Result<()> {
        let st = agent.terminate(Duration::from_secs(30));
        baton_agent::datapath::remove_pins(&self.pins(scenario))
            .with_context(|| format!("removing the pins of {scenario}"))?;
        match st {
            Some(s) if s.success() => Ok(()),
            other => bail!(
                "baton-agent (pid {}) ended with {other:?}; log tail:\n{}",
                agent.pid(),
                agent.log_tail()
            ),
        }
    }
}

/// Number of `verify` violations reported by the agent of `run_dir`.
fn verify_violations(run_dir: &Path) -> Option<usize> {
    let v = baton_agent::admin::client::request(
        &baton_agent::agent::admin_socket(run_dir),
        baton_agent::admin::Request::Verify,
    )
    .ok()?;
    v["violations"].as_array().map(Vec::len)
}

/// An agent's log without terminal colours.
fn log_text(path: &Path) -> String {
    let raw = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// UTC time of day in seconds, as the agents' log timestamps have it.
fn time_of_day(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() % 86_400.0)
}

/// Median interval between the agent's syncs after `since` (time of day, s).
fn cadence(log: &str, since: f64) -> Option<Duration> {
    let times: Vec<f64> = sync_times(log)
        .into_iter()
        .filter(|t| (t - since).rem_euclid(86_400.0) < 43_200.0)
        .collect();
    let diffs: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    match median_max(&diffs).0 {
        s if s.is_nan() => None,
        s => Some(Duration::from_secs_f64(s.max(0.0))),
    }
}

/// Times of day (s) of the agent's `synced` log lines.
fn sync_times(log: &str) -> Vec<f64> {
    line_times(log, " synced ")
}

/// Times of day (s) of the log lines containing `what`.
fn line_times(log: &str, what: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| {
            // 2026-11-21T07:26:53.422283Z  INFO ...
            let t = l.split_whitespace().next()?;
            let hms = t.split_once('T')?.1.trim_end_matches('Z');
            let mut it = hms.split(':');
            let (h, m, s) = (it.next()?, it.next()?, it.next()?);
            Some(
                h.parse::<f64>().ok()? * 3600.0
                    + m.parse::<f64>().ok()? * 60.0
                    + s.parse::<f64>().ok()?,
            )
        })
        .collect()
}

/// The `adopt_us` the successor logs once it owns the datapath.
fn adopt_time(text: &str) -> Option<Duration> {
    let line = text.lines().find(|l| l.contains("handover committed"))?;
    let rest = &line[line.find("adopt_us=")? + "adopt_us=".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().map(Duration::from_micros)
}

/// Median and maximum (NaN for none).
fn median_max(v: &[f64]) -> (f64, f64) {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if s.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    s.sort_by(f64::total_cmp);
    let m = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    (m, s[s.len() - 1])
}

fn mm(v: &[f64], digits: usize) -> String {
    let (m, x) = median_max(v);
    format!("{m:.digits$} / {x:.digits$}")
}

fn list<T: std::fmt::Display>(v: &[T]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn violations_text(v: &[Option<usize>]) -> String {
    if v.iter().all(|x| *x == Some(0)) {
        "0".into()
    } else {
        list(
            &v.iter()
                .map(|x| x.map_or("error".to_string(), |n| n.to_string()))
                .collect::<Vec<_>>(),
        )
    }
}

fn handover(
    opts: &Opts,
    setup: &UpgradeSetup,
    bpffs: &Path,
    cgroup: &Path,
    out: &mut String,
) -> Result<()> {
    let _ = writeln!(
        out,
        "\n### 4. Agent hot upgrade (handover) with {BIG} services × {EPS_PER_SVC} endpoints"
    );
    let _ = writeln!(
        out,
        "\nAgents: layout 1 `{}`, layout 2 `{}`; each agent runs on all CPUs the bench had before \
         pinning itself (load average at the start of this section: {}).",
        setup.bins[0].display(),
        setup.bins[1].display(),
        loadavg()
    );
    let mut lab = Lab::new(setup, cgroup, bpffs)?;
    same_layout(opts, &mut lab, out)?;
    layout_change(opts, &mut lab, out)?;
    strategies(&mut lab, out)?;
    let _ = writeln!(
        out,
        "\n(load average at the end of this section: {})",
        loadavg()
    );
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn same_layout(opts: &Opts, lab: &mut Lab<'_>, out: &mut String) -> Result<()> {
    let n = if opts.quick { 3 } else { 7 };
    let sc = "same";
    eprintln!("handover: {n} handovers layout 1 -> layout 1, no writes");
    let mut cur = lab.spawn(1, sc, &["--poll-ms", POLL], &[])?;
    cur.wait_synced(BIG as u64, LONG)?;
    let mut rounds = Vec::new();
    for r in 0..n {
        let (next, round) = lab.hand_over(&mut cur, 1, sc, &["--poll-ms", POLL], &[])?;
        eprintln!(
            "  {r}: handover {:.2} ms, freeze {:.3} ms, adopt {:.0} ms",
            round.f("handover_us") / 1e3,
            round.f("freeze_us") / 1e3,
            round.adopt_ms()
        );
        cur = next;
        rounds.push(round);
    }
    lab.retire(cur, sc)?;

    let col = |f: &dyn Fn(&Round) -> f64| rounds.iter().map(f).collect::<Vec<_>>();
    let _ = writeln!(
        out,
        "\n#### 4a. Same layout (layout 1 → layout 1), {n} handovers in a row, no writes\n"
    );
    let _ = writeln!(out, "| figure | median | max |\n|---|---:|---:|");
    let row = |out: &mut String, name: &str, v: Vec<f64>, unit: &str, d: usize| {
        let (m, x) = median_max(&v);
        let _ = writeln!(out, "| {name} | {m:.d$} {unit} | {x:.d$} {unit} |");
    };
    row(
        out,
        "**handover_us**: successor ready (`Prepare`) → `Committed`",
        col(&|r| r.f("handover_us") / 1e3),
        "ms",
        2,
    );
    row(
        out,
        "**freeze_us**: old agent's control plane frozen → links swapped",
        col(&|r| r.f("freeze_us") / 1e3),
        "ms",
        3,
    );
    row(
        out,
        "successor spawn → serving (program load + handover + adopt)",
        col(&|r| r.serving.as_secs_f64() * 1e3),
        "ms",
        0,
    );
    row(
        out,
        "adopt after the commit (successor re-reads the maps; no agent writes meanwhile)",
        col(&Round::adopt_ms),
        "ms",
        0,
    );
    let reused = list(&rounds.iter().map(|r| r.maps("reused")).collect::<Vec<_>>());
    let migrated = list(
        &rounds
            .iter()
            .map(|r| r.maps("migrated"))
            .collect::<Vec<_>>(),
    );
    let _ = writeln!(
        out,
        "\nMaps reused per round: {reused}; migrated: {migrated}. The old agent exited 0 every \
         time; `verify` violations right after each commit: {}.",
        violations_text(&rounds.iter().map(|r| r.violations).collect::<Vec<_>>())
    );
    Ok(())
}

/// How the services file is treated during a layout-changing handover.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Writes {
    /// Not edited.
    Quiet,
    /// Edited every `EDIT_INTERVAL` while the handover runs.
    Stream,
    /// Edited, and the successor waits `HOLD_MS` after its pre-copy so that the old agent's
    /// writes land in the journal tail.
    Held,
}

impl Writes {
    fn label(self) -> String {
        match self {
            Writes::Quiet => "none".into(),
            Writes::Stream => format!(
                "edit stream ({EDIT_SERVICES} services every {} ms)",
                EDIT_INTERVAL.as_millis()
            ),
            Writes::Held => format!("edit stream, successor held {HOLD_MS} ms after pre-copy"),
        }
    }
}

fn layout_change(opts: &Opts, lab: &mut Lab<'_>, out: &mut String) -> Result<()> {
    let n = if opts.quick { 1 } else { 3 };
    let sc = "layout";
    let args = ["--poll-ms", FAST_POLL];
    let mut cur = lab.spawn(1, sc, &args, &[])?;
    cur.wait_synced(BIG as u64, LONG)?;
    let mut layout = 1u32;
    // (writes, from, to) → rounds
    let mut table: Vec<((Writes, u32, u32), Vec<Round>)> = Vec::new();
    let held = if opts.quick { 1 } else { 2 };
    for (writes, reps) in [
        (Writes::Quiet, n),
        (Writes::Stream, n),
        (Writes::Held, held),
    ] {
        for _ in 0..reps {
            for _ in 0..2 {
                let to = 3 - layout;
                eprintln!(
                    "handover: layout {layout} -> layout {to}, writes: {}",
                    writes.label()
                );
                let since = time_of_day(std::time::SystemTime::now());
                let editor = match writes {
                    Writes::Quiet => None,
                    _ => {
                        let state = lab.edits.take().context("edit state in use")?;
                        let e = Editor::start(state, lab.services.clone())?;
                        // Let the old agent get into the stream before the successor starts.
                        std::thread::sleep(Duration::from_millis(300));
                        Some(e)
                    }
                };
                let env: Vec<(&str, String)> = match writes {
                    Writes::Held => vec![(
                        "BATON_TEST_PAUSE_AT",
                        format!("new:after_precopy={HOLD_MS}"),
                    )],
                    _ => Vec::new(),
                };
                let (mut next, mut round) = lab.hand_over(&mut cur, to, sc, &args, &env)?;
                if let Some(e) = editor {
                    let (state, edits) = e.stop()?;
                    lab.edits = Some(state);
                    round.edits = edits;
                    round.cadence = cadence(&log_text(cur.log_path()), since);
                    wait_settled(&mut next)?;
                    round.settled = verify_violations(&lab.run_dir(sc));
                }
                eprintln!(
                    "  pre-copy {:.1} ms ({} entries), freeze {:.3} ms, journal {} keys, handover {:.1} ms, adopt {:.0} ms",
                    round.f("precopy_us") / 1e3,
                    round.maps("entries_copied"),
                    round.f("freeze_us") / 1e3,
                    round.f("journal_keys"),
                    round.f("handover_us") / 1e3,
                    round.adopt_ms()
                );
                cur = next;
                let key = (writes, layout, to);
                layout = to;
                match table.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, v)) => v.push(round),
                    None => table.push((key, vec![round])),
                }
            }
        }
    }
    lab.retire(cur, sc)?;

    let _ = writeln!(
        out,
        "\n#### 4b. Layout-changing handovers (endpoint and backend maps migrated, {} entries each)\n",
        BIG * EPS_PER_SVC
    );
    let _ = writeln!(
        out,
        "| handover | writes during it | rounds | pre-copy ms (median / max) | entries copied | pre-copy entries/s (median) | **freeze_us** ms (median / max; per round, with the wait for a sync in flight) | journal keys per round | handover_us ms (median / max) | adopt ms (median / max) | control-plane gap ms (median / max) | maps reused / migrated | verify after commit / after last edit |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---|"
    );
    for ((writes, from, to), rs) in &table {
        let col = |f: &dyn Fn(&Round) -> f64| rs.iter().map(f).collect::<Vec<_>>();
        let rate = median_max(&col(&|r| {
            r.maps("entries_copied") as f64 / (r.f("precopy_us") / 1e6)
        }))
        .0;
        // A held round's handover_us includes the hold.
        let hold = |r: &Round| if r.held { HOLD_MS as f64 } else { 0.0 };
        let copied = list(
            &rs.iter()
                .map(|r| r.maps("entries_copied"))
                .collect::<Vec<_>>(),
        );
        let keys = list(&rs.iter().map(|r| r.f("journal_keys")).collect::<Vec<_>>());
        let gap = if *writes == Writes::Quiet {
            "–".to_string()
        } else {
            format!(
                "{} (syncs every {:.0} before)",
                mm(
                    &col(&|r| r.gap.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)),
                    0,
                ),
                median_max(&col(&|r| r
                    .cadence
                    .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)))
                .0
            )
        };
        let freeze = format!(
            "{}; {}",
            mm(&col(&|r| r.f("freeze_us") / 1e3), 3),
            list(
                &rs.iter()
                    .map(|r| match r.sync_wait {
                        Some(w) => format!(
                            "{:.2} ({:.2} sync)",
                            r.f("freeze_us") / 1e3,
                            w.as_secs_f64() * 1e3
                        ),
                        None => format!("{:.2}", r.f("freeze_us") / 1e3),
                    })
                    .collect::<Vec<_>>()
            )
        );
        let settled = if *writes == Writes::Quiet {
            "–".to_string()
        } else {
            violations_text(&rs.iter().map(|r| r.settled).collect::<Vec<_>>())
        };
        let _ = writeln!(
            out,
            "| layout {from} → {to} | {} | {} | {} | {copied} | {:.2} M/s | {} | {keys} | {}{} | {} | {gap} | {} / {} | {} / {settled} |",
            writes.label(),
            rs.len(),
            mm(&col(&|r| r.f("precopy_us") / 1e3), 1),
            rate / 1e6,
            freeze,
            mm(&col(&|r| r.f("handover_us") / 1e3 - hold(r)), 1),
            if rs.iter().any(|r| r.held) {
                " (hold subtracted)"
            } else {
                ""
            },
            mm(&col(&Round::adopt_ms), 0),
            list(&rs.iter().map(|r| r.maps("reused")).collect::<Vec<_>>()),
            list(&rs.iter().map(|r| r.maps("migrated")).collect::<Vec<_>>()),
            violations_text(&rs.iter().map(|r| r.violations).collect::<Vec<_>>()),
        );
    }
    let edits: u64 = table
        .iter()
        .flat_map(|(_, rs)| rs.iter().map(|r| r.edits))
        .sum();
    let _ = writeln!(
        out,
        "\nEntries copied = pre-copy + journal replay. Control-plane gap = the old agent's last \
         sync → the successor's first sync (log timestamps), i.e. how long the edit stream went \
         unapplied around the handover; \"syncs every … before\" is the old agent's median sync \
         interval under the same edit stream before the handover (one parse of the 10 000-service \
         file per sync). \"sync\" in the freeze column: \
         the freeze waited that long for a sync of the old agent that was in flight when `Freeze` \
         arrived (its `synced` log line falls inside the freeze). \
         Edit rounds made {edits} edits of the services file in total; agents poll it every \
         {FAST_POLL} ms."
    );
    Ok(())
}

/// Waits until the agent stopped syncing (it applied the last edit): `syncs` unchanged for 1 s.
fn wait_settled(agent: &mut AgentProc) -> Result<()> {
    let deadline = Instant::now() + LONG;
    let mut last = None;
    let mut since = Instant::now();
    while Instant::now() < deadline {
        let v = agent.wait_status("status", LONG, |_| true)?;
        let syncs = v["syncs"].as_u64();
        if syncs != last {
            last = syncs;
            since = Instant::now();
        } else if since.elapsed() >= Duration::from_secs(1) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the agent kept syncing for {LONG:?} after the edit stream stopped")
}

/// How an agent is replaced by a build of the other layout.
#[derive(Clone, Copy)]
enum Strategy {
    StopStart,
    PinRestart,
    Handover,
}

impl Strategy {
    fn label(self) -> &'static str {
        match self {
            Strategy::StopStart => {
                "1. stop-and-start: SIGTERM (full teardown), then start layout 2 fresh"
            }
            Strategy::PinRestart => {
                "2. restart from pins, Kmesh-style: stop with `--keep-datapath`, unpin the changed maps, start layout 2 with `--no-take-over`"
            }
            Strategy::Handover => "3. handover: start layout 2 next to the running agent",
        }
    }
}

/// Names of the maps whose layout differs between layout 1 and 2.
fn changed_maps() -> Result<Vec<String>> {
    let known = |v| {
        baton_agent::migrate::MapLayout::known(v)
            .with_context(|| format!("layout {v}"))?
            .with_context(|| format!("this build does not know layout {v}"))
    };
    let (a, b) = (known(1)?, known(2)?);
    let names: Vec<String> = a
        .iter()
        .filter(|m| !b.iter().any(|n| n.name == m.name && n.same_as(m)))
        .map(|m| m.name.clone())
        .collect();
    if names.is_empty() {
        bail!("layouts 1 and 2 have the same maps");
    }
    Ok(names)
}

fn strategies(lab: &mut Lab<'_>, out: &mut String) -> Result<()> {
    lab.reset_services()?;
    let changed = changed_maps()?;
    let mut addrs = Vec::new();
    let mut targets = Vec::new();
    for i in traffic_svcs() {
        let eps: Vec<SocketAddr> = big_eps(i)
            .into_iter()
            .map(|k| SocketAddr::V4(SocketAddrV4::new(backend_addr(k), BACKEND_PORT)))
            .collect();
        targets.push(Expected {
            target: SocketAddr::V4(SocketAddrV4::new(vip(96, i), VIP_PORT)),
            identities: eps.iter().map(ToString::to_string).collect(),
        });
        addrs.extend(eps);
    }
    let _backends = Backends::start(&addrs).context("starting the traffic backends")?;
    let cfg = TrafficConfig {
        targets,
        interval: TRAFFIC_INTERVAL,
        timeouts: baton_e2e::client::Timeouts::both(Duration::from_secs(1)),
    };
    let mut rows = Vec::new();
    for (k, s) in [
        Strategy::StopStart,
        Strategy::PinRestart,
        Strategy::Handover,
    ]
    .into_iter()
    .enumerate()
    {
        let sc = format!("strategy{}", k + 1);
        eprintln!("upgrade under traffic: {}", s.label());
        let mut args = vec!["--poll-ms", POLL];
        if matches!(s, Strategy::PinRestart) {
            args.push("--keep-datapath");
        }
        let mut old = lab.spawn(1, &sc, &args, &[])?;
        old.wait_synced(BIG as u64, LONG)?;
        let traffic = Traffic::start(cfg.clone())?;
        std::thread::sleep(TRAFFIC_MARGIN);
        let trigger = Instant::now();
        let new = match s {
            Strategy::StopStart | Strategy::PinRestart => {
                let st = old.terminate(Duration::from_secs(30));
                if !st.is_some_and(|s| s.success()) {
                    bail!(
                        "the old agent ended with {st:?}; log tail:\n{}",
                        old.log_tail()
                    );
                }
                let mut args = vec!["--poll-ms", POLL];
                if matches!(s, Strategy::PinRestart) {
                    for m in &changed {
                        let pin = baton_agent::maps::set::map_pin_path(&lab.pins(&sc), m);
                        std::fs::remove_file(&pin)
                            .with_context(|| format!("unpinning {}", pin.display()))?;
                    }
                    args.push("--no-take-over");
                }
                let mut new = lab.spawn(2, &sc, &args, &[])?;
                new.wait_synced(BIG as u64, LONG)?;
                new
            }
            Strategy::Handover => {
                lab.hand_over(&mut old, 2, &sc, &["--poll-ms", POLL], &[])?
                    .0
            }
        };
        let synced = trigger.elapsed();
        std::thread::sleep(TRAFFIC_MARGIN);
        let log = traffic.stop().context("the traffic thread panicked")?;
        lab.retire(new, &sc)?;
        drop(old);
        if log.ok == 0 {
            bail!(
                "no connect reached a backend ({}); first error: {:?}",
                log.error_kinds(),
                log.first_error
            );
        }
        eprintln!(
            "  {} connects, {} failed ({}), {} misrouted",
            log.attempted,
            log.failed(),
            log.error_kinds(),
            log.misrouted
        );
        rows.push((s, log, trigger, synced));
    }

    let _ = writeln!(
        out,
        "\n#### 4c. Connects during an upgrade layout 1 → layout 2, three strategies\n"
    );
    let _ = writeln!(
        out,
        "One client thread connects to the VIPs of {} services spread over the file ({}) \
         round-robin (their {} backends listen), one connect every {} µs, from {} ms before the \
         upgrade starts until {} ms after the new agent synced. Misrouted = answered by a backend \
         that is not one of that VIP's. Maps whose layout changes: {}.\n",
        TRAFFIC_SVC_COUNT,
        list(
            &traffic_svcs()
                .iter()
                .map(|i| format!("svc-{i}"))
                .collect::<Vec<_>>()
        ),
        TRAFFIC_SVC_COUNT * EPS_PER_SVC,
        TRAFFIC_INTERVAL.as_micros(),
        TRAFFIC_MARGIN.as_millis(),
        TRAFFIC_MARGIN.as_millis(),
        changed.join(", ")
    );
    let _ = writeln!(
        out,
        "| strategy | connects | failed | misrouted | failure window | first → last bad connect, after the upgrade started | new agent synced after |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---|---:|");
    for (s, log, trigger, synced) in &rows {
        let (window, span) = match log.bad_span(*trigger) {
            Some((a, b)) => (
                format!(
                    "**{:.0} ms**",
                    (b - a) * 1e3 + TRAFFIC_INTERVAL.as_secs_f64() * 1e3
                ),
                format!("{:+.0} ms → {:+.0} ms", a * 1e3, b * 1e3),
            ),
            None => ("**0**".into(), "–".into()),
        };
        let kinds = if log.failed() > 0 {
            format!(" ({})", log.error_kinds())
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| {} | {} | **{}**{kinds} | {} | {window} | {span} | {:.2} s |",
            s.label(),
            log.attempted,
            log.failed(),
            log.misrouted,
            synced.as_secs_f64()
        );
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let opts = parse_args()?;
    if !nix::unistd::Uid::effective().is_root() {
        bail!("baton-bench needs root (cgroups, bpffs, BPF, network namespaces)");
    }
    check_iptables()?;
    // Before pinning: the agents' binaries (may run cargo) and the CPUs they get.
    let upgrade = if opts.runs("handover") {
        Some(upgrade_setup()?)
    } else {
        None
    };
    let cgroup = CgroupGuard::create()?;
    let bpffs = BpffsGuard::mount()?;
    if let Some(cpu) = opts.cpu {
        // Every thread (client, backend handlers) and the agent child inherit this: on small VMs
        // cross-CPU wakeups of idle vCPUs otherwise add a bimodal ~1-jiffy (4 ms) tail to every path.
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).context("--cpu out of range")?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
            .with_context(|| format!("pinning to CPU {cpu}"))?;
    }
    // Single-threaded here: join the bench cgroup and move into a private netns with only lo.
    baton_e2e::sandbox::enter(Some(&cgroup.dir)).context("entering the sandbox")?;
    for conf in ["all", "lo", "default"] {
        std::fs::write(
            format!("/proc/sys/net/ipv4/conf/{conf}/route_localnet"),
            "1",
        )
        .with_context(|| format!("route_localnet ({conf}) in the private netns"))?;
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "## baton-bench{} — kernel {}, {} CPUs online, {}",
        if opts.quick { " --quick" } else { "" },
        kernel(),
        online_cpus(),
        opts.cpu
            .map_or("not pinned".to_string(), |c| format!("pinned to CPU {c}"))
    );
    let t0 = Instant::now();
    if opts.runs("latency") {
        latency(&opts, bpffs.path(), &cgroup.dir, &mut out)?;
    }
    if opts.runs("programming") {
        programming(&opts, bpffs.path(), &cgroup.dir, &mut out)?;
    }
    if opts.runs("rss") {
        agent_rss(bpffs.path(), &cgroup.dir, &mut out)?;
    }
    if let Some(setup) = &upgrade {
        handover(&opts, setup, bpffs.path(), &cgroup.dir, &mut out)?;
    }
    let _ = writeln!(
        out,
        "\n(total bench time {:.0} s)",
        t0.elapsed().as_secs_f64()
    );
    println!("{out}");
    Ok(())
}

fn online_cpus() -> String {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}
