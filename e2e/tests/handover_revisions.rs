//! Handover between revisions: the agent of a pinned earlier commit
//! (`e2e/pinned-revision`, built by `scripts/build-pinned.sh`) and this
//! build's agent take the datapath from each other, in both directions and
//! across the map layout change, while a client connects to every service
//! VIP without pause. Every other handover test runs two builds of the same
//! source; this one proves that the messages, the manifest and the map
//! migration of released agents still fit the current code.
//!
//! Chain (revision, layout): pinned 1 → current 2 → pinned 1 → current 1 →
//! pinned 2 → current 1: old→new and new→old, each with layouts 1→2, 2→1
//! and (old→new) 1→1. After every commit: the old agent exited 0, the new one
//! serves with its layout and reports a handover from the old layout,
//! `verify` is clean, no staging directory is left. At the end: 0 failed and
//! 0 misrouted connects, every held connection alive.
//!
//! The pinned agents' admin answers are read as this build's typed answers
//! (`baton_api::admin`): an answer of an earlier revision must still read,
//! its fields added since being optional (`Status::handover_protocol`).
//! Were that to change, read the pinned agents' answers as raw JSON here.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use baton_api::admin::{Status, Via};
use baton_e2e::kit::bins::{agent_bin, pinned_agent_bin, pinned_revision};
use baton_e2e::kit::{Agent, AgentCmd, ProbeProcess, ProbeRun, Sandbox};

/// Connects per second, spread over every VIP:port.
const RATE: f64 = 2_000.0;
/// Long-lived connections opened before the first handover.
const HOLD: u64 = 8;
/// Services that only fill the maps (4 endpoints each), so each layout
/// change migrates a few thousand entries.
const BULK: usize = 300;
/// Longest wait for an agent to serve or to exit.
const WAIT: Duration = Duration::from_secs(30);

/// Which build an agent comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rev {
    Pinned,
    Current,
}

/// The agent of `layout` from `rev`; the pinned one fails (never skips)
/// when it is missing or built from another commit.
fn bin(rev: Rev, layout: u32) -> PathBuf {
    match rev {
        Rev::Pinned => pinned_agent_bin(layout),
        Rev::Current => agent_bin(layout),
    }
    .unwrap_or_else(|e| panic!("the {rev:?} agent of layout {layout}: {e}"))
}

/// One service of the file; its pool is disjoint from every other's, so a
/// misrouted connect names a backend outside it.
struct Svc {
    name: String,
    vip: IpAddr,
    policy: &'static str,
    /// (address, endpoint port or 0 for the target port, priority).
    endpoints: Vec<(IpAddr, u16, u8)>,
    probed: bool,
}

const PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip literal")
}

/// IPv4 and IPv6, per-endpoint ports (the backend value's `port` changes
/// width between layouts), a failover service (the endpoint key's `prio`
/// moves between layouts; reaching priority 1 is a misroute) and bulk.
fn services() -> Vec<Svc> {
    let svc = |name: &str, vip: &str, policy, endpoints: Vec<(&str, u16, u8)>| Svc {
        name: name.into(),
        vip: ip(vip),
        policy,
        endpoints: endpoints
            .into_iter()
            .map(|(a, p, prio)| (ip(a), p, prio))
            .collect(),
        probed: true,
    };
    let mut all = vec![
        svc(
            "web",
            "10.96.0.10",
            "random",
            vec![
                ("127.0.1.10", 0, 0),
                ("127.0.1.11", 0, 0),
                ("127.0.1.12", 0, 0),
            ],
        ),
        svc(
            "ports",
            "10.96.0.12",
            "random",
            vec![
                ("127.0.3.10", 9001, 0),
                ("127.0.3.10", 9002, 0),
                ("127.0.3.11", 0, 0),
            ],
        ),
        svc(
            "v6",
            "fd00::10",
            "random",
            vec![("::1", 9101, 0), ("::1", 9102, 0)],
        ),
        svc(
            "fo",
            "10.96.0.13",
            "failover",
            vec![
                ("127.0.4.10", 0, 0),
                ("127.0.4.11", 0, 0),
                ("127.0.4.20", 0, 1),
            ],
        ),
    ];
    for i in 0..BULK {
        let addr = |k: usize| ip(&format!("10.200.{}.{}", k / 250, k % 250 + 1));
        all.push(Svc {
            name: format!("bulk-{i}"),
            vip: ip(&format!("10.97.{}.{}", i / 250, i % 250 + 1)),
            policy: "random",
            endpoints: (0..4).map(|j| (addr(i * 4 + j), 0, 0)).collect(),
            probed: false,
        });
    }
    all
}

