//! The real `baton-agent` binary: serves VIPs from a services file, follows
//! edits, rejects a bad file while the old state keeps serving, answers
//! status/dump/verify and /metrics, and shuts down keeping or removing pins.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use baton_agent::sys;
use baton_e2e::harness::{agent_bin_for_layout, parse_report, probe_bin, ProbeRun};
use baton_e2e::kernel::TestEnv;

/// This build's agent (the layout the tests were compiled with).
fn agent_bin() -> PathBuf {
    agent_bin_for_layout(baton_ebpf::LAYOUT_VERSION).unwrap_or_else(|e| panic!("{e}"))
}

struct Agent {
    bin: PathBuf,
    child: Child,
    run_dir: PathBuf,
    bpffs: PathBuf,
}

impl Agent {
    fn start(env: &TestEnv, services: &Path, metrics: &str, extra: &[&str]) -> Self {
        Self::start_bin(agent_bin(), env, services, metrics, extra)
    }

    fn start_bin(
        bin: PathBuf,
        env: &TestEnv,
        services: &Path,
        metrics: &str,
        extra: &[&str],
    ) -> Self {
        let run_dir = env.path("run");
        let child = Command::new(&bin)
            .args(["run", "--services"])
            .arg(services)
            .arg("--cgroup")
            .arg(&env.cgroup)
            .arg("--bpffs")
            .arg(&env.pin_dir)
            .arg("--run-dir")
            .arg(&run_dir)
            .args(["--metrics-addr", metrics, "--poll-ms", "50"])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agent");
        let a = Self {
            bin,
            child,
            run_dir,
            bpffs: env.pin_dir.clone(),
        };
        a.wait_status(|s| s["last_sync"].is_object(), "first sync");
        a
    }

    fn cli(&self, cmd: &str) -> Output {
        Command::new(&self.bin)
            .args([cmd, "--run-dir"])
            .arg(&self.run_dir)
            .arg("--bpffs")
            .arg(&self.bpffs)
            .output()
            .expect("cli")
    }

    fn json(&self, cmd: &str) -> serde_json::Value {
        let out = self.cli(cmd);
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    }

