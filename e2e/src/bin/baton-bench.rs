//! `baton-bench`: connect latency (direct / BPF VIP / iptables DNAT), map programming speed and
//! agent memory, measured in a private cgroup + network namespace of this process.
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

struct Opts {
    quick: bool,
    rounds: usize,
    /// CPU to pin the whole bench (client, backends, agent) to; `None` = no pinning.
    cpu: Option<usize>,
    /// Sections to run (latency, programming, rss); empty = all.
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
                    .context("--only needs latency, programming or rss")?;
                if !["latency", "programming", "rss"].contains(&v.as_str()) {
                    bail!("--only {v}: expected latency, programming or rss");
                }
                only.push(v);
            }
            "-h" | "--help" => {
                println!("usage: baton-bench [--quick] [--rounds N] [--cpu N | --no-pin] [--only latency|programming|rss]...   (run as root)");
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

fn services_yaml() -> String {
    let mut s = String::from("services:\n");
    for i in 0..BIG {
        let _ = writeln!(
            s,
            "  - {{name: svc-{i}, vips: [{}], ports: [{{port: {VIP_PORT}, targetPort: {BACKEND_PORT}}}], policy: random, endpoints: [",
            vip(96, i)
        );
        for j in 0..EPS_PER_SVC {
            let sep = if j + 1 < EPS_PER_SVC { "," } else { "" };
            let _ = writeln!(
                s,
                "      {{address: {}}}{sep}",
                backend_addr((i * EPS_PER_SVC + j) as u32)
            );
        }
        s.push_str("    ]}\n");
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
