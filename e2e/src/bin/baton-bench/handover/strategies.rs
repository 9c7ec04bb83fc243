//! 4c: failed connects during an upgrade layout 1 → 2 for stop-and-start, a Kmesh-style
//! restart from pins and the handover.

use std::fmt::Write as _;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use baton_e2e::backend::Backends;

use super::lab::Lab;
use super::traffic::{Expected, Traffic, TrafficConfig};
use super::{traffic_svcs, POLL, TRAFFIC_INTERVAL, TRAFFIC_MARGIN, TRAFFIC_SVC_COUNT};
use crate::common::{backend_addr, big_eps, vip, BACKEND_PORT, EPS_PER_SVC, VIP_PORT};
use crate::report::list;

/// Runs 4c (it first resets the services file) and appends its table to `out`.
pub fn run(lab: &mut Lab<'_>, out: &mut String) -> Result<()> {
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
        let old = lab.spawn(1, &sc, &args, &[])?;
        lab.wait_synced(&old)?;
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
                let new = lab.spawn(2, &sc, &args, &[])?;
                lab.wait_synced(&new)?;
                new
            }
            Strategy::Handover => lab.hand_over(&old, 2, &sc, &["--poll-ms", POLL], &[])?.0,
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
