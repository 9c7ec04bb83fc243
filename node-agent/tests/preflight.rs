//! `baton-agent preflight` as a process, against a real agent on the real
//! kernel: it must change nothing (pins, links, what is attached to the
//! cgroup, every map's contents, the running agent), fail cleanly when the
//! kernel's verifier rejects a program, and plan a layout change exactly
//! (the layout-2 build against a layout-1 agent).
//!
//! Each test has its own cgroup (a child of the cgroup v2 hierarchy, never
//! the root), its own bpffs mount and run directory, all removed on drop
//! (also when the test fails): the e2e kit's sandbox guards, and an agent
//! guard that kills the agent first.
//!
//! Needs root, `bpftool` (scripts/deps.sh) and, for the layout test, the
//! other layout's agent (`cargo xtask agent-v2`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use baton_agent::admin::{client, Request};
use baton_agent::agent::admin_socket;
use baton_agent::datapath::link_pin_path;
use baton_agent::maps::set::map_pin_path;
use baton_agent::migrate::{dump, MapLayout, RawEntry};
use baton_agent::sys::{self, AttachType};
use baton_api::admin::{Dump, Status};
use baton_api::preflight::{MapAction, Outcome, Report, Summary, JSON_PREFIX, SUMMARY_MAX_BYTES};
use baton_e2e::kit::bins::{agent_bin, other_layout};
use baton_e2e::kit::sandbox::{cgroup_root, BpffsMount, CgroupDir};
use serde_json::Value;

/// Services in the test's services file, and endpoints (one backend each) per service.
const SERVICES: usize = 60;
const ENDPOINTS: usize = 7;

/// The agent of this build (layout `baton_ebpf::LAYOUT_VERSION`), with test hooks.
fn own_agent() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_baton-agent"))
}

/// A running `baton-agent run`, SIGKILLed and reaped on drop.
struct AgentProc {
    child: Child,
    log: PathBuf,
}

impl AgentProc {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One test's node: agent (dropped first), bpffs, cgroup, scratch directory.
struct Node {
    agent: Option<AgentProc>,
    bpffs: BpffsMount,
    cgroup: CgroupDir,
    run_dir: PathBuf,
    services: PathBuf,
    tmp: tempfile::TempDir,
}

impl Node {
    fn new(name: &str) -> Node {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cgroup = CgroupDir::create(
            &cgroup_root().expect("cgroup v2 hierarchy"),
            &format!("baton-preflight-{name}-{}", std::process::id()),
        )
        .expect("test cgroup");
        let bpffs = BpffsMount::mount(&tmp.path().join("bpf")).expect("bpffs");
        let run_dir = tmp.path().join("run");
        std::fs::create_dir_all(&run_dir).expect("run dir");
        let services = tmp.path().join("services.yaml");
        std::fs::write(&services, services_yaml()).expect("services file");
        Node {
            agent: None,
            bpffs,
            cgroup,
            run_dir,
            services,
            tmp,
        }
    }

    fn pin_dir(&self) -> &Path {
        self.bpffs.path()
    }

    /// Starts `baton-agent run` (this build) and waits until it has
    /// programmed every service.
    fn start_agent(&mut self) -> Status {
        let log = self.tmp.path().join("agent.log");
        let child = Command::new(own_agent())
            .arg("run")
            .arg("--bpffs")
            .arg(self.pin_dir())
            .arg("--run-dir")
            .arg(&self.run_dir)
            .arg("--cgroup")
            .arg(self.cgroup.path())
            .arg("--services")
            .arg(&self.services)
            .args(["--no-metrics", "--poll-ms", "50"])
            .env_remove("BATON_SLOT")
            .env_remove("BATON_TEST_REJECT_PROGRAMS")
            .env_remove("BATON_TEST_BREAK_PROGRAM")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("agent log"))
            .spawn()
            .expect("starting baton-agent run");
        self.agent = Some(AgentProc { child, log });
        self.wait_status(|s| s.services == SERVICES as u64 && s.syncs > 0, "serving")
    }

