//! The e2e test kit: everything the integration tests (and the rig, the
//! bench) share to drive real processes on the real kernel.
//!
//! | module | what |
//! |---|---|
//! | [`process`] | one child-process driver: log file, `PR_SET_PDEATHSIG`, reaper, TERM-then-KILL stop, waits that quote the log |
//! | [`agent`] | `baton-agent run` on top of it; admin socket (`status`, `dump`, `verify`) and CLI |
//! | [`operator`] | `baton-operator run` against a test API server |
//! | [`probe`] | `baton-probe run`: command line, one-shot run, long-running probe |
//! | [`sandbox`] | test cgroup, private bpffs, network namespace, all removed on drop; a process confining itself ([`sandbox::enter`]) |
//! | [`bins`] | where each binary is (env overrides, both agent layouts), or the command that builds it |
//! | [`wait`] | polling with a timeout, sync and async |
//! | [`host`] | one emulated host: sandbox + services file + run directory + agents |
//! | [`fixture`] | the agent tests' services fixture and its checks |
//! | `kube` | Kubernetes objects for the API-server tests (feature `shim`) |
//!
//! Everything returns [`Result`] with the kit's [`Error`], whose `Debug` is
//! its message: a test writes `host.start(1, &opts).unwrap()` and a failure
//! reads "timed out after 30s waiting for … log …: <the agent's last lines>".
#![deny(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod agent;
pub mod bins;
pub mod error;
pub mod fixture;
pub mod host;
#[cfg(feature = "shim")]
pub mod kube;
pub mod operator;
pub mod probe;
pub mod process;
pub mod sandbox;
pub mod wait;

pub use agent::{Agent, AgentCmd};
pub use bins::{agent_bin, hooks_agent_bin, other_layout, probe_bin};
pub use error::{Error, Result};
pub use fixture::Fixture;
pub use host::{Host, Opts};
pub use operator::{Operator, OperatorCmd};
pub use probe::{ProbeProcess, ProbeRun};
pub use process::{killed, Process, Spawn};
pub use sandbox::{CgroupDir, Netns, Sandbox};
pub use wait::{poll, wait_until};
