//! Helpers for Rust tests and tools that run `baton-probe` as a child process.
//!
//! Tests must not call [`crate::sandbox::enter`] in their own (multi-threaded)
//! process; they build a command with [`ProbeRun`], run it, and parse stdout
//! with [`parse_report`].
//!
//! ```no_run
//! use baton_e2e::harness::{probe_bin, ProbeRun, parse_report};
//! let out = ProbeRun::new()
//!     .backend("127.0.0.10:8080".parse().unwrap())
//!     .target("10.96.0.10:80".parse().unwrap())
//!     .connects(1000)
//!     .cgroup("/sys/fs/cgroup/unified/baton-test")
//!     .command(probe_bin().unwrap())
//!     .output()
//!     .unwrap();
//! let report = parse_report(&out.stdout).unwrap();
//! assert_eq!(report.totals.failed, 0);
//! ```

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::report::Report;

/// Environment variable that overrides where `baton-probe` is found.
pub const PROBE_BIN_ENV: &str = "BATON_PROBE_BIN";

/// Locating the binary failed.
#[derive(Debug, thiserror::Error)]
#[error("baton-probe not found (looked at {tried:?}); build it with `cargo build -p baton-e2e --bin baton-probe` or set {PROBE_BIN_ENV}")]
pub struct NotFound {
    /// Paths that were tried.
    pub tried: Vec<PathBuf>,
}

/// Finds `baton-probe`: `$BATON_PROBE_BIN`, else next to (or one level above) the current executable.
pub fn probe_bin() -> Result<PathBuf, NotFound> {
    if let Some(p) = std::env::var_os(PROBE_BIN_ENV) {
        return Ok(PathBuf::from(p));
    }
    let mut tried = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // Test binaries live in target/<profile>/deps, binaries in target/<profile>.
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join("baton-probe");
            if candidate.is_file() {
                return Ok(candidate);
            }
            tried.push(candidate);
        }
    }
    Err(NotFound { tried })
}

/// Builder for a `baton-probe run` command line.
#[derive(Clone, Debug, Default)]
pub struct ProbeRun {
    args: Vec<OsString>,
}

impl ProbeRun {
    /// Starts a `run` command line.
    pub fn new() -> Self {
        Self {
            args: vec!["run".into()],
        }
    }

    fn arg(mut self, flag: &str, value: impl Into<OsString>) -> Self {
        self.args.push(flag.into());
        self.args.push(value.into());
        self
    }

    /// `--cgroup DIR`.
    pub fn cgroup(self, dir: impl AsRef<Path>) -> Self {
        self.arg("--cgroup", dir.as_ref().as_os_str())
    }

    /// `--no-netns` (traffic is no longer confined; avoid).
    pub fn no_netns(mut self) -> Self {
        self.args.push("--no-netns".into());
        self
    }

    /// `--local-backends`: non-loopback IPv4 backend addresses (pod IPs) are
    /// added to `lo` inside the probe's netns.
    pub fn local_backends(mut self) -> Self {
        self.args.push("--local-backends".into());
        self
    }

    /// `--backend ADDR`.
    pub fn backend(self, addr: SocketAddr) -> Self {
        self.arg("--backend", addr.to_string())
    }

    /// `--target ADDR`.
    pub fn target(self, addr: SocketAddr) -> Self {
        self.arg("--target", addr.to_string())
    }

    /// `--connects N`.
    pub fn connects(self, n: u64) -> Self {
        self.arg("--connects", n.to_string())
    }

    /// `--duration-ms MS`.
    pub fn duration(self, d: Duration) -> Self {
        self.arg("--duration-ms", d.as_millis().to_string())
    }

    /// `--rate R`.
    pub fn rate(self, r: f64) -> Self {
        self.arg("--rate", r.to_string())
    }

    /// `--concurrency C`.
    pub fn concurrency(self, c: usize) -> Self {
        self.arg("--concurrency", c.to_string())
    }

