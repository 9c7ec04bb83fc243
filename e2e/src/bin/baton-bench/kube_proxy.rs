//! Section 5 (`--only kube-proxy`): Baton's Kubernetes source against the real kube-proxy, on
//! one real kube-apiserver (+ etcd) running inside the bench's private network namespace, with
//! the same Services and EndpointSlices for every proxy.
//!
//! Per cluster size (bulk Services of 10 endpoints each, plus 4 single-endpoint probe Services)
//! and per proxy, one after the other: time from the proxy's start until its first connects
//! through the probe VIPs and the last bulk VIP land on their endpoints; RSS; connect()+first
//! byte latency through a fixed VIP and a random one, interleaved with direct connects; then,
//! under a steady churn of endpoint changes (10, 100, 1 000 /s), the propagation latency of a
//! probe's endpoint move (write acknowledged by the API server → the first connect through its
//! VIP that reaches the new endpoint) and the proxy's CPU per 1 000 changes.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use baton_e2e::apiserver::{bin_dir, ApiServer, ApiServerOptions};

use crate::args::Args;
use crate::common::Rng;
use crate::kcluster::{
    answer, ep_addr, probe_vip, setup_netns, sock, vip, AnyBackend, Churn, Objects, EPS, EP_PORT,
    PROBES, SERVICE_CIDR, SVC_PORT,
};
use crate::kproxy::{self, Env, Mode, Running};
use crate::report::{q, Row};

/// Longest wait for a proxy to program the cluster.
const READY_TIMEOUT: Duration = Duration::from_secs(600);
/// Connect timeout of the watching loop: an unprogrammed VIP leads to the dummy interface.
const PROBE_CONNECT: Duration = Duration::from_millis(50);

/// What one proxy measured at one size.
struct Measured {
    mode: Mode,
    ready_s: f64,
    startup_cpu_s: f64,
    rss_mib: f64,
    latency: Option<(Row, Row, Row)>,
    churn: Vec<ChurnRow>,
}

struct ChurnRow {
    rate: u32,
    achieved: f64,
    samples: Vec<u64>,
    timeouts: usize,
    cpu_per_1000: f64,
    rss_mib: f64,
}

/// Runs the section and appends its report to `out`.
pub fn run(opts: &Args, bpffs: &Path, cgroup: &Path, out: &mut String) -> Result<()> {
    let sizes = opts.kube_sizes();
    let modes = opts.kube_modes();
    let rates = opts.kube_rates();
    let samples = opts.kube_samples();
    let bins = bin_dir();
    let kube_proxy = kproxy::kube_proxy_bin(&bins)?;
    for tool in ["nft", "unshare"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("{tool} not found (apt packages nftables, util-linux)");
        }
    }
    let _ = writeln!(
        out,
        "\n### 5. Kubernetes source vs kube-proxy (real kube-apiserver, {EPS} endpoints per Service)"
    );
    // Unpinned: the API server, etcd, the proxy and the churn writer need both CPUs (pinned
    // to one, the API server saturated at ~250 slice writes/s); threads and children started
    // from here inherit this.
    unpin()?;
    setup_netns()?;
    kproxy::flush_rules()?;
    let _backend = AnyBackend::start(4)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let max = sizes.iter().copied().max().unwrap_or(0);
    let server = rt
        .block_on(ApiServer::start_with(&ApiServerOptions {
            service_cidr: SERVICE_CIDR.into(),
            extra_args: vec![
                // 10 000 Services + slices and 1 000 writes/s: lift the default in-flight caps.
                "--max-requests-inflight=2000".into(),
                "--max-mutating-requests-inflight=1000".into(),
            ],
        }))
        .context("BATON_SKIP_APISERVER is set: the kube-proxy section needs the API server")?;
    let config = rt.block_on(server.config());
    let client = rt.block_on(server.client());
    let mut objects = rt.block_on(Objects::create(client, max))?;
    let env = Env {
        kube_proxy,
        kubeconfig: server.kubeconfig().to_owned(),
        cgroup: cgroup.to_owned(),
        bpffs: bpffs.to_owned(),
        dir: server.dir().to_owned(),
    };
    eprintln!("kube-proxy: logs and kubeconfig in {}", env.dir.display());
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut run_no = 0;
    let mut all: Vec<(usize, Vec<Measured>)> = Vec::new();
    for &size in &sizes {
        let t = Instant::now();
        let before = objects.services;
        rt.block_on(objects.grow(size))?;
        let made = size.saturating_sub(before);
        let _ = writeln!(
            out,
            "\n- {made} Services + {made} EndpointSlices created in {:.1} s ({size} bulk Services, {} endpoints in all)",
            t.elapsed().as_secs_f64(),
            size * EPS + PROBES
        );
        let mut rows = Vec::new();
        for &mode in &modes {
            run_no += 1;
            eprintln!("kube-proxy: {size} services, {}", mode.label());
            let proxy = kproxy::start(mode, &env, run_no)?;
            let m = measure(
                &proxy,
                size,
                &rates,
                samples,
                opts.kube_rounds(),
                opts.kube_change_timeout(),
                &config,
                &mut objects,
                &rt,
                &mut rng,
            );
            proxy.stop()?;
            wait_dark()?;
            // A proxy that cannot program this size (or dies) is a result, not the end of the
            // section: the other proxies and sizes still run.
            match m {
                Ok(m) => rows.push(m),
                Err(e) => {
                    eprintln!("  {}: {e:#}", mode.label());
                    let _ = writeln!(
                        out,
                        "\n- **{} at {size} Services: {}**",
                        mode.label(),
                        format!("{e:#}").lines().next().unwrap_or_default()
                    );
                }
            }
        }
        let mut part = String::new();
        report(&mut part, size, &rows);
        // Also on stderr as soon as a size is done, so a long run that is cut short keeps it.
        eprintln!("{part}");
        out.push_str(&part);
        all.push((size, rows));
    }
    drop(server);
    Ok(())
}

