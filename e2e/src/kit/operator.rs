//! One operator launcher: `baton-operator run` against a test API server as
//! a [`Process`], with the chart's arguments and its metrics on a free
//! loopback port.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::bins::operator_bin;
use super::error::{Error, Result};
use super::process::{file_tail, Process, Spawn};

/// Lines of the operator's log in [`Operator::logs`].
const LOG_LINES: usize = 60;

/// A `baton-operator run` command line.
#[derive(Clone, Debug)]
pub struct OperatorCmd {
    bin: PathBuf,
    kubeconfig: PathBuf,
    namespace: String,
    identity: String,
    metrics: SocketAddr,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl OperatorCmd {
    /// `baton-operator run --metrics-addr=127.0.0.1:<free port>
    /// --agent-service-account=baton-agent` (the chart's arguments) as pod
    /// `identity` of `namespace`, reaching the API server through `kubeconfig`.
    pub fn new(kubeconfig: &Path, namespace: &str, identity: &str) -> Result<Self> {
        let metrics = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| Error::io("finding a free port", e))?;
        Ok(Self {
            bin: operator_bin()?,
            kubeconfig: kubeconfig.to_owned(),
            namespace: namespace.to_owned(),
            identity: identity.to_owned(),
            metrics,
            args: vec![
                "run".into(),
                format!("--metrics-addr={metrics}").into(),
                "--agent-service-account=baton-agent".into(),
            ],
            env: vec![("RUST_LOG".into(), "info".into())],
        })
    }

    /// Appends an argument (e.g. a shorter `--lease-seconds=3`).
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Where its metrics and health endpoints listen.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }

    /// The command line.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("POD_NAME", &self.identity)
            .env("POD_NAMESPACE", &self.namespace);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts it, appending to `log` (a restarted operator keeps its
    /// predecessor's lines); SIGKILLed on drop.
    pub fn spawn(&self, log: &Path) -> Result<Operator> {
        let process = Spawn::new(
            format!("baton-operator {}", self.identity),
            self.command(),
            log,
        )
        .append()
        .start()?;
        Ok(Operator {
            process,
            metrics: self.metrics,
        })
    }
}

/// A running `baton-operator run`.
#[derive(Debug)]
pub struct Operator {
    process: Process,
    metrics: SocketAddr,
}

impl Operator {
    /// The process.
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// Where its metrics and health endpoints listen.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }

    /// SIGKILL (no clean shutdown, as a crashed or evicted operator) and reap.
    pub fn kill(&self) {
        self.process.kill();
    }

    /// The tail of its log, headed by the log's path.
    pub fn logs(&self) -> String {
        let log = self.process.log_path();
        format!("--- {} ---\n{}", log.display(), file_tail(log, LOG_LINES))
    }
}
