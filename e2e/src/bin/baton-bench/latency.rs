//! Section 1 (`--only latency`): connect() + first byte latency, direct, through a BPF VIP and
//! through iptables DNAT, in interleaved rounds.

use std::fmt::Write as _;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use baton_agent::programmer::Programmer;
use baton_e2e::backend::Backends;
use socket2::{Domain, Socket, Type};

use crate::args::Args;
use crate::common::{
    datapath, latency_state, sync, vip, Rng, BACKENDS, BACKEND_PORT, BIG, SIZES, VIP_PORT,
};
use crate::iptables::load_iptables;
use crate::report::{q, table, Row};

/// Runs section 1 and appends its tables to `out`.
pub fn run(opts: &Args, bpffs: &Path, cgroup: &Path, out: &mut String) -> Result<()> {
    let backends: Vec<SocketAddr> = BACKENDS
        .iter()
        .map(|a| SocketAddr::V4(SocketAddrV4::new(*a, BACKEND_PORT)))
        .collect();
    let _backends = Backends::start(&backends).context("starting backends")?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let n = opts.rounds();
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