use std::process::Command;

/// Waits until no proxy answers a probe VIP any more, so the next proxy's "programmed" time
/// starts from nothing (an agent's teardown or a rule flush seen late would count as ready).
fn wait_dark() -> Result<()> {
    let start = Instant::now();
    while (0..PROBES).any(|j| answer(sock(probe_vip(j), SVC_PORT), PROBE_CONNECT).is_some()) {
        if start.elapsed() > Duration::from_secs(20) {
            bail!("a probe VIP still answers 20 s after its proxy stopped");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Lets this thread (and what it starts) run on every online CPU again.
fn unpin() -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    let n = std::thread::available_parallelism().map_or(1, usize::from);
    for cpu in 0..nix::sched::CpuSet::count().min(n.max(64)) {
        let _ = set.set(cpu);
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).context("unpinning")?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn measure(
    proxy: &Running,
    size: usize,
    rates: &[u32],
    samples: usize,
    rounds: usize,
    change_timeout: Duration,
    config: &kube::Config,
    objects: &mut Objects,
    rt: &tokio::runtime::Runtime,
    rng: &mut Rng,
) -> Result<Measured> {
    let started = Instant::now();
    // Ready: every probe VIP and the last bulk VIP answer from one of their endpoints.
    let last = size.checked_sub(1);
    loop {
        let probes_ok = (0..PROBES).all(|j| {
            answer(sock(probe_vip(j), SVC_PORT), PROBE_CONNECT)
                == Some(ep_addr(objects.probe_eps[j]))
        });
        let bulk_ok = last.is_none_or(|i| {
            answer(sock(vip(i), SVC_PORT), PROBE_CONNECT)
                .is_some_and(|a| objects.bulk[i].iter().any(|&k| ep_addr(k) == a))
        });
        if probes_ok && bulk_ok {
            break;
        }
        if !proxy.alive() {
            bail!("{} exited:\n{}", proxy.mode.label(), proxy.log_tail());
        }
        if started.elapsed() > READY_TIMEOUT {
            bail!(
                "{} did not program {size} services in {READY_TIMEOUT:?}:\n{}",
                proxy.mode.label(),
                proxy.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let ready_s = started.elapsed().as_secs_f64();
    let startup_cpu_s = proxy.cpu_s();
    let rss_mib = proxy.rss_mib();
    eprintln!("  ready after {ready_s:.2} s ({startup_cpu_s:.2} CPU-s, RSS {rss_mib:.1} MiB)");
    let latency = if rounds > 0 {
        Some(connect_latency(objects, size, rounds, rng)?)
    } else {
        None
    };
    let mut churn = Vec::new();
    for &rate in rates {
        if size < 100 {
            break;
        }
        let c = Churn::start(config.clone(), objects, rate)?;
        // Let the proxy reach its steady state under this rate before measuring.
        std::thread::sleep(Duration::from_secs(2));
        let (cpu0, done0) = (
            proxy.cpu_s(),
            c.done.load(std::sync::atomic::Ordering::Relaxed),
        );
        let t0 = Instant::now();
        let mut got = Vec::new();
        let mut timeouts = 0;
        let mut probe_writes = 0u64;
        let result: Result<()> = (|| {
            for s in 0..samples {
                let j = s % PROBES;
                let (want, acked) = rt.block_on(objects.move_probe(j))?;
                probe_writes += 1;
                let target = sock(probe_vip(j), SVC_PORT);
                loop {
                    if answer(target, PROBE_CONNECT) == Some(want) {
                        got.push(acked.elapsed().as_nanos() as u64);
                        break;
                    }
                    if acked.elapsed() > change_timeout {
                        timeouts += 1;
                        break;
                    }
                    if !proxy.alive() {
                        bail!("{} exited:\n{}", proxy.mode.label(), proxy.log_tail());
                    }
                    std::thread::sleep(Duration::from_micros(500));
                }
                if timeouts >= 3 {
                    // The proxy does not keep up with this rate: more samples would only
                    // add 30 s each.
                    eprintln!("  3 changes not seen within {change_timeout:?}: stopping this rate");
                    break;
                }
                // Decorrelate the next write from the proxy's sync cycle.
                std::thread::sleep(Duration::from_millis(rng.below(100) as u64));
            }
            Ok(())
        })();
        let secs = t0.elapsed().as_secs_f64();
        let (cpu1, done1) = (
            proxy.cpu_s(),
            c.done.load(std::sync::atomic::Ordering::Relaxed),
        );
        let rss = proxy.rss_mib();
        let behind = c.behind.load(std::sync::atomic::Ordering::Relaxed);
        let failed = c.failed.load(std::sync::atomic::Ordering::Relaxed);
        c.stop(objects)?;
        result?;
        let changes = (done1 - done0) + probe_writes;
        eprintln!(
            "  churn {rate}/s: {} samples, p50 {:.1} ms, {:.0} changes/s, {:.3} CPU-s per 1000 (skipped {behind}, failed {failed})",
            got.len(),
            median_ms(&got),
            changes as f64 / secs,
            (cpu1 - cpu0) / changes.max(1) as f64 * 1000.0
        );
        churn.push(ChurnRow {
            rate,
            achieved: changes as f64 / secs,
            samples: got,
            timeouts,
            cpu_per_1000: (cpu1 - cpu0) / changes.max(1) as f64 * 1000.0,
            rss_mib: rss,
        });
    }
    Ok(Measured {
        mode: proxy.mode,
        ready_s,
        startup_cpu_s,
        rss_mib,
        latency,
        churn,
    })
}

fn median_ms(ns: &[u64]) -> f64 {
    let mut s = ns.to_vec();
    s.sort_unstable();
    q(&s, 0.5) / 1000.0
}

/// Interleaved rounds of: direct to probe 0's endpoint, probe 0's VIP (fixed), a random bulk VIP.
fn connect_latency(
    objects: &Objects,
    size: usize,
    rounds: usize,
    rng: &mut Rng,
) -> Result<(Row, Row, Row)> {
    let direct = sock(ep_addr(objects.probe_eps[0]), EP_PORT);
    let fixed = sock(probe_vip(0), SVC_PORT);
    let mut s: [Vec<u64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut failed = [0usize; 3];
    let warm = (rounds / 20).max(20);
    for r in 0..warm + rounds {
        let random = sock(vip(rng.below(size.max(1))), SVC_PORT);
        for (k, t) in [direct, fixed, random].into_iter().enumerate() {
            let start = Instant::now();
            let a = answer(t, Duration::from_secs(2));
            let ns = start.elapsed().as_nanos() as u64;
            // A failed connect is counted and left out (a proxy resyncing under a loaded
            // machine may drop one); too many fail the section.
            if a.is_none() {
                failed[k] += 1;
                if failed[k] > rounds / 100 + 3 {
                    bail!(
                        "{} connects to {t} failed during the latency rounds",
                        failed[k]
                    );
                }
                continue;
            }
            if r >= warm {
                s[k].push(ns);
            }
        }
    }
    if failed.iter().any(|&f| f > 0) {
        eprintln!("  failed connects (direct, fixed VIP, random VIP): {failed:?}");
    }
    let row = |name: String, mut v: Vec<u64>| {
        v.sort_unstable();
        Row {
            name,
            p50: q(&v, 0.5),
            p90: q(&v, 0.9),
            p99: q(&v, 0.99),
            n: v.len(),
        }
    };
    let [d, f, r] = s;
    Ok((
        row("direct".into(), d),
        row("fixed VIP".into(), f),
        row(format!("random VIP of {size}"), r),
    ))
}

fn report(out: &mut String, size: usize, rows: &[Measured]) {
    let _ = writeln!(out, "\n#### {size} Services × {EPS} endpoints\n");
    let _ = writeln!(
        out,
        "| proxy | start → programmed | CPU-s to programmed | RSS MiB |\n|---|---:|---:|---:|"
    );
    for m in rows {
        let _ = writeln!(
            out,
            "| {} | {:.2} s | {:.2} | {:.1} |",
            m.mode.label(),
            m.ready_s,
            m.startup_cpu_s,
            m.rss_mib
        );
    }
    if rows.iter().any(|m| m.latency.is_some()) {
        let _ = writeln!(
            out,
            "\nconnect()+first byte, µs (interleaved with direct connects in the same phase)\n\n\
             | proxy | direct p50 | fixed VIP p50 / p99 | vs direct | random VIP p50 / p99 | vs direct |\n\
             |---|---:|---:|---:|---:|---:|"
        );
        for m in rows {
            let Some((d, f, r)) = &m.latency else {
                continue;
            };
            let _ = writeln!(
                out,
                "| {} | {:.1} | {:.1} / {:.1} | {:+.1}% | {:.1} / {:.1} | {:+.1}% |",
                m.mode.label(),
                d.p50,
                f.p50,
                f.p99,
                (f.p50 / d.p50 - 1.0) * 100.0,
                r.p50,
                r.p99,
                (r.p50 / d.p50 - 1.0) * 100.0
            );
        }
    }
    if rows.iter().all(|m| m.churn.is_empty()) {
        return;
    }
    let _ = writeln!(
        out,
        "\npropagation (write acknowledged → first connect to the new endpoint) under churn\n\n\
         | proxy | churn asked | achieved /s | samples | p50 ms | p99 ms | max ms | timeouts | CPU-s per 1 000 changes | RSS MiB |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for m in rows {
        for c in &m.churn {
            let mut s = c.samples.clone();
            s.sort_unstable();
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {} | {:.1} | {:.1} | {:.1} | {} | {:.3} | {:.1} |",
                m.mode.label(),
                c.rate,
                c.achieved,
                s.len(),
                q(&s, 0.5) / 1000.0,
                q(&s, 0.99) / 1000.0,
                s.last().map_or(f64::NAN, |&v| v as f64 / 1e6),
                c.timeouts,
                c.cpu_per_1000,
                c.rss_mib
            );
        }
    }
    // Ratios to kube-proxy's best mode, measured in this run.
    let baton: Vec<&Measured> = rows.iter().filter(|m| m.mode.is_baton()).collect();
    let kp: Vec<&Measured> = rows.iter().filter(|m| !m.mode.is_baton()).collect();
    if baton.is_empty() || kp.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nratios, Baton / kube-proxy's best mode at each rate (same run; < 1 = Baton better)\n\n\
         | Baton setting | churn | p99: Baton / best kube-proxy (which) | CPU per 1 000: Baton / best kube-proxy (which) |\n\
         |---|---:|---:|---:|"
    );
    for b in &baton {
        for bc in &b.churn {
            let p99 = |c: &ChurnRow| {
                let mut s = c.samples.clone();
                s.sort_unstable();
                q(&s, 0.99)
            };
            let best = |key: &dyn Fn(&ChurnRow) -> f64| {
                kp.iter()
                    .filter_map(|m| {
                        let c = m.churn.iter().find(|c| c.rate == bc.rate)?;
                        Some((key(c), m.mode.label()))
                    })
                    .filter(|(v, _)| v.is_finite() && *v > 0.0)
                    .min_by(|a, b| a.0.total_cmp(&b.0))
            };
            let lat = best(&p99).map_or("–".to_string(), |(v, l)| {
                format!("{:.3} ({l})", p99(bc) / v)
            });
            let cpu = best(&|c: &ChurnRow| c.cpu_per_1000).map_or("–".to_string(), |(v, l)| {
                format!("{:.3} ({l})", bc.cpu_per_1000 / v)
            });
            let _ = writeln!(
                out,
                "| {} | {}/s | {lat} | {cpu} |",
                b.mode.label(),
                bc.rate
            );
        }
    }
}
