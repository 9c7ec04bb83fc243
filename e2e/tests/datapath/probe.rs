//! Runs the real `baton-probe` binary (needs root: it unshares a network namespace).
//! No BPF is involved, so targets are the backends themselves.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use baton_e2e::kit::probe::{parse_report, ProbeRun};
use baton_e2e::kit::sandbox::{cgroup_root, CgroupDir};
use baton_e2e::kit::wait::wait_for_file;
use baton_e2e::report::{FailureKind, Report};

/// The probe under test.
fn probe() -> PathBuf {
    baton_e2e::kit::probe_bin().unwrap()
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "baton-e2e probe tests need root (network namespaces, cgroups)"
    );
}

fn run_ok(cmd: &mut Command) -> Report {
    require_root();
    let out = cmd.output().expect("spawn baton-probe");
    assert!(
        out.status.success(),
        "baton-probe failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_report(&out.stdout)
        .unwrap_or_else(|e| panic!("bad report ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn tmp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("baton-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("tmp dir");
    dir
}

fn assert_all_failed(r: &Report, target: &str, kind: FailureKind) {
    let t = r.target(target).expect("target in report");
    assert!(t.attempted > 0);
    assert_eq!(t.ok, 0, "{target}: {t:?}");
    assert_eq!(t.failed, t.attempted);
    assert_eq!(t.errors.get(kind), t.attempted, "{target}: {t:?}");
    assert!(t.identities.is_empty());
    assert_eq!(t.latency.count, 0);
}

#[test]
fn connects_reach_the_backends_in_a_private_netns() {
    let r = run_ok(Command::new(probe()).args([
        "run",
        "--backend",
        "127.0.0.10:8080",
        "--backend",
        "127.0.0.11:8080",
        "--backend",
        "[::1]:9001",
        "--target",
        "127.0.0.10:8080",
        "--target",
        "[::1]:9001",
        "--connects",
        "200",
    ]));
    assert!(r.netns);
    assert_eq!(
        r.backends,
        ["127.0.0.10:8080", "127.0.0.11:8080", "[::1]:9001"]
    );
    assert_eq!(
        (r.totals.attempted, r.totals.ok, r.totals.failed),
        (200, 200, 0)
    );
    assert!(!r.stopped_early);
    assert!(r.hold.is_none());
    for target in ["127.0.0.10:8080", "[::1]:9001"] {
        let t = r.target(target).expect("target");
        assert_eq!((t.attempted, t.ok, t.failed), (100, 100, 0), "{t:?}");
        assert_eq!(t.identities.len(), 1, "{t:?}");
        assert_eq!(t.identities.get(target), Some(&100), "{t:?}");
        let l = t.latency;
        assert_eq!(l.count, 100);
        assert!(l.min_ns > 0 && l.min_ns <= l.p50_ns, "{l:?}");
        assert!(l.p50_ns <= l.p90_ns && l.p90_ns <= l.p99_ns && l.p99_ns <= l.max_ns);
        assert!(l.max_ns < 2_000_000_000, "{l:?}");
    }
    assert_eq!(r.totals.identities.values().sum::<u64>(), 200);
}

#[test]
fn target_without_listener_is_refused() {
    let r = run_ok(Command::new(probe()).args([
        "run",
        "--backend",
        "127.0.0.10:8080",
        "--target",
        "127.0.0.10:8081",
        "--target",
        "[::1]:9002",
        "--connects",
        "50",
    ]));
    assert_all_failed(&r, "127.0.0.10:8081", FailureKind::Refused);
    assert_all_failed(&r, "[::1]:9002", FailureKind::Refused);
    assert_eq!(r.totals.failed, 50);
    assert!(r.totals.first_error.is_some());
}

/// The sandbox proof: outside addresses have no route inside the probe's netns,
/// so an un-rewritten VIP fails locally instead of leaving the machine.
#[test]
fn outside_addresses_are_unreachable_in_the_sandbox() {
    let r = run_ok(Command::new(probe()).args([
        "run",
        "--backend",
        "127.0.0.10:8080",
        "--target",
        "10.255.255.1:80",
        "--target",
        "[2001:db8::1]:80",
        "--target",
        "127.0.0.10:8080",
        "--connects",
        "30",
        "--connect-timeout-ms",
        "500",
    ]));
    assert_all_failed(&r, "10.255.255.1:80", FailureKind::Unreachable);
    assert_all_failed(&r, "[2001:db8::1]:80", FailureKind::Unreachable);
    let ok = r.target("127.0.0.10:8080").expect("target");
    assert_eq!((ok.attempted, ok.ok), (10, 10));
}

/// `--local-backends`: backends on pod-like addresses (the API server refuses
/// loopback endpoint addresses) each become a /32 on `lo` inside the netns
/// only, so the rest of 10/8 stays unreachable and the host's `lo` is
/// untouched. (Without the flag such a backend is a setup error, below.)
#[test]
fn pod_ip_backends_are_local_to_the_sandbox_only() {
    let r = run_ok(Command::new(probe()).args([
        "run",
        "--local-backends",
        "--backend",
        "10.244.0.11:8080",
        "--backend",
        "10.244.0.12:8080",
        "--backend",
        "10.244.0.12:8081",
        "--target",
        "10.244.0.11:8080",
        "--target",
        "10.244.0.12:8081",
        "--target",
        "10.244.0.13:8080",
        "--connects",
        "30",
        "--connect-timeout-ms",
        "500",
    ]));
    for target in ["10.244.0.11:8080", "10.244.0.12:8081"] {
        let t = r.target(target).expect("target");
        assert_eq!((t.attempted, t.ok), (10, 10), "{t:?}");
        assert_eq!(t.identities.get(target), Some(&10), "{t:?}");
    }
    assert_all_failed(&r, "10.244.0.13:8080", FailureKind::Unreachable);
    let host: Vec<_> = nix::ifaddrs::getifaddrs()
        .expect("getifaddrs")
        .filter_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
        .filter(|ip| ip.octets()[..2] == [10, 244])
        .collect();
    assert!(host.is_empty(), "the host got sandbox addresses: {host:?}");
}

#[test]
fn held_connections_stay_alive_through_the_load() {
    let r = run_ok(
        &mut ProbeRun::new()
            .backend("127.0.0.10:8080".parse().expect("addr"))
            .backend("[::1]:9001".parse().expect("addr"))
            .target("127.0.0.10:8080".parse().expect("addr"))
            .target("[::1]:9001".parse().expect("addr"))
            .connects(2_000)
            .concurrency(8)
            .hold(40)
            .command(probe()),
    );
    assert_eq!(r.totals.ok, 2_000, "{:?}", r.totals);
    let h = r.hold.expect("hold report");
    assert_eq!((h.requested, h.held, h.open_failed), (40, 40, 0));
    assert_eq!((h.alive, h.dead_count), (40, 0), "{:?}", h.dead);
    assert_eq!(h.identities.get("127.0.0.10:8080"), Some(&20));
    assert_eq!(h.identities.get("[::1]:9001"), Some(&20));
}

#[test]
fn duration_mode_is_paced() {
    let r = run_ok(Command::new(probe()).args([
        "run",
        "--backend",
        "127.0.0.10:8080",
        "--target",
        "127.0.0.10:8080",
        "--duration-ms",
        "1000",
        "--rate",
        "300",
        "--concurrency",
        "2",
    ]));
    assert!(!r.stopped_early);
    assert!(
        (250..=301).contains(&r.totals.attempted),
        "attempted {}",
        r.totals.attempted
    );
    assert_eq!(r.totals.failed, 0);
    assert!(
        r.elapsed_ms >= 900 && r.elapsed_ms < 3_000,
        "{}",
        r.elapsed_ms
    );
}

#[test]
fn stop_file_ends_a_long_run_and_ready_file_comes_first() {
    require_root();
    let dir = tmp_dir("stop");
    let (ready, stop) = (dir.join("ready"), dir.join("stop"));
    let child = ProbeRun::new()
        .backend("127.0.0.10:8080".parse().expect("addr"))
        .target("127.0.0.10:8080".parse().expect("addr"))
        .duration(Duration::from_secs(60))
        .rate(500.0)
        .hold(4)
        .ready_file(&ready)
        .stop_file(&stop)
        .command(probe())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    assert!(
        wait_for_file(&ready, Duration::from_secs(10)),
        "no ready file"
    );
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&ready).expect("read ready")).expect("ready json");
    assert_eq!(info["backends"][0], "127.0.0.10:8080");
    assert_eq!(info["held"], 4);
    assert_eq!(info["pid"], child.id());
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    std::fs::write(&stop, b"").expect("stop file");
    let out = child.wait_with_output().expect("wait");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        t0.elapsed()
    );
    let r = report_of(&out);
    assert!(r.stopped_early);
    assert!(
        r.totals.attempted > 50 && r.totals.attempted < 10_000,
        "{:?}",
        r.totals
    );
    assert_eq!(r.totals.failed, 0);
    let h = r.hold.expect("hold");
    assert_eq!((h.held, h.alive), (4, 4));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn joins_the_given_cgroup() {
    require_root();
    let cgroup = CgroupDir::create(
        &cgroup_root().unwrap(),
        &format!("baton-e2e-probe-{}", std::process::id()),
    )
    .unwrap();
    let cg = cgroup.path().to_owned();
    let dir = tmp_dir("cgroup");
    let (ready, stop) = (dir.join("ready"), dir.join("stop"));
    let child = ProbeRun::new()
        .cgroup(&cg)
        .backend("127.0.0.10:8080".parse().expect("addr"))
        .target("127.0.0.10:8080".parse().expect("addr"))
        .duration(Duration::from_secs(30))
        .rate(100.0)
        .ready_file(&ready)
        .stop_file(&stop)
        .command(probe())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    assert!(
        wait_for_file(&ready, Duration::from_secs(10)),
        "no ready file"
    );
    let procs = std::fs::read_to_string(cg.join("cgroup.procs")).expect("procs");
    std::fs::write(&stop, b"").expect("stop file");
    let out = child.wait_with_output().expect("wait");
    let pid = out_pid(&ready);
    drop(cgroup);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        procs.lines().any(|l| l.trim() == pid.to_string()),
        "pid {pid} not in {procs:?}"
    );
    let r = report_of(&out);
    assert_eq!(r.cgroup.as_deref(), Some(cg.to_string_lossy().as_ref()));
    assert!(r.totals.ok > 0 && r.totals.failed == 0, "{:?}", r.totals);
}

