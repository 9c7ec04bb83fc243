//! One agent driver: `baton-agent run` as a [`Process`] ([`AgentCmd`] →
//! [`Agent`]), its admin socket (`status`, `dump`, `verify`, read as
//! `baton_api::admin`'s typed answers) and its CLI.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::{Duration, Instant};

use baton_agent::admin::{client, Request};
use baton_api::admin::{Dump, Status, Verify};
use nix::sys::signal::Signal;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;
use serde_json::Value;

use super::error::{Error, Result};
use super::process::{checked_output, output, Process, Spawn};
use super::sandbox::Netns;

/// How long [`Agent::stop`] waits for a clean exit.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// The answer of the agent serving `run_dir`'s admin socket to `req`, read
/// as `T` (`baton_api::admin::Status`, `Dump`, `Verify`; or
/// `serde_json::Value` for an agent of another revision, whose answer this
/// build's types may not read). No agent, an `{"error": ...}` answer or
/// another shape is an [`Error::Admin`].
pub fn request<T: DeserializeOwned>(run_dir: &Path, req: Request) -> Result<T> {
    Ok(client::request_typed(
        &baton_agent::agent::admin_socket(run_dir),
        req,
    )?)
}

/// `status` from the agent serving `run_dir`.
pub fn status(run_dir: &Path) -> Result<Status> {
    request(run_dir, Request::Status)
}

/// `dump` from the agent serving `run_dir`.
pub fn dump(run_dir: &Path) -> Result<Dump> {
    request(run_dir, Request::Dump)
}

/// `verify` from the agent serving `run_dir`.
pub fn verify(run_dir: &Path) -> Result<Verify> {
    request(run_dir, Request::Verify)
}

/// The fields of a `status` answer the kit's waits read themselves: an
/// agent's answer has them whatever its revision, so [`Agent::wait_status`]
/// and [`Agent::wait_synced`] also work on answers read as raw JSON.
#[derive(Deserialize)]
struct StatusHead {
    /// `None` in an answer made from the pins.
    pid: Option<u32>,
    #[serde(default)]
    services: u64,
    /// `None` before the first sync.
    #[serde(default)]
    last_sync: Option<IgnoredAny>,
}

/// Runs `bin CMD --run-dir R --bpffs B` (`status`, `dump`, `verify`: the
/// admin socket when an agent answers there, else the pins).
pub fn cli(bin: &Path, cmd: &str, run_dir: &Path, bpffs: &Path) -> Result<Output> {
    let mut c = Command::new(bin);
    c.args([cmd, "--run-dir"])
        .arg(run_dir)
        .arg("--bpffs")
        .arg(bpffs);
    output(c)
}

/// [`cli`] that must exit 0 and print JSON, read as `T`: the agent's answer
/// (`Status`, `Dump`, `Verify`) or, when no agent answered,
/// `baton_api::admin::FromPins<PinStatus>` / `FromPins<Verify>`.
pub fn cli_json<T: DeserializeOwned>(
    bin: &Path,
    cmd: &str,
    run_dir: &Path,
    bpffs: &Path,
) -> Result<T> {
    let mut c = Command::new(bin);
    c.args([cmd, "--run-dir"])
        .arg(run_dir)
        .arg("--bpffs")
        .arg(bpffs);
    let out = checked_output(c)?;
    serde_json::from_slice(&out.stdout).map_err(|source| Error::Json {
        what: format!(
            "baton-agent {cmd}: {}",
            String::from_utf8_lossy(&out.stdout)
        ),
        source,
    })
}

/// A `baton-agent run` command line.
#[derive(Clone, Debug)]
pub struct AgentCmd {
    bin: PathBuf,
    services: PathBuf,
    cgroup: PathBuf,
    bpffs: PathBuf,
    run_dir: PathBuf,
    metrics: Option<String>,
    poll_ms: Option<u64>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    env_remove: Vec<OsString>,
    name: String,
    layout: Option<u32>,
    netns: Option<Netns>,
    drop_grace: Duration,
    poll: Duration,
}