    /// `--hold N`.
    pub fn hold(self, n: u64) -> Self {
        self.arg("--hold", n.to_string())
    }

    /// `--ready-file PATH`.
    pub fn ready_file(self, p: impl AsRef<Path>) -> Self {
        self.arg("--ready-file", p.as_ref().as_os_str())
    }

    /// `--stop-file PATH`.
    pub fn stop_file(self, p: impl AsRef<Path>) -> Self {
        self.arg("--stop-file", p.as_ref().as_os_str())
    }

    /// The arguments (after the program name).
    pub fn args(&self) -> &[OsString] {
        &self.args
    }

    /// A [`Command`] running `bin` with these arguments.
    pub fn command(&self, bin: impl AsRef<Path>) -> Command {
        let mut c = Command::new(bin.as_ref());
        c.args(&self.args);
        c
    }
}

/// Parses the JSON report printed on stdout.
pub fn parse_report(stdout: &[u8]) -> Result<Report, serde_json::Error> {
    serde_json::from_slice(stdout)
}

/// For `pre_exec`: the child gets SIGKILL when the thread that spawned it
/// dies, so a test (or shim) killed without unwinding leaves no process
/// behind. Async-signal-safe: one `prctl`.
pub fn set_parent_death_signal() -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag on the calling process.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A running `baton-probe run`: stdout (the report) and stderr in files, ready
/// and stop files beside them; killed on drop. Test support: panics with the
/// probe's stderr when it does not start or report.
pub struct ProbeProcess {
    name: String,
    child: Child,
    out: PathBuf,
    err: PathBuf,
    stop: PathBuf,
}

impl ProbeProcess {
    /// Spawns `run` with `dir/<name>.{json,err,ready,stop}` (a stale ready or
    /// stop file is removed first), dying with the spawning thread, and waits
    /// up to `ready_within` for it to be ready.
    pub fn start(run: ProbeRun, dir: &Path, name: &str, ready_within: Duration) -> ProbeProcess {
        let file = |ext: &str| dir.join(format!("{name}.{ext}"));
        for ext in ["ready", "stop"] {
            let _ = std::fs::remove_file(file(ext));
        }
        let bin = probe_bin().expect("baton-probe binary");
        let mut cmd = run
            .ready_file(file("ready"))
            .stop_file(file("stop"))
            .command(bin);
        cmd.stdout(std::fs::File::create(file("json")).expect("probe stdout"))
            .stderr(std::fs::File::create(file("err")).expect("probe stderr"));
        // SAFETY: set_parent_death_signal is async-signal-safe.
        unsafe {
            cmd.pre_exec(set_parent_death_signal);
        }
        let child = cmd.spawn().expect("starting baton-probe");
        let probe = ProbeProcess {
            name: name.to_owned(),
            child,
            out: file("json"),
            err: file("err"),
            stop: file("stop"),
        };
        assert!(
            wait_for_file(&file("ready"), ready_within),
            "baton-probe {name} did not get ready: {}",
            std::fs::read_to_string(&probe.err).unwrap_or_default()
        );
        probe
    }

    /// Asks the probe to end its run (its stop file), without waiting.
    pub fn request_stop(&self) {
        std::fs::write(&self.stop, b"").expect("stop file");
    }

    /// Stops the probe, waits up to `timeout` for it to exit, returns its report.
    pub fn report(mut self, timeout: Duration) -> Report {
        self.request_stop();
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => panic!("baton-probe {} did not stop", self.name),
            }
        };
        let out = std::fs::read(&self.out).unwrap_or_default();
        parse_report(&out).unwrap_or_else(|e| {
            panic!(
                "baton-probe {} ({status}): bad report ({e}): {}\n{}",
                self.name,
                String::from_utf8_lossy(&out),
                std::fs::read_to_string(&self.err).unwrap_or_default()
            )
        })
    }
}

