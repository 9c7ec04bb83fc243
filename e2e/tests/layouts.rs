//! The agent built for map layout 2 (`--features layout-v2`, whatever this
//! test crate was built with) loads its own object, serves VIPs through it and
//! leaves layout-2 maps in the kernel.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use baton_agent::sys;
use baton_e2e::harness::{agent_bin_for_layout, parse_report, probe_bin, ProbeRun};
use baton_e2e::kernel::TestEnv;

/// A running agent of one layout; killed on drop.
struct Agent {
    bin: PathBuf,
    child: Child,
    run_dir: PathBuf,
    bpffs: PathBuf,
    log: PathBuf,
}

impl Agent {
    fn start(bin: PathBuf, env: &TestEnv, services: &Path) -> Self {
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
            .args(["--no-metrics", "--poll-ms", "50"])
            .stderr(Stdio::from(
                std::fs::File::create(env.path("agent.log")).expect("agent log"),
            ))
            .spawn()
            .expect("spawn agent");
        let a = Self {
            bin,
            child,
            run_dir,
            bpffs: env.pin_dir.clone(),
            log: env.path("agent.log"),
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

    fn wait_status(&self, ok: impl Fn(&serde_json::Value) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.run_dir.join("admin.sock").exists() {
                let out = self.cli("status");
                if out.status.success() {
                    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status");
                    if ok(&v) {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; agent log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "agent exit {status}: {}", self.log_text());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kernel view of a pinned map: (value size, max_entries).
fn pinned_map(env: &TestEnv, name: &str) -> (u32, u32) {
    let fd = sys::obj_get(&env.pin_dir.join("maps").join(name)).expect("pinned map");
    let info = sys::map_info(fd.as_fd()).expect("map info");
    (info.value_size, info.max_entries)
}

#[test]
fn layout_2_agent_serves_vips_from_layout_2_maps() {
    let bin = agent_bin_for_layout(2).unwrap_or_else(|e| panic!("layout 2 agent: {e}"));
    let env = TestEnv::new("layout-v2");
    let file = env.path("services.yaml");
    // One endpoint uses the service's target port, one a port override: the
    // override goes through layout 2's 16-bit `port` member.
    let services = "services:\n  - name: web\n    vips: [10.96.0.10]\n    ports:\n      - port: 80\n        targetPort: 8080\n    endpoints:\n      - address: 127.0.0.10\n      - {address: 127.0.0.11, port: 8081}\n";
    std::fs::write(&file, services).expect("write services");
    let agent = Agent::start(bin, &env, &file);

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