impl AgentCmd {
    /// `bin run --services S --cgroup C --bpffs B --run-dir R --no-metrics`,
    /// with `RUST_LOG=info`. Dropping the agent stops it with SIGTERM (15 s
    /// grace) and its status is polled every 2 ms (fine enough to time a
    /// handover); both can be changed.
    pub fn new(bin: &Path, services: &Path, cgroup: &Path, bpffs: &Path, run_dir: &Path) -> Self {
        Self {
            bin: bin.to_owned(),
            services: services.to_owned(),
            cgroup: cgroup.to_owned(),
            bpffs: bpffs.to_owned(),
            run_dir: run_dir.to_owned(),
            metrics: None,
            poll_ms: None,
            args: Vec::new(),
            env: vec![("RUST_LOG".into(), "info".into())],
            env_remove: Vec::new(),
            name: "baton-agent".into(),
            layout: None,
            netns: None,
            drop_grace: Duration::from_secs(15),
            poll: Duration::from_millis(2),
        }
    }

    /// `--metrics-addr ADDR` instead of `--no-metrics`.
    pub fn metrics(mut self, addr: Option<&str>) -> Self {
        self.metrics = addr.map(str::to_owned);
        self
    }

    /// `--poll-ms MS`.
    pub fn poll_ms(mut self, ms: u64) -> Self {
        self.poll_ms = Some(ms);
        self
    }

    /// Appends an argument.
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Appends arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable of the agent.
    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Removes an inherited environment variable.
    pub fn env_remove(mut self, k: impl Into<OsString>) -> Self {
        self.env_remove.push(k.into());
        self
    }

    /// Its name in messages (default `baton-agent`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Records the map layout the binary was built for ([`Agent::layout`]).
    pub fn layout(mut self, layout: u32) -> Self {
        self.layout = Some(layout);
        self
    }

    /// Runs the agent inside network namespace `ns`.
    pub fn netns(mut self, ns: &Netns) -> Self {
        self.netns = Some(ns.clone());
        self
    }

    /// On drop: SIGTERM, then SIGKILL after `grace` (zero: SIGKILL at once).
    pub fn drop_grace(mut self, grace: Duration) -> Self {
        self.drop_grace = grace;
        self
    }

    /// How often waits poll the admin socket.
    pub fn status_poll(mut self, every: Duration) -> Self {
        self.poll = every;
        self
    }

    /// The command line.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("run")
            .arg("--services")
            .arg(&self.services)
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--bpffs")
            .arg(&self.bpffs)
            .arg("--run-dir")
            .arg(&self.run_dir);
        if let Some(ms) = self.poll_ms {
            cmd.args(["--poll-ms", &ms.to_string()]);
        }
        match &self.metrics {
            Some(m) => cmd.args(["--metrics-addr", m]),
            None => cmd.arg("--no-metrics"),
        };
        cmd.args(&self.args);
        for k in &self.env_remove {
            cmd.env_remove(k);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts the agent, its output going to `log`.
    pub fn spawn(&self, log: &Path) -> Result<Agent> {
        let mut spawn =
            Spawn::new(self.name.clone(), self.command(), log).drop_grace(self.drop_grace);
        if let Some(ns) = &self.netns {
            spawn = spawn.netns(ns);
        }
        Ok(Agent {
            process: spawn.start()?,
            bin: self.bin.clone(),
            run_dir: self.run_dir.clone(),
            bpffs: self.bpffs.clone(),
            layout: self.layout,
            poll: self.poll,
        })
    }
}

/// A running `baton-agent run`.
#[derive(Debug)]
pub struct Agent {
    process: Process,
    bin: PathBuf,
    run_dir: PathBuf,
    bpffs: PathBuf,
    layout: Option<u32>,
    poll: Duration,
}

impl Agent {
    /// The process.
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Its name in messages.
    pub fn name(&self) -> &str {
        self.process.name()
    }

    /// The map layout recorded with [`AgentCmd::layout`].
    pub fn layout(&self) -> Option<u32> {
        self.layout
    }

    /// When it was spawned.
    pub fn started(&self) -> Instant {
        self.process.started()
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// Its whole log.
    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// Its exit status, once it exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.process.exited()
    }

    /// When it exited.
    pub fn exited_at(&self) -> Option<Instant> {
        self.process.exited_at()
    }

    /// Whether it still runs.
    pub fn alive(&self) -> bool {
        self.process.alive()
    }

