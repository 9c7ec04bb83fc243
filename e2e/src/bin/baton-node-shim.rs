//! `baton-node-shim`: a kubelet stand-in that runs pods' containers as local
//! processes for fake nodes of a real API server (see `baton_e2e::shim`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use baton_e2e::shim::{self, standin, ShimConfig};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "baton-node-shim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Play the kubelet for the given nodes until SIGTERM/SIGINT.
    Run(Box<RunArgs>),
    /// Wait for SIGTERM/SIGINT, exit 0 (what the empty image runs).
    Idle {
        /// Ignored, as `pause` ignores them (pods give both slots the same args).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        ignored: Vec<String>,
    },
    /// Test stand-in: record args and env to <DIR>/<namespace>_<pod>_<container>.jsonl, then idle or exit.
    Record {
        /// Directory of the record files.
        #[arg(long)]
        dir: PathBuf,
        /// Exit with this code instead of idling.
        #[arg(long)]
        exit_code: Option<i32>,
        /// Wait this many milliseconds before exiting.
        #[arg(long)]
        after_ms: Option<u64>,
        /// Ignore SIGTERM (only SIGKILL ends it).
        #[arg(long)]
        ignore_sigterm: bool,
        /// Anything else (e.g. the agent's flags): only recorded.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Kubeconfig of the API server.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Root of the nodes' directories and container logs.
    #[arg(long)]
    root: PathBuf,
    /// A node: NAME[=IP][,LABEL=VALUE...] (repeatable).
    #[arg(long = "node", required = true)]
    nodes: Vec<shim::NodeConfig>,
    /// IMAGE=idle or IMAGE=PROGRAM [ARG...] (repeatable).
    #[arg(long = "image")]
    images: Vec<shim::ImageMapping>,
    /// HOST_PATH=LOCAL_DIR for hostPath volumes; LOCAL_DIR may use {root} and {node} (repeatable).
    #[arg(long = "host-path")]
    host_paths: Vec<shim::HostPathRule>,
    /// NAME=CONTAINER_PATH: set NAME to the local dir behind that path, besides
    /// BATON_BPFFS, BATON_CGROUP and BATON_RUN_DIR (repeatable).
    #[arg(long = "mount-env")]
    mount_env: Vec<shim::MountEnv>,
    /// NAME=VALUE for every container; VALUE may use {root} {node} {host_ip}
    /// {namespace} {pod} {container} (repeatable).
    #[arg(long = "env")]
    env: Vec<shim::EnvTemplate>,
    /// Variable copied from the shim's environment, besides PATH, RUST_LOG, RUST_BACKTRACE (repeatable).
    #[arg(long = "pass-env")]
    pass_env: Vec<String>,
    /// First crash-loop back-off delay, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    backoff_initial_ms: u64,
    /// Largest crash-loop back-off delay, in milliseconds.
    #[arg(long, default_value_t = 300_000)]
    backoff_max_ms: u64,
    /// Node heartbeat period, in seconds.
    #[arg(long, default_value_t = 10)]
    heartbeat_seconds: u64,
    /// Give processes no KUBECONFIG (by default: a per-pod one with the pod's token).
    #[arg(long)]
    no_pod_kubeconfig: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Idle { .. } => standin::idle(),
        Command::Record {
            dir,
            exit_code,
            after_ms,
            ignore_sigterm,
            rest: _,
        } => standin::record(&standin::Record {
            dir,
            exit_code,
            after: after_ms.map(Duration::from_millis),
            ignore_sigterm,
        }),
        Command::Run(args) => match run(*args) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("baton-node-shim: {e:#}");
                2
            }
        },
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let shim_exe = std::env::current_exe().context("locating the shim's own executable")?;
    std::fs::create_dir_all(&args.root)
        .with_context(|| format!("creating {}", args.root.display()))?;
    let root = args
        .root
        .canonicalize()
        .with_context(|| format!("resolving {}", args.root.display()))?;
    let mut cfg = ShimConfig::new(&root, args.nodes, &shim_exe);
    cfg.images = args.images;
    cfg.host_paths = args.host_paths;
    cfg.mount_env.extend(args.mount_env);
    cfg.env = args.env;
    cfg.pass_env.extend(args.pass_env);
    cfg.backoff = shim::Backoff {
        initial: Duration::from_millis(args.backoff_initial_ms),
        max: Duration::from_millis(args.backoff_max_ms.max(args.backoff_initial_ms)),
    };
    cfg.heartbeat = Duration::from_secs(args.heartbeat_seconds.max(1));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let kubeconfig = kube::config::Kubeconfig::read_from(&args.kubeconfig)
            .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
        if !args.no_pod_kubeconfig {
            cfg.pod_api = shim::PodApiAccess::from_kubeconfig(&kubeconfig);
        }
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .context("loading the kubeconfig")?;
        let client = kube::Client::try_from(config).context("building the API client")?;
        shim::run(client, cfg, shutdown_signal()).await?;
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the shim");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
