//! The real `baton-agent` binary: serves VIPs from a services file, follows
//! edits, rejects a bad file while the old state keeps serving, answers
//! status/dump/verify and /metrics, and shuts down keeping or removing pins.

use std::os::fd::AsFd;
use std::time::Duration;

use baton_agent::sys;
use baton_api::admin::{Dump, Status, Verify};
use baton_e2e::kit::{agent, agent_bin, Agent, Host, Opts, ProbeRun};

/// The layout this build's agent has.
const LAYOUT: u32 = baton_ebpf::LAYOUT_VERSION;

/// A host serving `services` with metrics on `metrics` (in its netns), if any.
fn host(name: &str, services: &str, metrics: Option<&str>) -> Host {
    let mut h = Host::new(name, services).unwrap();
    h.metrics = metrics.map(str::to_owned);
    h
}

/// Starts this build's agent with `extra` arguments, up to its first sync.
fn start(host: &Host, extra: &[&str]) -> Agent {
    host.start(LAYOUT, &Opts::default().with_args(extra))
        .unwrap()
}

/// Waits until the agent's status satisfies `ok`.
fn wait(agent: &Agent, what: &str, ok: impl Fn(&Status) -> bool) -> Status {
    agent
        .wait_status(what, Duration::from_secs(20), ok)
        .unwrap()
}

const BACKENDS: [&str; 3] = ["127.0.0.10:8080", "127.0.0.11:8080", "127.0.0.12:8080"];

fn services(eps: &[&str]) -> String {
    let eps: String = eps
        .iter()
        .map(|e| format!("      - address: {e}\n"))
        .collect();
    format!("services:\n  - name: web\n    vips: [10.96.0.10]\n    ports:\n      - port: 80\n        targetPort: 8080\n    endpoints:\n{eps}")
}

fn traffic(host: &Host) -> baton_e2e::report::Report {
    let mut run = ProbeRun::new()
        .cgroup(host.sandbox.cgroup())
        .target("10.96.0.10:80".parse().expect("addr"))
        .connects(200);
    for b in BACKENDS {
        run = run.backend(b.parse().expect("addr"));
    }
    run.run().unwrap()
}

fn identities(r: &baton_e2e::report::Report) -> Vec<String> {
    r.totals.identities.keys().cloned().collect()
}

#[test]
fn agent_serves_follows_edits_rejects_bad_files_and_tears_down() {
    let host = host(
        "agent-run",
        &services(&["127.0.0.10", "127.0.0.11"]),
        Some("127.0.0.1:19095"),
    );
    let file = &host.services;
    let agent = start(&host, &[]);

    let r = traffic(&host);
    assert_eq!(r.totals.ok, 200, "{:?}", r.totals);
    assert_eq!(identities(&r), ["127.0.0.10:8080", "127.0.0.11:8080"]);

    // An edit is applied as a diff.
    std::fs::write(file, services(&["127.0.0.12"])).expect("edit");
    wait(&agent, "edit applied", |s| s.endpoints == 1);
    assert_eq!(identities(&traffic(&host)), ["127.0.0.12:8080"]);

    // A broken file is rejected with file:line and the old state keeps serving.
    std::fs::write(file, services(&["127.0.0.300"])).expect("break");
    let st = wait(&agent, "rejection", |s| s.source_error.is_some());
    let msg = st.source_error.unwrap_or_default();
    assert!(
        msg.contains("services.yaml:8:") && msg.contains("address"),
        "{msg}"
    );
    let r = traffic(&host);
    assert_eq!(
        (r.totals.ok, identities(&r)),
        (200, vec!["127.0.0.12:8080".to_string()])
    );

    let v: Verify = agent.cli_json("verify").unwrap();
    assert!(v.is_clean(), "{v:?}");
    let dump: Dump = agent.cli_json("dump").unwrap();
    let names: Vec<&str> = dump.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["web"]);
    let m = host.scrape().unwrap();
    assert!(m.starts_with("HTTP/1.1 200 OK"), "{m}");
    assert!(
        m.contains("baton_datapath_connects_total{result=\"redirected\"}"),
        "{m}"
    );
    assert!(m.contains("baton_source_errors_total 1"), "{m}");

    agent.stop().unwrap();
    assert!(
        !host.sandbox.pin_dir().join("maps/frontend").exists(),
        "full teardown removes pins"
    );
    let r = traffic(&host);
    assert_eq!(
        r.totals.ok, 0,
        "VIP no longer served after teardown: {:?}",
        r.totals
    );
}