    fn status(&self) -> Option<Status> {
        client::status(&admin_socket(&self.run_dir)).ok()
    }

    fn wait_status(&self, ok: impl Fn(&Status) -> bool, what: &str) -> Status {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.status().filter(&ok) {
                return s;
            }
            let log = self
                .agent
                .as_ref()
                .map(|a| a.log_text())
                .unwrap_or_default();
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "agent not {what} after 30 s; status {:?}; log:\n{log}",
                self.status()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `bin preflight` for this node with `extra` arguments and `env`.
    fn preflight(&self, bin: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(bin);
        c.arg("preflight")
            .arg("--bpffs")
            .arg(self.pin_dir())
            .arg("--run-dir")
            .arg(&self.run_dir)
            .arg("--cgroup")
            .arg(self.cgroup.path())
            .args(extra)
            .env_remove("BATON_TEST_REJECT_PROGRAMS")
            .env_remove("BATON_TEST_BREAK_PROGRAM")
            .env_remove("RUST_LOG");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("running baton-agent preflight")
    }

    /// `preflight --json --summary-file`: the exit code and the report,
    /// after checking the summary file against it.
    fn preflight_json(&self, bin: &Path, env: &[(&str, &str)]) -> (i32, Report) {
        let summary_file = self.tmp.path().join("termination-log");
        let _ = std::fs::remove_file(&summary_file);
        let file_arg = summary_file.display().to_string();
        let out = self.preflight(bin, &["--json", "--summary-file", &file_arg], env);
        let stdout = String::from_utf8_lossy(&out.stdout);
        // The contract the operator reads by: one line, the report's.
        let report = (stdout.starts_with(JSON_PREFIX) && stdout.lines().count() == 1)
            .then(|| serde_json::from_str::<Report>(&stdout));
        let Some(Ok(report)) = report else {
            panic!(
                "{} --json printed no report line ({report:?}; a binary from before preflight? \
                 the other layout's is rebuilt by `cargo xtask agent-v2`); exit {}; stdout:\n{}\n\
                 stderr:\n{}",
                bin.display(),
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            )
        };
        check_summary_file(&summary_file, &report);
        (out.status.code().unwrap_or(-1), report)
    }

    /// Everything preflight must leave as it was.
    fn snapshot(&self) -> Snapshot {
        let pins = listing(self.pin_dir());
        let mut maps = BTreeMap::new();
        for spec in baton_ebpf::MAPS.iter() {
            let path = map_pin_path(self.pin_dir(), spec.name);
            if !path.exists() {
                continue;
            }
            let fd = sys::obj_get(&path).expect("open pinned map");
            let id = sys::map_info(fd.as_fd()).expect("map info").id;
            let layout = MapLayout::from_fd(fd.as_fd(), Some(spec.name)).expect("layout");
            let mut entries = dump(fd.as_fd(), &layout).expect("dump");
            entries.sort();
            maps.insert(spec.name.to_string(), (id, entries));
        }
        let mut links = BTreeMap::new();
        for (name, attach) in [
            ("connect4", AttachType::Connect4),
            ("connect6", AttachType::Connect6),
        ] {
            let pin = link_pin_path(self.pin_dir(), attach);
            if pin.exists() {
                let fd = sys::obj_get(&pin).expect("open pinned link");
                let i = sys::link_info(fd.as_fd()).expect("link info");
                links.insert(name.to_string(), (i.id, i.prog_id, i.cgroup_id));
            }
        }
        let agent = self.status().map(|s| AgentState {
            pid: s.pid,
            generation: s.generation,
            frozen: s.frozen,
            takeover: serde_json::to_value(&s.handover).expect("takeover"),
            dump: client::dump(&admin_socket(&self.run_dir)).expect("dump"),
            verify_clean: client::verify(&admin_socket(&self.run_dir))
                .expect("verify")
                .is_clean(),
        });
        Snapshot {
            pins,
            maps,
            links,
            attached: attached(self.cgroup.path()),
            agent,
        }
    }

    /// The raw `status` answer.
    fn status_json(&self) -> Value {
        client::request(&admin_socket(&self.run_dir), Request::Status).expect("status")
    }
}

/// What the running agent says about itself, minus what moves (uptime, syncs).
#[derive(Debug, PartialEq)]
struct AgentState {
    pid: u32,
    generation: u64,
    frozen: bool,
    takeover: Value,
    dump: Dump,
    verify_clean: bool,
}

#[derive(Debug, PartialEq)]
struct Snapshot {
    /// Every path under the bpffs, with its inode (a re-pin is a new inode).
    pins: Vec<(String, u64)>,
    /// Per pinned map: kernel id and every entry.
    maps: BTreeMap<String, (u32, Vec<RawEntry>)>,
    /// Per pinned link: link id, program id, cgroup id.
    links: BTreeMap<String, (u32, u32, u64)>,
    /// What the kernel says is attached to the test cgroup (bpftool).
    attached: Value,
    agent: Option<AgentState>,
}

impl Snapshot {
    /// Asserts nothing differs, naming what does.
    fn assert_same(&self, after: &Snapshot, case: &str) {
        assert_eq!(self.pins, after.pins, "{case}: pins under the bpffs");
        for (name, (id, entries)) in &self.maps {
            let (id2, entries2) = &after.maps[name];
            assert_eq!(id, id2, "{case}: map {name} replaced");
            assert!(entries == entries2, "{case}: map {name} contents changed");
        }
        assert_eq!(self.maps.len(), after.maps.len(), "{case}: pinned maps");
        assert_eq!(self.links, after.links, "{case}: pinned links");
        assert_eq!(self.attached, after.attached, "{case}: cgroup attachments");
        assert_eq!(self.agent, after.agent, "{case}: the running agent");
    }
}

/// Every path under `dir` (relative), with its inode, sorted.
fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).expect("stat");
            let rel = p
                .strip_prefix(dir)
                .expect("under dir")
                .display()
                .to_string();
            out.push((rel, md.ino()));
            if md.is_dir() {
                todo.push(p);
            }
        }
    }
    out.sort();
    out
}

