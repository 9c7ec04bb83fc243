//! `baton-probe`: generates real TCP traffic from inside a test cgroup, confined to a private netns.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use baton_e2e::client::{LoadConfig, Plan, Timeouts};
use baton_e2e::probe::{self, Placement, RunOptions};
use clap::{Args, Parser, Subcommand};

/// Traffic probe for the Baton datapath tests, demo and benchmarks.
#[derive(Debug, Parser)]
#[command(name = "baton-probe", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start backends, connect to targets, print a JSON report on stdout.
    ///
    /// Exits 0 whenever the run completed (failed connects are in the report);
    /// non-zero only on setup errors.
    Run(RunArgs),
    /// Run backends only, until SIGTERM/SIGINT.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// cgroup v2 directory to join before anything else (must exist).
    #[arg(long, value_name = "DIR")]
    cgroup: Option<PathBuf>,
    /// Do NOT enter a private network namespace (traffic to un-rewritten VIPs may leave the host).
    #[arg(long)]
    no_netns: bool,
    /// Backend listen address (repeatable), e.g. `127.0.0.10:8080` or `[::1]:9001`.
    #[arg(long = "backend", value_name = "ADDR")]
    backends: Vec<SocketAddr>,
    /// Address to connect to (repeatable), e.g. a service VIP:port; used round-robin.
    #[arg(long = "target", value_name = "ADDR", required = true)]
    targets: Vec<SocketAddr>,
    /// Number of connects to make.
    #[arg(
        long,
        value_name = "N",
        conflicts_with = "duration_ms",
        required_unless_present = "duration_ms"
    )]
    connects: Option<u64>,
    /// Make connects for this many milliseconds.
    #[arg(long, value_name = "MS")]
    duration_ms: Option<u64>,
    /// Paced rate in connects/s over all workers (default: as fast as possible).
    #[arg(long, value_name = "R")]
    rate: Option<f64>,
    /// Add the backends' IPv4 addresses outside 127/8 (pod IPs such as
    /// `10.244.0.11`) to `lo` as /32s inside the private netns before binding.
    #[arg(long)]
    local_backends: bool,
    /// Worker threads.
    #[arg(long, value_name = "C", default_value_t = 4)]
    concurrency: usize,
    /// Long-lived connections to open before the load and echo-check after it.
    #[arg(long, value_name = "N", default_value_t = 0)]
    hold: u64,
    /// connect() timeout in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    connect_timeout_ms: u64,
    /// Identity-line / echo read timeout in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    read_timeout_ms: u64,
    /// Written (JSON: pid, backends, held) once backends listen and held connections are open.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
    /// End the run early when this file appears.
    #[arg(long, value_name = "PATH")]
    stop_file: Option<PathBuf>,
    /// Pretty-print the JSON report.
    #[arg(long)]
    pretty: bool,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// cgroup v2 directory to join (must exist).
    #[arg(long, value_name = "DIR")]
    cgroup: Option<PathBuf>,
    /// Serve inside a private network namespace (reachable only via nsenter).
    #[arg(long)]
    netns: bool,
    /// Backend listen address (repeatable).
    #[arg(long = "backend", value_name = "ADDR", required = true)]
    backends: Vec<SocketAddr>,
    /// With --netns: add non-loopback IPv4 backend addresses to `lo` first (as for `run`).
    #[arg(long)]
    local_backends: bool,
    /// Written (JSON) once the backends listen.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    // Nothing before this point may spawn a thread: the sandbox needs a single-threaded process.
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run(args) => run(args),
        Cmd::Serve(args) => serve(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton-probe: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    if a.no_netns {
        eprintln!("baton-probe: warning: --no-netns: connects that are not rewritten use the host network");
    }
    let plan = match (a.connects, a.duration_ms) {
        (Some(n), None) => Plan::Connects(n),
        (None, Some(ms)) => Plan::Duration(Duration::from_millis(ms)),
        _ => anyhow::bail!("exactly one of --connects or --duration-ms is required"),
    };
    let opts = RunOptions {
        placement: Placement {
            cgroup: a.cgroup,
            netns: !a.no_netns,
            local_backends: a.local_backends,
        },
        backends: a.backends,
        load: LoadConfig {
            targets: a.targets,
            plan,
            rate: a.rate,
            concurrency: a.concurrency,
            timeouts: Timeouts {
                connect: Duration::from_millis(a.connect_timeout_ms),
                read: Duration::from_millis(a.read_timeout_ms),
            },
        },
        hold: a.hold,
        ready_file: a.ready_file,
        stop_file: a.stop_file,
    };
    let report = probe::run(&opts)?;
    let json = if a.pretty {
        serde_json::to_string_pretty(&report)
    } else {
        serde_json::to_string(&report)
    }
    .context("serializing report")?;
    println!("{json}");
    Ok(())
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let placement = Placement {
        cgroup: a.cgroup,
        netns: a.netns,
        local_backends: a.local_backends,
    };
    probe::serve(&placement, &a.backends, a.ready_file.as_deref())?;
    Ok(())
}