fn yaml(services: &[Svc]) -> String {
    let mut y = String::from("services:\n");
    for s in services {
        y.push_str(&format!(
            "  - name: {}\n    vips: [\"{}\"]\n    policy: {}\n    ports:\n      - {{port: {PORT}, targetPort: {TARGET_PORT}}}\n    endpoints:\n",
            s.name, s.vip, s.policy
        ));
        for (a, p, prio) in &s.endpoints {
            y.push_str(&format!(
                "      - {{address: \"{a}\", port: {p}, priority: {prio}}}\n"
            ));
        }
    }
    y
}

fn backend(addr: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(addr, if port == 0 { TARGET_PORT } else { port })
}

/// Backends a connect to the service may reach: every endpoint for
/// `random`, the lowest priority for `failover`.
fn allowed(s: &Svc) -> BTreeSet<String> {
    let lowest = s.endpoints.iter().map(|e| e.2).min().unwrap_or(0);
    s.endpoints
        .iter()
        .filter(|e| s.policy == "random" || e.2 == lowest)
        .map(|&(a, p, _)| backend(a, p).to_string())
        .collect()
}

/// One agent of the chain and the context to drive it.
struct World {
    env: Sandbox,
    services: PathBuf,
    run_dir: PathBuf,
    seq: u32,
}

impl World {
    fn spawn(&mut self, rev: Rev, layout: u32) -> Agent {
        self.seq += 1;
        let log = self
            .env
            .path(&format!("agent-{}-{rev:?}-v{layout}.log", self.seq));
        AgentCmd::new(
            &bin(rev, layout),
            &self.services,
            self.env.cgroup(),
            self.env.pin_dir(),
            &self.run_dir,
        )
        .poll_ms(50)
        .name(format!("the {rev:?} agent of layout {layout}"))
        .layout(layout)
        .spawn(&log)
        .unwrap_or_else(|e| panic!("starting the {rev:?} agent of layout {layout}: {e}"))
    }

    fn assert_verify_clean(&self, when: &str) {
        let v = baton_e2e::kit::agent::verify(&self.run_dir)
            .unwrap_or_else(|e| panic!("{when}: verify: {e}"));
        assert!(v.is_clean(), "{when}: verify found violations: {v:?}");
    }

