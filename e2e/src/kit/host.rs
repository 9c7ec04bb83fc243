//! One emulated host for agents that read a services file: a [`Sandbox`]
//! with a network namespace, the services file, a run directory, and the
//! agents started there one after the other (or side by side, for a
//! handover).
//!
//! The agents run inside the sandbox's network namespace, so their metrics
//! listeners never meet another test's (or another test run's) on the
//! host; [`Host::scrape`] reaches them there. Their admin and handover
//! sockets are files in the run directory, reachable from anywhere.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use baton_api::admin::{Dump, Status, Verify};

use super::agent::{self, Agent, AgentCmd};
use super::bins::agent_bin;
use super::error::{Error, Result};
use super::fixture::Fixture;
use super::probe::{ProbeProcess, ProbeRun};
use super::sandbox::Sandbox;
use super::wait::poll;

/// How long [`Host::start`] waits for an agent to serve.
const START: Duration = Duration::from_secs(30);
/// How long the status and dump waits of a host last.
const WAIT: Duration = Duration::from_secs(20);
/// How often a host polls the admin socket.
const POLL: Duration = Duration::from_millis(20);
/// The agent's test-only fault hooks, never inherited from the test's environment.
const TEST_HOOKS: [&str; 5] = [
    "BATON_TEST_CRASH_AT",
    "BATON_TEST_REJECT_PROGRAMS",
    "BATON_TEST_PAUSE_AT",
    "BATON_TEST_REFUSE_ONE_IN",
    "BATON_SOAK_SECONDS",
];

/// Extra settings of one agent start.
#[derive(Clone, Debug, Default)]
pub struct Opts {
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// Arguments after the host's own.
    pub args: Vec<String>,
    /// The agent binary (default: the layout's, [`agent_bin`]).
    pub bin: Option<PathBuf>,
}

impl Opts {
    /// `BATON_TEST_CRASH_AT=<step>`: the agent SIGKILLs itself at `step` of a handover.
    pub fn crash_at(step: &str) -> Self {
        Self::default().with_env("BATON_TEST_CRASH_AT", step)
    }

    /// Adds an environment variable.
    pub fn with_env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Runs `bin` instead of the layout's agent (it must be of the layout
    /// given to [`Host::spawn`]), e.g. [`super::bins::hooks_agent_bin`].
    pub fn with_bin(mut self, bin: PathBuf) -> Self {
        self.bin = Some(bin);
        self
    }

    /// Adds arguments.
    pub fn with_args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }
}

/// One test's host: sandbox, services file, run directory, agent settings.
#[derive(Debug)]
pub struct Host {
    /// Cgroup, bpffs, scratch directory, network namespace.
    pub sandbox: Sandbox,
    /// The services file every agent reads.
    pub services: PathBuf,
    /// The agents' run directory (admin and handover sockets).
    pub run_dir: PathBuf,
    /// `--metrics-addr` of every agent (in the sandbox's network namespace), or none.
    pub metrics: Option<String>,
    /// `--poll-ms` of every agent.
    pub poll_ms: u64,
    seq: AtomicU32,
}

impl Host {
    /// A sandbox named `name` whose services file holds `services` (YAML).
    pub fn new(name: &str, services: &str) -> Result<Host> {
        let sandbox = Sandbox::with_netns(name)?;
        let file = sandbox.path("services.yaml");
        std::fs::write(&file, services)
            .map_err(|e| Error::io(format!("writing {}", file.display()), e))?;
        let run_dir = sandbox.path("run");
        Ok(Host {
            sandbox,
            services: file,
            run_dir,
            metrics: None,
            poll_ms: 50,
            seq: AtomicU32::new(0),
        })
    }

    /// A host serving `fixture`.
    pub fn with_fixture(name: &str, fixture: &Fixture) -> Result<Host> {
        Host::new(name, &fixture.yaml())
    }