/// `bpftool cgroup show <cg>`: the programs attached to the cgroup, as the
/// kernel reports them (BPF_PROG_QUERY), independent of the agent's code.
fn attached(cgroup: &Path) -> Value {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("running bpftool (scripts/deps.sh installs it)");
    assert!(out.status.success(), "bpftool: {out:?}");
    if out.stdout.trim_ascii().is_empty() {
        // bpftool prints nothing at all for a cgroup without programs.
        return attached_none();
    }
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bpftool JSON: {e}: {out:?}"))
}

fn services_yaml() -> String {
    let mut y = String::from("services:\n");
    for i in 0..SERVICES {
        y.push_str(&format!(
            "  - name: svc-{i}\n    vips: [\"10.97.0.{}\"]\n    policy: random\n    ports:\n      - {{port: 80, targetPort: 8080}}\n    endpoints:\n",
            i + 1
        ));
        for j in 0..ENDPOINTS {
            let k = i * ENDPOINTS + j;
            y.push_str(&format!(
                "      - {{address: \"10.200.{}.{}\"}}\n",
                k / 250,
                k % 250 + 1
            ));
        }
    }
    y
}

fn text(o: &Output) -> String {
    format!(
        "exit {}; stdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn preflight_changes_nothing_on_a_live_node() {
    let mut node = Node::new("live");
    let status = node.start_agent();
    let before = node.snapshot();
    assert_eq!(
        before.maps.len(),
        baton_ebpf::MAPS.len(),
        "the agent pinned every map"
    );
    assert_eq!(before.links.len(), 2, "the agent pinned both links");
    assert!(
        before.attached.as_array().is_some_and(|a| a.len() == 2),
        "two programs on the cgroup: {}",
        before.attached
    );

    let human = node.preflight(&own_agent(), &[], &[]);
    assert!(human.status.success(), "{}", text(&human));
    let out = String::from_utf8_lossy(&human.stdout);
    assert!(out.contains("READY: this build can take over"), "{out}");

    let (code, r) = node.preflight_json(&own_agent(), &[]);
    assert_eq!(code, 0, "{r:#?}");
    assert!(r.passed && r.failures.is_empty(), "{:?}", r.failures);
    assert_eq!(r.build.layout_version, baton_ebpf::LAYOUT_VERSION);
    assert!(r.environment.bpffs_mounted && r.environment.cgroup_v2);
    assert_eq!(r.programs.programs.len(), 2);
    assert!(
        r.programs
            .programs
            .iter()
            .all(|p| p.loaded && p.verified_insns.unwrap_or(0) > 0),
        "{:?}",
        r.programs
    );
    // The same build: every map reused, nothing to copy.
    assert!(r.maps.pins_found);
    assert_eq!(r.maps.pinned_layout, Some(baton_ebpf::LAYOUT_VERSION));
    assert_eq!(r.maps.pinned_generation, Some(status.generation));
    assert_eq!(r.maps.reused as usize, baton_ebpf::MAPS.len());
    assert_eq!(r.maps.entries_to_copy, 0);
    let entries = |name: &str| {
        r.maps
            .maps
            .iter()
            .find(|m| m.name == name)
            .and_then(|m| m.entries)
    };
    assert_eq!(entries("service"), Some(SERVICES as u64));
    assert_eq!(entries("endpoint"), Some(status.endpoints));
    assert_eq!(entries("backend"), Some(status.backends));
    // The links preflight read are the ones pinned, on the test cgroup.
    let ids: BTreeMap<String, (u32, u32)> = r
        .links
        .links
        .iter()
        .map(|l| {
            assert!(l.on_cgroup, "{l:?}");
            (l.attach.clone(), (l.link_id, l.prog_id))
        })
        .collect();
    let pinned: BTreeMap<String, (u32, u32)> = before
        .links
        .iter()
        .map(|(k, (link, prog, _))| (k.clone(), (*link, *prog)))
        .collect();
    assert_eq!(ids, pinned);
    // The running agent, and the protocol a handover would run.
    let agent = r.handover.agent.as_ref().expect("the agent answered");
    assert_eq!(agent.pid, status.pid);
    assert!(
        !agent.protocol_assumed,
        "this build's status says its range"
    );
    assert_eq!(
        r.handover.session_protocol,
        Some(baton_agent::handover::msg::PROTO)
    );
    assert!(r.handover.socket_present);

    // Nothing changed.
    let after = node.snapshot();
    before.assert_same(&after, "after two preflights");
    // And the agent still serves: a new service (the file renamed in, which
    // the agent applies at once) is programmed by the same, unfrozen agent.
    let next = node.tmp.path().join("services.next");
    let more = format!(
        "{}  - name: svc-new\n    vips: [\"10.97.1.1\"]\n    ports:\n      - {{port: 80}}\n    endpoints:\n      - {{address: \"10.201.0.1\"}}\n",
        services_yaml()
    );
    std::fs::write(&next, more).expect("services file");
    std::fs::rename(&next, &node.services).expect("rename");
    let s = node.wait_status(
        |s| s.services == SERVICES as u64 + 1 && s.syncs > status.syncs,
        "programming the new service",
    );
    assert_eq!((s.pid, s.generation), (status.pid, status.generation));
    assert_eq!(node.status_json()["frozen"], Value::Bool(false));

    // The pins preflight opened refuse writes (BPF_F_RDONLY).
    let ro = sys::obj_get_readonly(&map_pin_path(node.pin_dir(), "meta")).expect("read-only");
    let err = sys::map_update(ro.as_fd(), &0u32.to_ne_bytes(), &[0u8; 16], sys::BPF_ANY)
        .expect_err("a read-only map descriptor cannot write");
    assert_eq!(err.errno, nix::errno::Errno::EPERM);
}

#[test]
fn a_program_the_verifier_rejects_fails_preflight_cleanly() {
    let mut node = Node::new("reject");
    node.start_agent();
    let before = node.snapshot();
    let broken = [("BATON_TEST_BREAK_PROGRAM", "baton_connect6")];

    let human = node.preflight(&own_agent(), &[], &broken);
    assert_eq!(human.status.code(), Some(1), "{}", text(&human));
    let out = String::from_utf8_lossy(&human.stdout);
    assert!(
        out.contains("NOT READY: 1 check failed")
            && out.contains("FAIL  programs")
            && out.contains("baton_connect6: the kernel verifier rejected it")
            && out.contains("R2 !read_ok"),
        "{}",
        text(&human)
    );

    let (code, r) = node.preflight_json(&own_agent(), &broken);
    assert_eq!(code, 1);
    assert!(!r.passed);
    assert_eq!(r.failures.len(), 1, "{:?}", r.failures);
    assert!(
        r.failures[0].starts_with("programs: baton_connect6: the kernel verifier rejected it"),
        "{}",
        r.failures[0]
    );
    assert_eq!(r.programs.outcome, Outcome::Fail);
    let [c4, c6] = &r.programs.programs[..] else {
        panic!("two programs: {:?}", r.programs.programs);
    };
    assert!(c4.loaded && c4.error.is_none(), "{c4:?}");
    assert!(!c6.loaded, "{c6:?}");
    let why = c6.error.as_deref().unwrap_or_default();
    assert!(
        why.contains("verifier") && why.ends_with("R2 !read_ok"),
        "{why}"
    );
    let log = c6.verifier_log.as_deref().unwrap_or_default();
    assert!(log.contains("R2 !read_ok"), "{log}");
    // The other checks still ran and passed.
    for (name, o) in [
        ("environment", r.environment.outcome),
        ("maps", r.maps.outcome),
        ("links", r.links.outcome),
        ("handover", r.handover.outcome),
    ] {
        assert_eq!(o, Outcome::Pass, "{name}");
    }

    before.assert_same(&node.snapshot(), "after a failed preflight");
}

#[test]
fn a_layout_change_is_planned_map_by_map() {
    let own = baton_ebpf::LAYOUT_VERSION;
    let other = other_layout(own);
    let other_bin = agent_bin(other).unwrap_or_else(|e| panic!("{e}"));
    let mut node = Node::new("layout");
    let status = node.start_agent();
    let before = node.snapshot();

    let (code, r) = node.preflight_json(&other_bin, &[]);
    assert_eq!(
        code, 0,
        "{r:#?}\n(a stale layout-{other} binary? rebuild it with `cargo xtask agent-v2`)"
    );
    assert_eq!(r.build.layout_version, other);
    assert_eq!(r.maps.pinned_layout, Some(own));
    // Layouts 1 and 2 differ in endpoint and backend only (docs/architecture.md).
    for m in &r.maps.maps {
        let (action, live) = match m.name.as_str() {
            "endpoint" => (MapAction::Migrate, status.endpoints),
            "backend" => (MapAction::Migrate, status.backends),
            _ => (MapAction::Reuse, 0),
        };
        assert_eq!(m.action, action, "{m:?}");
        assert!(m.error.is_none(), "{m:?}");
        if action == MapAction::Migrate {
            assert_eq!(m.entries_to_copy, live, "{m:?}");
            assert_eq!(m.entries, Some(live), "{m:?}");
            assert!(!m.changes.is_empty(), "{m:?}");
            let sample = m.sample.expect("a sample copy");
            assert_eq!(sample.entries, live.min(16_384), "{m:?}");
            assert!(m.estimated_copy_us > 0, "{m:?}");
        } else {
            assert_eq!(m.entries_to_copy, 0, "{m:?}");
        }
    }
    assert_eq!((r.maps.migrated, r.maps.reused), (2, 4));
    assert_eq!(r.maps.entries_to_copy, status.endpoints + status.backends);
    assert_eq!(
        r.maps.estimated_copy_us,
        r.maps.maps.iter().map(|m| m.estimated_copy_us).sum::<u64>()
    );
    assert!(r.passed, "{:?}", r.failures);

    before.assert_same(&node.snapshot(), "after the other layout's preflight");
}

#[test]
fn a_fresh_node_passes_and_gets_no_directory() {
    let node = Node::new("fresh");
    // Not yet created: run would make it on the bpffs; preflight must not.
    let pins = node.pin_dir().join("baton");
    let before = listing(node.pin_dir());
    let out = Command::new(own_agent())
        .arg("preflight")
        .arg("--bpffs")
        .arg(&pins)
        .arg("--run-dir")
        .arg(&node.run_dir)
        .arg("--cgroup")
        .arg(node.cgroup.path())
        .arg("--json")
        .env_remove("BATON_TEST_BREAK_PROGRAM")
        .env_remove("BATON_TEST_REJECT_PROGRAMS")
        .output()
        .expect("preflight");
    assert!(out.status.success(), "{}", text(&out));
    let r: Report = serde_json::from_slice(&out.stdout).expect("report");
    assert!(!r.maps.pins_found && !r.environment.bpffs_mounted);
    assert!(r.maps.maps.iter().all(|m| m.action == MapAction::Create));
    assert!(r.links.links.is_empty());
    assert!(r.handover.agent.is_none() && r.handover.no_agent.is_some());
    assert!(!pins.exists(), "preflight created {}", pins.display());
    assert_eq!(listing(node.pin_dir()), before);
    assert_eq!(attached(node.cgroup.path()), attached_none());
}

/// The `--summary-file` a report came with: one JSON line a termination
/// message keeps whole, read back as the report's own summary.
fn check_summary_file(path: &Path, report: &Report) {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("no summary file {}: {e}", path.display()));
    assert!(text.len() <= SUMMARY_MAX_BYTES, "{} bytes", text.len());
    assert_eq!(text.lines().count(), 1, "{text}");
    let summary: Summary = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(summary.passed, report.passed, "{text}");
    assert_eq!(summary, report.summary(), "{text}");
}