impl Drop for ProbeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls until `path` exists; false on timeout.
pub fn wait_for_file(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    path.exists()
}

/// Environment variable naming the `baton-agent` binary to use for map layout
/// `layout` (`BATON_AGENT_V1`, `BATON_AGENT_V2`).
pub fn agent_bin_env(layout: u32) -> String {
    format!("BATON_AGENT_V{layout}")
}

/// Cargo's arguments that build `baton-agent` for `layout` in `profile`.
fn agent_build_args(layout: u32, profile: &str) -> Vec<String> {
    let mut args = vec!["build".into(), "-p".into(), "baton-agent".into()];
    if layout == 2 {
        args.extend(["--features".into(), "layout-v2".into()]);
    }
    match profile {
        "debug" => {}
        "release" => args.push("--release".into()),
        other => args.extend(["--profile".into(), other.into()]),
    }
    args
}

/// `(target dir, profile name)` of the running executable, which lives in
/// `<target>/<profile>/` or, for tests, `<target>/<profile>/deps/`.
fn own_target_and_profile() -> Option<(PathBuf, String)> {
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?;
    if dir.file_name()? == "deps" {
        dir = dir.parent()?;
    }
    let profile = dir.file_name()?.to_str()?.to_string();
    Some((dir.parent()?.to_path_buf(), profile))
}

/// The `baton-agent` binary for map layout `layout` (1 or 2).
///
/// `$BATON_AGENT_V<layout>` wins when set. For the layout this crate was built
/// with ([`baton_ebpf::LAYOUT_VERSION`]), it is the agent next to the running
/// executable (`$BATON_AGENT_BIN` if set), as `cargo build --workspace`
/// leaves it. For the other layout it runs
/// `cargo build -p baton-agent [--features layout-v2] [--release]
/// --target-dir <target>/layout-v<layout>` (a no-op when fresh; `scripts/test.sh`
/// builds it beforehand) and returns `<target>/layout-v<layout>/<profile>/baton-agent`.
/// A separate target dir keeps feature flags from invalidating the main build
/// and avoids the lock `cargo test` holds on its own.
pub fn agent_bin_for_layout(layout: u32) -> std::io::Result<PathBuf> {
    use std::io::{Error, ErrorKind};
    if !baton_ebpf::LAYOUTS.contains(&layout) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("no map layout {layout} (known: {:?})", baton_ebpf::LAYOUTS),
        ));
    }
    let env = agent_bin_env(layout);
    if let Some(p) = std::env::var_os(&env) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error::new(
                ErrorKind::NotFound,
                format!("{env}={} is not a file", p.display()),
            ))
        };
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new(".."))
        .to_path_buf();
    let (target, profile) = own_target_and_profile().unwrap_or_else(|| {
        let profile = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        };
        (workspace.join("target"), profile.to_string())
    });

    if layout == baton_ebpf::LAYOUT_VERSION {
        let bin = match std::env::var_os("BATON_AGENT_BIN") {
            Some(p) => PathBuf::from(p),
            None => target.join(&profile).join("baton-agent"),
        };
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "baton-agent (layout {layout}) not found at {}: run `cargo {}` or set {env}",
                    bin.display(),
                    agent_build_args(layout, &profile).join(" ")
                ),
            ))
        };
    }

    let dir = target.join(format!("layout-v{layout}"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(agent_build_args(layout, &profile))
        .arg("--target-dir")
        .arg(&dir)
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"));
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| Error::new(e.kind(), format!("cannot run {shown}: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = &lines[lines.len().saturating_sub(20)..];
        return Err(Error::other(format!(
            "{shown} failed ({}); set {env} to use a prebuilt agent:\n{}",
            out.status,
            tail.join("\n")
        )));
    }
    let bin = dir.join(&profile).join("baton-agent");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(Error::new(
            ErrorKind::NotFound,
            format!("{shown} succeeded but left no {}", bin.display()),
        ))
    }
}
