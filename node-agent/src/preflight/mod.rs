//! `baton-agent preflight`: this build checks itself against one node's
//! kernel and live state before its first handover there, and changes
//! nothing (docs/operations.md, "Preflight").
//!
//! The checks, one module each, reuse the code a real takeover runs:
//!
//! - [`environment`]: `--bpffs` and `--cgroup` (statfs only);
//! - [`programs`]: the build's object opened without pins and its programs
//!   loaded through the kernel's verifier (`datapath::load`); never
//!   attached; the maps created for the load are never pinned and go away
//!   with it;
//! - [`plan`]: the pinned maps, opened read-only (`BPF_F_RDONLY`: the
//!   kernel refuses any write through them), planned map by map with
//!   `datapath::recover::plan_map` (the same reuse / migrate / recreate
//!   decision as a takeover); every entry of a migrated map is converted
//!   without writing (`migrate::convert_all`), and [`rate`] times a sample
//!   copy into a scratch map to estimate the copy;
//! - [`links`]: the pinned links' kernel info (link, program, cgroup);
//! - [`incumbent`]: the running agent's `status` on the admin socket, and
//!   whether its handover protocol versions meet this build's.
//!
//! [`run`] gathers them into a `baton_api::preflight::Report`; [`render`]
//! turns one into the human summary.

pub mod environment;
pub mod incumbent;
pub mod links;
pub mod plan;
pub mod programs;
pub mod rate;
pub mod render;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use baton_api::preflight::{Build, Node, Outcome, ProtocolRange, Report, REPORT_VERSION};

use crate::admin::client::ClientError;
use crate::datapath::load::LoadError;
use crate::datapath::DatapathError;
use crate::handover::msg::{MIN_PROTO, PROTO};
use crate::migrate::MigrateError;
use crate::sys::{FsError, SysError};

/// What to check, named as `baton-agent run` names it.
#[derive(Clone, Debug)]
pub struct PreflightConfig {
    /// `--bpffs`: where the live pins are.
    pub pin_dir: PathBuf,
    /// `--run-dir`: where the running agent's sockets are.
    pub run_dir: PathBuf,
    /// `--cgroup`: where the datapath attaches (`None`: no cgroup v2 mount
    /// was found and none was given).
    pub cgroup: Option<PathBuf>,
    /// `--mount-bpffs`: `run` would mount a bpffs on `--bpffs`.
    pub mount_bpffs: bool,
    /// `--map-max-entries` overrides, as `run` would get them.
    pub max_entries: BTreeMap<String, u32>,
}

/// Why part of a check could not be done; the check reports it as its
/// failure.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// Planning a map (pins, layouts, policy).
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    /// A map's layout or entries.
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    /// The build's object or a program.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// bpffs or cgroup filesystem.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A bpf syscall.
    #[error("{what}: {source}")]
    Sys {
        /// What we were doing.
        what: String,
        /// Cause.
        source: SysError,
    },
    /// Other I/O.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The admin socket.
    #[error(transparent)]
    Admin(#[from] ClientError),
    /// The running agent's `status` lacks what preflight needs.
    #[error("the running agent's status answer is unreadable: {0}")]
    Status(#[source] serde_json::Error),
    /// The running agent answered `status` with an error.
    #[error("the running agent answered status with an error: {0}")]
    Agent(String),
}

/// The handover protocol versions this build speaks.
pub fn protocol() -> ProtocolRange {
    ProtocolRange {
        min: MIN_PROTO,
        max: PROTO,
    }
}

/// Runs every check and returns the report; never writes anything.
pub fn run(cfg: &PreflightConfig) -> Report {
    let t0 = Instant::now();
    let environment = environment::check(cfg);
    let programs = programs::check(&cfg.max_entries);
    let maps = plan::check(cfg);
    let links = links::check(&cfg.pin_dir, cfg.cgroup.as_deref());
    let handover = incumbent::check(&cfg.run_dir, &cfg.pin_dir);
    let failures: Vec<String> = [
        ("environment", environment.outcome, &environment.summary),
        ("programs", programs.outcome, &programs.summary),
        ("maps", maps.outcome, &maps.summary),
        ("links", links.outcome, &links.summary),
        ("handover", handover.outcome, &handover.summary),
    ]
    .into_iter()
    .filter(|(_, o, _)| *o == Outcome::Fail)
    .map(|(name, _, why)| format!("{name}: {why}"))
    .collect();
    Report {
        report_version: REPORT_VERSION,
        build: Build {
            version: env!("CARGO_PKG_VERSION").into(),
            layout_version: baton_ebpf::LAYOUT_VERSION,
            handover_protocol: protocol(),
        },
        node: Node {
            kernel: kernel_release(),
            bpffs: cfg.pin_dir.display().to_string(),
            run_dir: cfg.run_dir.display().to_string(),
            cgroup: cfg
                .cgroup
                .as_ref()
                .map(|c| c.display().to_string())
                .unwrap_or_default(),
        },
        passed: failures.is_empty(),
        failures,
        environment,
        programs,
        maps,
        links,
        handover,
        duration_us: micros(t0.elapsed()),
    }
}

/// The running kernel's release, `unknown` when unreadable.
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// A duration in whole microseconds (saturating).
pub(crate) fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// `Pass` when `ok`, else `Fail`.
pub(crate) fn outcome(ok: bool) -> Outcome {
    if ok {
        Outcome::Pass
    } else {
        Outcome::Fail
    }
}