    /// Replaces the services file (via rename, so an agent never reads half of it).
    pub fn write_services(&self, services: &str) -> Result<()> {
        let tmp = self.sandbox.path("services.yaml.tmp");
        std::fs::write(&tmp, services)
            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &self.services)
            .map_err(|e| Error::io(format!("renaming to {}", self.services.display()), e))
    }

    /// Replaces the services file with `fixture`'s.
    pub fn write_fixture(&self, fixture: &Fixture) -> Result<()> {
        self.write_services(&fixture.yaml())
    }

    /// The `baton-agent run` of `layout` this host starts (numbered, logging
    /// to `agent-<n>.log`; no test hook inherited; SIGKILLed on drop).
    pub fn agent_cmd(&self, layout: u32, opts: &Opts) -> Result<(AgentCmd, PathBuf)> {
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        let bin = match &opts.bin {
            Some(b) => b.clone(),
            None => agent_bin(layout)?,
        };
        let mut cmd = AgentCmd::new(
            &bin,
            &self.services,
            self.sandbox.cgroup(),
            self.sandbox.pin_dir(),
            &self.run_dir,
        )
        .name(format!("agent#{n} (layout {layout})"))
        .layout(layout)
        .poll_ms(self.poll_ms)
        .metrics(self.metrics.as_deref())
        .drop_grace(Duration::ZERO)
        .status_poll(POLL)
        .args(&opts.args);
        if let Some(ns) = self.sandbox.netns() {
            cmd = cmd.netns(ns);
        }
        for k in TEST_HOOKS {
            cmd = cmd.env_remove(k);
        }
        for (k, v) in &opts.env {
            cmd = cmd.env(k, v);
        }
        Ok((cmd, self.sandbox.path(&format!("agent-{n}.log"))))
    }

    /// Starts `baton-agent run` of `layout` (waits for nothing).
    pub fn spawn(&self, layout: u32, opts: &Opts) -> Result<Agent> {
        let (cmd, log) = self.agent_cmd(layout, opts)?;
        cmd.spawn(&log)
    }

    /// Starts an agent and waits until it serves status after a first sync.
    pub fn start(&self, layout: u32, opts: &Opts) -> Result<Agent> {
        let a = self.spawn(layout, opts)?;
        a.wait_serving(START)?;
        Ok(a)
    }

    /// `status` of whichever agent serves the admin socket.
    pub fn status(&self) -> Result<Status> {
        agent::status(&self.run_dir)
    }

    /// `dump` of whichever agent serves the admin socket.
    pub fn dump(&self) -> Result<Dump> {
        agent::dump(&self.run_dir)
    }

    /// `verify` of whichever agent serves the admin socket.
    pub fn verify(&self) -> Result<Verify> {
        agent::verify(&self.run_dir)
    }

    /// Waits up to 20 s until some agent's status satisfies `ok`.
    pub fn wait_status(&self, what: &str, ok: impl Fn(&Status) -> bool) -> Result<Status> {
        poll(
            what,
            WAIT,
            POLL,
            || self.status().ok().filter(|s| ok(s)),
            || format!("last status: {:?}", self.status()),
        )
    }

    /// `verify` through the running agent; an error unless it answers with no violation.
    pub fn verify_clean(&self) -> Result<Verify> {
        let v = self.verify()?;
        if !v.is_clean() {
            return Err(Error::check(
                "verify",
                format!("violations: {:?}", v.violations),
            ));
        }
        Ok(v)
    }

    /// `baton-agent CMD` with the binary of `layout` (the admin socket when
    /// an agent answers, else the pins).
    pub fn cli(&self, layout: u32, cmd: &str) -> Result<Output> {
        agent::cli(
            &agent_bin(layout)?,
            cmd,
            &self.run_dir,
            self.sandbox.pin_dir(),
        )
    }

    /// Waits up to 20 s until the running agent's `dump` matches `fixture`.
    pub fn wait_dump(&self, fixture: &Fixture) -> Result<Dump> {
        let last = std::cell::RefCell::new(Vec::new());
        poll(
            "dump to match the services",
            WAIT,
            POLL,
            || {
                let dump = self.dump();
                let diff = match &dump {
                    Ok(d) => fixture.dump_diff(d),
                    Err(e) => vec![format!("no dump: {e}")],
                };
                let clean = diff.is_empty();
                *last.borrow_mut() = diff;
                dump.ok().filter(|_| clean)
            },
            || format!("differences: {:#?}", last.borrow()),
        )
    }

    /// `staging-*` directories left in the bpffs.
    pub fn staging_dirs(&self) -> Vec<String> {
        std::fs::read_dir(self.sandbox.pin_dir())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.starts_with("staging-"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `GET /metrics` from the agents' metrics address (the raw HTTP answer).
    pub fn scrape(&self) -> Result<String> {
        let addr = self
            .metrics
            .clone()
            .ok_or_else(|| Error::check("scraping metrics", "the host has no metrics address"))?;
        let get = move || -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(&addr)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut body = String::new();
            let _ = s.read_to_string(&mut body);
            Ok(body)
        };
        let got = match self.sandbox.netns() {
            Some(ns) => ns.run(get)?,
            None => get(),
        };
        got.map_err(|e| Error::io("scraping metrics", e))
    }

    /// A `baton-probe` in the host's cgroup (and a netns of its own) that
    /// serves every backend of `fixture`, opens `hold` long-lived
    /// connections, then connects to every VIP:port at `rate` per second
    /// until stopped (at most `limit`).
    pub fn traffic(
        &self,
        fixture: &Fixture,
        rate: f64,
        hold: u64,
        limit: Duration,
    ) -> Result<ProbeProcess> {
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        let run = ProbeRun::new()
            .cgroup(self.sandbox.cgroup())
            .duration(limit)
            .rate(rate)
            .concurrency(8)
            .hold(hold)
            .backends(fixture.backends())
            .targets(fixture.targets());
        ProbeProcess::start(
            run,
            self.sandbox.dir(),
            &format!("probe-{n}"),
            Duration::from_secs(20),
        )
    }
}