#[test]
fn keep_datapath_survives_the_agent_and_a_restart_adopts_it() {
    let host = host(
        "agent-keep",
        &services(&["127.0.0.10", "127.0.0.11"]),
        Some("127.0.0.1:19096"),
    );
    let agent = start(&host, &["--keep-datapath"]);
    agent.stop().unwrap();
    // No agent running: the pinned links and maps keep serving.
    let r = traffic(&host);
    assert_eq!(
        (r.totals.ok, identities(&r).len()),
        (200, 2),
        "{:?}",
        r.totals
    );
    let out = agent::cli(
        &agent_bin(LAYOUT).unwrap(),
        "verify",
        &host.sandbox.path("none"),
        host.sandbox.pin_dir(),
    )
    .unwrap();
    assert!(
        out.status.success(),
        "offline verify: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    let again = start(&host, &[]);
    let st: Status = again.cli_json("status").unwrap();
    assert_eq!((st.adopted_maps, st.generation), (true, 2), "{st:?}");
    assert_eq!(
        st.last_sync.as_ref().map(|l| l.writes),
        Some(0),
        "adoption rewrote nothing: {st:?}"
    );
    again.stop().unwrap();
}

/// Kernel view of a pinned map: (value size, max_entries).
fn pinned_map(host: &Host, name: &str) -> (u32, u32) {
    let fd = sys::obj_get(&host.sandbox.pin_dir().join("maps").join(name)).expect("pinned map");
    let info = sys::map_info(fd.as_fd()).expect("map info");
    (info.value_size, info.max_entries)
}

/// The agent built for map layout 2 (`--features layout-v2`, whatever this
/// test crate was built with) loads its own object, serves VIPs through it
/// and leaves layout-2 maps in the kernel.
#[test]
fn layout_2_agent_serves_vips_from_layout_2_maps() {
    // One endpoint uses the service's target port, one a port override: the
    // override goes through layout 2's 16-bit `port` member.
    let services = "services:\n  - name: web\n    vips: [10.96.0.10]\n    ports:\n      - port: 80\n        targetPort: 8080\n    endpoints:\n      - address: 127.0.0.10\n      - {address: 127.0.0.11, port: 8081}\n";
    let host = host("layout-v2", services, None);
    let agent = host.start(2, &Opts::default()).unwrap();

    let st: Status = agent.cli_json("status").unwrap();
    assert_eq!(st.layout_version, 2, "{st:?}");
    // Only endpoint and backend differ from layout 1 (see docs/architecture.md).
    assert_eq!(pinned_map(&host, "endpoint"), (8, 262_144));
    assert_eq!(pinned_map(&host, "backend"), (24, 262_144));
    assert_eq!(pinned_map(&host, "frontend"), (4, 131_072));

    let mut run = ProbeRun::new()
        .cgroup(host.sandbox.cgroup())
        .target("10.96.0.10:80".parse().expect("addr"))
        .connects(200);
    for b in ["127.0.0.10:8080", "127.0.0.11:8081"] {
        run = run.backend(b.parse().expect("addr"));
    }
    let r = run.run().unwrap();
    assert_eq!(r.totals.ok, 200, "{:?}", r.totals);
    let seen: Vec<&str> = r.totals.identities.keys().map(String::as_str).collect();
    assert_eq!(seen, ["127.0.0.10:8080", "127.0.0.11:8081"]);

    let v: Verify = agent.cli_json("verify").unwrap();
    assert!(v.is_clean(), "{v:?}");
    agent.stop().unwrap();
}