    /// Sends `sig` (unless it exited).
    pub fn signal(&self, sig: Signal) -> bool {
        self.process.signal(sig)
    }

    /// Waits up to `timeout` for it to exit by itself.
    pub fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus> {
        self.process.wait_exit(timeout)
    }

    /// SIGKILL, and its exit status once reaped.
    pub fn kill(&self) -> Option<ExitStatus> {
        self.process.kill()
    }

    /// SIGTERM, up to `grace` for the exit, then SIGKILL.
    pub fn terminate(&self, grace: Duration) -> Option<ExitStatus> {
        self.process.stop(grace)
    }

    /// SIGTERM and a clean exit (0) within 20 s.
    pub fn stop(&self) -> Result<ExitStatus> {
        self.process.signal(Signal::SIGTERM);
        let status = self.process.wait_exit(STOP_GRACE)?;
        if status.success() {
            Ok(status)
        } else {
            Err(self
                .process
                .exited_error("a clean exit after SIGTERM", Some(status)))
        }
    }

    /// Its run directory.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// `status` on its run directory's admin socket (from whichever agent
    /// serves it now).
    pub fn status(&self) -> Result<Status> {
        status(&self.run_dir)
    }

    /// `dump` on its run directory's admin socket.
    pub fn dump(&self) -> Result<Dump> {
        dump(&self.run_dir)
    }

    /// `verify` on its run directory's admin socket.
    pub fn verify(&self) -> Result<Verify> {
        verify(&self.run_dir)
    }

    /// Polls the admin socket until this process answers with a status that
    /// satisfies `ok`; fails when it exits or `timeout` passes. `S` is
    /// [`Status`], or `serde_json::Value` for an agent of another revision
    /// (whose answer [`Status`] may not read).
    pub fn wait_status<S: DeserializeOwned>(
        &self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&S) -> bool,
    ) -> Result<S> {
        self.wait_answer(what, timeout, |_| true, ok)
    }

    /// Waits until it answers status after its first sync.
    pub fn wait_serving(&self, timeout: Duration) -> Result<Status> {
        self.wait_answer(
            "serving after its first sync",
            timeout,
            |h| h.last_sync.is_some(),
            |_| true,
        )
    }

    /// Waits until it has synced once with at least `services` services;
    /// `S` as for [`Agent::wait_status`].
    pub fn wait_synced<S: DeserializeOwned>(&self, services: u64, timeout: Duration) -> Result<S> {
        self.wait_answer(
            &format!("{services} services programmed"),
            timeout,
            |h| h.last_sync.is_some() && h.services >= services,
            |_| true,
        )
    }

    /// Polls `status` until this process answers with a status whose
    /// common fields satisfy `head` and that, read as `S`, satisfies `ok`.
    fn wait_answer<S: DeserializeOwned>(
        &self,
        what: &str,
        timeout: Duration,
        head: impl Fn(&StatusHead) -> bool,
        ok: impl Fn(&S) -> bool,
    ) -> Result<S> {
        let pid = self.pid();
        let answer = || -> Option<S> {
            let v: Value = request(&self.run_dir, Request::Status).ok()?;
            let h = StatusHead::deserialize(&v).ok()?;
            if h.pid != Some(pid) || !head(&h) {
                return None;
            }
            serde_json::from_value(v).ok().filter(|s| ok(s))
        };
        self.process
            .wait_until(what, timeout, self.poll, answer, || self.last_status())
    }

    /// The status answer as it came (or why there is none), for messages.
    fn last_status(&self) -> String {
        match request::<Value>(&self.run_dir, Request::Status) {
            Ok(v) => format!("last status: {v}"),
            Err(e) => format!("last status: {e}"),
        }
    }

    /// `baton-agent CMD` with its binary, run directory and bpffs.
    pub fn cli(&self, cmd: &str) -> Result<Output> {
        cli(&self.bin, cmd, &self.run_dir, &self.bpffs)
    }

    /// [`Agent::cli`] that must exit 0 and print JSON, read as `T` (see [`cli_json`]).
    pub fn cli_json<T: DeserializeOwned>(&self, cmd: &str) -> Result<T> {
        cli_json(&self.bin, cmd, &self.run_dir, &self.bpffs)
    }
}