    fn staging_dirs(&self) -> Vec<String> {
        std::fs::read_dir(self.env.pin_dir())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("staging-"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[test]
fn handovers_between_the_pinned_revision_and_this_one_under_traffic() {
    let chain = [
        (Rev::Pinned, 1),
        (Rev::Current, 2),
        (Rev::Pinned, 1),
        (Rev::Current, 1),
        (Rev::Pinned, 2),
        (Rev::Current, 1),
    ];
    // Every binary first: a missing pinned build fails here, before any setup.
    for &(rev, layout) in &chain {
        bin(rev, layout);
    }
    let svcs = services();
    let env = Sandbox::new("ho-rev").unwrap();
    let services = env.path("services.yaml");
    std::fs::write(&services, yaml(&svcs)).expect("write services file");
    let run_dir = env.path("run");
    let mut w = World {
        env,
        services,
        run_dir,
        seq: 0,
    };

    let (rev, layout) = chain[0];
    let mut current = w.spawn(rev, layout);
    let _: Status = current
        .wait_synced(svcs.len() as u64, WAIT)
        .unwrap_or_else(|e| panic!("first agent: {e}"));
    w.assert_verify_clean("first agent");

    let mut run = ProbeRun::new()
        .cgroup(w.env.cgroup())
        .duration(Duration::from_secs(180))
        .rate(RATE)
        .concurrency(4)
        .hold(HOLD);
    let mut backends = BTreeSet::new();
    for s in svcs.iter().filter(|s| s.probed) {
        run = run.target(SocketAddr::new(s.vip, PORT));
        backends.extend(s.endpoints.iter().map(|&(a, p, _)| backend(a, p)));
    }
    for b in backends {
        run = run.backend(b);
    }
    let probe = ProbeProcess::start(run, w.env.dir(), "traffic", Duration::from_secs(20)).unwrap();
    // Traffic through the first agent before anything changes hands.
    std::thread::sleep(Duration::from_millis(500));

    let mut from = chain[0];
    for &(rev, layout) in &chain[1..] {
        let when = format!(
            "{:?} agent (layout {}) → {rev:?} agent (layout {layout})",
            from.0, from.1
        );
        let next = w.spawn(rev, layout);
        let exit = current
            .wait_exit(WAIT)
            .unwrap_or_else(|e| panic!("{when}: the old agent did not hand over: {e}"));
        assert!(
            exit.success(),
            "{when}: old agent exit {exit}; log:\n{}\nnew agent log:\n{}",
            current.log_tail(),
            next.log_tail()
        );
        let st = next
            .wait_status(&format!("{when}: serving"), WAIT, |s: &Status| {
                s.last_sync.is_some()
            })
            .unwrap_or_else(|e| panic!("{when}: {e}"));
        assert_eq!(st.layout_version, layout, "{when}: {st:?}");
        assert!(!st.frozen, "{when}: {st:?}");
        let ho = st
            .handover
            .as_ref()
            .unwrap_or_else(|| panic!("{when}: no handover in {st:?}"));
        assert_eq!(ho.via, Via::Handover, "{when}: {st:?}");
        assert_eq!(ho.from_layout, from.1, "{when}: {st:?}");
        assert_eq!(st.services, svcs.len() as u64, "{when}: {st:?}");
        w.assert_verify_clean(&when);
        assert_eq!(w.staging_dirs(), Vec::<String>::new(), "{when}");
        eprintln!(
            "{when}: handover_us {} freeze_us {} migrated {} entries_copied {}",
            ho.handover_us, ho.freeze_us, ho.maps.migrated, ho.maps.entries_copied
        );
        current = next;
        from = (rev, layout);
        // Traffic through this agent alone for a moment.
        std::thread::sleep(Duration::from_millis(300));
    }

    // Traffic through the last agent too, then the verdict.
    std::thread::sleep(Duration::from_millis(500));
    let report = probe.report(Duration::from_secs(30)).unwrap();
    let mut problems = Vec::new();
    if report.totals.failed != 0 {
        problems.push(format!(
            "{} failed connects of {}: {:?}, first: {:?}",
            report.totals.failed,
            report.totals.attempted,
            report.totals.errors,
            report.totals.first_error
        ));
    }
    for s in svcs.iter().filter(|s| s.probed) {
        let target = SocketAddr::new(s.vip, PORT).to_string();
        let Some(t) = report.target(&target) else {
            problems.push(format!("{target} not in the report"));
            continue;
        };
        if t.ok == 0 {
            problems.push(format!("{target}: no successful connect"));
        }
        let ok = allowed(s);
        let wrong: Vec<_> = t
            .identities
            .iter()
            .filter(|(id, _)| !ok.contains(*id))
            .collect();
        if !wrong.is_empty() {
            problems.push(format!("{target}: misrouted to {wrong:?}"));
        }
    }
    if let Some(h) = &report.hold {
        if h.held != h.requested || h.alive != h.held {
            problems.push(format!(
                "held connections: requested {}, opened {}, alive {}; dead: {:?}",
                h.requested, h.held, h.alive, h.dead
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "traffic across the handovers: {problems:#?}"
    );
    eprintln!(
        "{} handovers between {} and this build: {} connects ({:.0}/s), 0 failed, 0 misrouted",
        chain.len() - 1,
        pinned_revision().unwrap(),
        report.totals.attempted,
        report.achieved_rate
    );
    current.terminate(Duration::from_secs(20));
}