#[test]
fn preflight_that_cannot_run_writes_its_reason_as_text() {
    let node = Node::new("error");
    let summary_file = node.tmp.path().join("termination-log");
    // The report cannot be written (stdout is /dev/full): exit 2, no report.
    let out = Command::new(own_agent())
        .arg("preflight")
        .arg("--bpffs")
        .arg(node.pin_dir())
        .arg("--run-dir")
        .arg(&node.run_dir)
        .arg("--cgroup")
        .arg(node.cgroup.path())
        .arg("--json")
        .arg("--summary-file")
        .arg(&summary_file)
        .env_remove("BATON_TEST_BREAK_PROGRAM")
        .env_remove("BATON_TEST_REJECT_PROGRAMS")
        .stdout(std::fs::File::create("/dev/full").expect("/dev/full"))
        .output()
        .expect("preflight");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let reason = std::fs::read_to_string(&summary_file).expect("the reason");
    assert_eq!(reason.lines().count(), 1, "{reason}");
    assert!(
        reason.starts_with("baton-agent preflight could not run: writing the report"),
        "{reason}"
    );
    assert!(
        serde_json::from_str::<Summary>(&reason).is_err(),
        "{reason}"
    );
}

/// What bpftool prints for a cgroup with nothing attached.
fn attached_none() -> Value {
    Value::Array(Vec::new())
}