#[test]
fn setup_errors_exit_non_zero_with_a_message() {
    require_root();
    // Not a local address inside the fresh netns.
    let out = Command::new(probe())
        .args([
            "run",
            "--backend",
            "10.1.2.3:80",
            "--target",
            "10.1.2.3:80",
            "--connects",
            "1",
        ])
        .output()
        .expect("spawn");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("backend 10.1.2.3:80") && err.contains("bind"),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    // A directory that is not a cgroup.
    let dir = tmp_dir("notcg");
    let out = ProbeRun::new()
        .cgroup(&dir)
        .target("127.0.0.1:1".parse().expect("addr"))
        .connects(1)
        .command(probe())
        .output()
        .expect("spawn");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("joining cgroup"), "{err}");
    assert!(
        !dir.join("cgroup.procs").exists(),
        "must not create cgroup.procs"
    );
    let _ = std::fs::remove_dir_all(dir);

    // Neither --connects nor --duration-ms.
    let out = Command::new(probe())
        .args(["run", "--target", "127.0.0.1:1"])
        .output()
        .expect("spawn");
    assert!(!out.status.success());
}

#[test]
fn serve_answers_until_sigterm() {
    require_root();
    let dir = tmp_dir("serve");
    let ready = dir.join("ready");
    // Port 0 on the host loopback: no netns, nothing fixed that could collide.
    let child = Command::new(probe())
        .args(["serve", "--backend", "127.0.0.1:0", "--ready-file"])
        .arg(&ready)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    assert!(
        wait_for_file(&ready, Duration::from_secs(10)),
        "no ready file"
    );
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&ready).expect("read")).expect("json");
    let addr: std::net::SocketAddr = info["backends"][0]
        .as_str()
        .expect("backend")
        .parse()
        .expect("addr");
    let (identity, latency) =
        baton_e2e::connect_once(addr, Duration::from_secs(2)).expect("connect_once");
    assert_eq!(identity, addr.to_string());
    assert!(latency > Duration::ZERO);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("kill");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn report_of(out: &Output) -> Report {
    assert!(
        out.status.success(),
        "baton-probe failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_report(&out.stdout).expect("report json")
}

fn out_pid(ready: &Path) -> u64 {
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ready).expect("read ready")).expect("json");
    info["pid"].as_u64().expect("pid")
}
