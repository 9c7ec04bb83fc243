//! The kit's one error type.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// A kit result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong finding a binary, driving a process or setting up a sandbox.
///
/// `Debug` prints the same text as `Display`, so that `.unwrap()` and
/// `.expect()` in a test show the message (with its log tail) as written.
#[derive(thiserror::Error)]
pub enum Error {
    /// A binary is missing; the message names the command that builds it.
    #[error("{name} not found (looked at {tried:?}); build it with `{build}`{}", env_hint(.env))]
    Binary {
        /// The binary.
        name: String,
        /// Where it was looked for.
        tried: Vec<PathBuf>,
        /// The command that builds it.
        build: String,
        /// The environment variable that overrides the location.
        env: Option<String>,
    },
    /// An override names no file.
    #[error("{env}={} is not a file", path.display())]
    BadOverride {
        /// The environment variable.
        env: String,
        /// What it says.
        path: PathBuf,
    },
    /// A binary built on demand could not be built.
    #[error("{command} failed ({status}); set {env} to use a prebuilt binary:\n{output}")]
    Build {
        /// The cargo command line.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// The environment variable that overrides the location.
        env: String,
        /// The end of its stderr.
        output: String,
    },
    /// A process could not be started.
    #[error("starting {name} ({}): {source}", bin.display())]
    Spawn {
        /// What was started.
        name: String,
        /// The program.
        bin: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A process exited while it was expected to run.
    #[error("{name} (pid {pid}) exited ({status}) while waiting for {what}; {log}")]
    Exited {
        /// The process.
        name: String,
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
        /// What was awaited.
        what: String,
        /// Its log tail (with the log's path).
        log: String,
    },
    /// A wait ran out of time.
    #[error("timed out after {after:?} waiting for {what}{}", context_suffix(.context))]
    Timeout {
        /// What was awaited.
        what: String,
        /// The limit.
        after: Duration,
        /// What the waiter could tell about the state (a log tail, the last answer).
        context: String,
    },
    /// A command ran and failed.
    #[error("{command}: {status}\n{stdout}{stderr}")]
    Command {
        /// The command line.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// Its stdout.
        stdout: String,
        /// Its stderr.
        stderr: String,
    },
    /// An answer did not parse.
    #[error("{what}: {source}")]
    Json {
        /// What was parsed.
        what: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// An answer parsed but says something is wrong.
    #[error("{what}: {detail}")]
    Check {
        /// What was checked.
        what: String,
        /// What was found.
        detail: String,
    },
    /// The agent's admin socket did not give the requested answer (no
    /// agent, an error answer, or not the requested type).
    #[error(transparent)]
    Admin(#[from] baton_agent::admin::client::ClientError),
    /// Other I/O.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// The cause.
        source: nix::Error,
    },
    /// A Kubernetes API call failed.
    #[cfg(feature = "apiserver")]
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// The cause.
        source: kube::Error,
    },
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

fn env_hint(env: &Option<String>) -> String {
    env.as_ref()
        .map(|e| format!(" or set {e}"))
        .unwrap_or_default()
}

fn context_suffix(context: &str) -> String {
    if context.is_empty() {
        String::new()
    } else {
        format!("\n{context}")
    }
}

impl Error {
    /// An [`Error::Io`] for `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    /// An [`Error::Sys`] for `what`.
    pub fn sys(what: impl Into<String>, source: nix::Error) -> Self {
        Self::Sys {
            what: what.into(),
            source,
        }
    }

    /// An [`Error::Check`]: `what` does not hold, `detail` says how.
    pub fn check(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Check {
            what: what.into(),
            detail: detail.into(),
        }
    }

    /// An [`Error::Kube`] for `what`.
    #[cfg(feature = "apiserver")]
    pub fn kube(what: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            what: what.into(),
            source,
        }
    }
}