    fn wait_status(
        &self,
        ok: impl Fn(&serde_json::Value) -> bool,
        what: &str,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.run_dir.join("admin.sock").exists() {
                let out = self.cli("status");
                if out.status.success() {
                    let v: serde_json::Value =
                        serde_json::from_slice(&out.stdout).expect("status json");
                    if ok(&v) {
                        return v;
                    }
                }
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(mut self) -> String {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let status = self.child.wait().expect("wait");
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        assert!(status.success(), "agent exit {status}: {err}");
        err
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const BACKENDS: [&str; 3] = ["127.0.0.10:8080", "127.0.0.11:8080", "127.0.0.12:8080"];

fn services(eps: &[&str]) -> String {
    let eps: String = eps
        .iter()
        .map(|e| format!("      - address: {e}\n"))
        .collect();
    format!("services:\n  - name: web\n    vips: [10.96.0.10]\n    ports:\n      - port: 80\n        targetPort: 8080\n    endpoints:\n{eps}")
}

fn traffic(env: &TestEnv) -> baton_e2e::report::Report {
    let mut run = ProbeRun::new()
        .cgroup(&env.cgroup)
        .target("10.96.0.10:80".parse().expect("addr"))
        .connects(200);
    for b in BACKENDS {
        run = run.backend(b.parse().expect("addr"));
    }
    let out = run
        .command(probe_bin().expect("probe"))
        .output()
        .expect("probe");
    parse_report(&out.stdout).expect("report")
}

fn identities(r: &baton_e2e::report::Report) -> Vec<String> {
    r.totals.identities.keys().cloned().collect()
}

fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("metrics connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read");
    body
}

#[test]
fn agent_serves_follows_edits_rejects_bad_files_and_tears_down() {
    let env = TestEnv::new("agent-run");
    let file = env.path("services.yaml");
    std::fs::write(&file, services(&["127.0.0.10", "127.0.0.11"])).expect("write services");
    let agent = Agent::start(&env, &file, "127.0.0.1:19095", &[]);

    let r = traffic(&env);
    assert_eq!(r.totals.ok, 200, "{:?}", r.totals);
    assert_eq!(identities(&r), ["127.0.0.10:8080", "127.0.0.11:8080"]);

    // An edit is applied as a diff.
    std::fs::write(&file, services(&["127.0.0.12"])).expect("edit");
    agent.wait_status(|s| s["endpoints"] == 1, "edit applied");
    assert_eq!(identities(&traffic(&env)), ["127.0.0.12:8080"]);

    // A broken file is rejected with file:line and the old state keeps serving.
    std::fs::write(&file, services(&["127.0.0.300"])).expect("break");
    let st = agent.wait_status(|s| s["source_error"].is_string(), "rejection");
    let msg = st["source_error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("services.yaml:8:") && msg.contains("address"),
        "{msg}"
    );
    let r = traffic(&env);
    assert_eq!(
        (r.totals.ok, identities(&r)),
        (200, vec!["127.0.0.12:8080".to_string()])
    );

    let v = agent.json("verify");
    assert_eq!(v["violations"], serde_json::json!([]), "{v}");
    let dump = agent.json("dump");
    assert_eq!(dump["services"][0]["name"], "web");
    let m = scrape("127.0.0.1:19095");
    assert!(m.starts_with("HTTP/1.1 200 OK"), "{m}");
    assert!(
        m.contains("baton_datapath_connects_total{result=\"redirected\"}"),
        "{m}"
    );
    assert!(m.contains("baton_source_errors_total 1"), "{m}");

    agent.stop();
    assert!(
        !env.pin_dir.join("maps/frontend").exists(),
        "full teardown removes pins"
    );
    let r = traffic(&env);
    assert_eq!(
        r.totals.ok, 0,
        "VIP no longer served after teardown: {:?}",
        r.totals
    );
}

#[test]
fn keep_datapath_survives_the_agent_and_a_restart_adopts_it() {
    let env = TestEnv::new("agent-keep");
    let file = env.path("services.yaml");
    std::fs::write(&file, services(&["127.0.0.10", "127.0.0.11"])).expect("write");
    let agent = Agent::start(&env, &file, "127.0.0.1:19096", &["--keep-datapath"]);
    agent.stop();
    // No agent running: the pinned links and maps keep serving.
    let r = traffic(&env);
    assert_eq!(
        (r.totals.ok, identities(&r).len()),
        (200, 2),
        "{:?}",
        r.totals
    );
    let out = Command::new(agent_bin())
        .arg("verify")
        .arg("--bpffs")
        .arg(&env.pin_dir)
        .arg("--run-dir")
        .arg(env.path("none"))
        .output()
        .expect("verify");
    assert!(
        out.status.success(),
        "offline verify: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    let again = Agent::start(&env, &file, "127.0.0.1:19096", &[]);
    let st = again.json("status");
    assert_eq!(
        (st["adopted_maps"].as_bool(), st["generation"].as_u64()),
        (Some(true), Some(2)),
        "{st}"
    );
    assert_eq!(
        st["last_sync"]["writes"], 0,
        "adoption rewrote nothing: {st}"
    );
    again.stop();
}

/// Kernel view of a pinned map: (value size, max_entries).
fn pinned_map(env: &TestEnv, name: &str) -> (u32, u32) {
    let fd = sys::obj_get(&env.pin_dir.join("maps").join(name)).expect("pinned map");
    let info = sys::map_info(fd.as_fd()).expect("map info");
    (info.value_size, info.max_entries)
}

/// The agent built for map layout 2 (`--features layout-v2`, whatever this
/// test crate was built with) loads its own object, serves VIPs through it
/// and leaves layout-2 maps in the kernel.
#[test]
fn layout_2_agent_serves_vips_from_layout_2_maps() {
    let bin = agent_bin_for_layout(2).unwrap_or_else(|e| panic!("layout 2 agent: {e}"));
    let env = TestEnv::new("layout-v2");
    let file = env.path("services.yaml");
    // One endpoint uses the service's target port, one a port override: the
    // override goes through layout 2's 16-bit `port` member.
    let services = "services:\n  - name: web\n    vips: [10.96.0.10]\n    ports:\n      - port: 80\n        targetPort: 8080\n    endpoints:\n      - address: 127.0.0.10\n      - {address: 127.0.0.11, port: 8081}\n";
    std::fs::write(&file, services).expect("write services");
    let agent = Agent::start_bin(bin, &env, &file, "127.0.0.1:0", &["--no-metrics"]);

    let st = agent.json("status");
    assert_eq!(st["layout_version"], 2, "{st}");
    // Only endpoint and backend differ from layout 1 (see docs/architecture.md).
    assert_eq!(pinned_map(&env, "endpoint"), (8, 262_144));
    assert_eq!(pinned_map(&env, "backend"), (24, 262_144));
    assert_eq!(pinned_map(&env, "frontend"), (4, 131_072));

    let mut run = ProbeRun::new()
        .cgroup(&env.cgroup)
        .target("10.96.0.10:80".parse().expect("addr"))
        .connects(200);
    for b in ["127.0.0.10:8080", "127.0.0.11:8081"] {
        run = run.backend(b.parse().expect("addr"));
    }
    let out = run
        .command(probe_bin().expect("probe"))
        .output()
        .expect("probe");
    let r = parse_report(&out.stdout).expect("report");
    assert_eq!(r.totals.ok, 200, "{:?}", r.totals);
    let seen: Vec<&str> = r.totals.identities.keys().map(String::as_str).collect();
    assert_eq!(seen, ["127.0.0.10:8080", "127.0.0.11:8081"]);

    let v = agent.json("verify");
    assert_eq!(v["violations"], serde_json::json!([]), "{v}");
    agent.stop();
}
