//! `baton-operator` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use baton_operator::controller::{self, Settings};
use baton_operator::leader::LeaseLock;
use baton_operator::metrics::{self, Metrics};
use clap::{ArgAction, Parser, Subcommand};
use kube::Api;

/// Baton operator.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the KmeshUpgrade CRD, or write it to a file.
    Crd {
        /// File to write instead of stdout (e.g. crds/kmeshupgrade.yaml).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Run the controller against the cluster of the ambient kubeconfig.
    Run(RunArgs),
    /// Delete a KmeshUpgrade in the foreground and wait until it and its agent
    /// pods are gone, so every agent tears its datapath down (Helm pre-delete hook).
    Uninstall(UninstallArgs),
}

#[derive(clap::Args)]
struct UninstallArgs {
    /// Namespace of the KmeshUpgrade.
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: String,
    /// Name of the KmeshUpgrade.
    #[arg(long)]
    name: String,
    /// Longest wait, e.g. 120s, 5m.
    #[arg(long, default_value = "120s", value_parser = baton_operator::uninstall::parse_timeout)]
    timeout: Duration,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of the /metrics and /healthz endpoint.
    #[arg(long, default_value = "0.0.0.0:9090")]
    metrics_addr: SocketAddr,
    /// Service account the agent pods run as.
    #[arg(long, default_value = "baton-agent")]
    agent_service_account: String,
    /// Elect a leader through a Lease so that only one replica acts.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "baton-operator")]
    lease_name: String,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "baton-system")]
    lease_namespace: String,
    /// This replica's identity (its pod name).
    #[arg(long, env = "POD_NAME", default_value = "baton-operator")]
    identity: String,
    /// How long a lease lasts without renewal, in seconds.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { output } => {
            let yaml = baton_operator::crd::crd_yaml()?;
            match output {
                Some(path) => std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => print!("{yaml}"),
            }
            Ok(())
        }
        Command::Run(args) => run(args).await,
        Command::Uninstall(args) => uninstall(args).await,
    }
}

async fn uninstall(args: UninstallArgs) -> anyhow::Result<()> {
    init_logging();
    let client = kube::Client::try_default()
        .await
        .context("connecting to the cluster")?;
    let outcome =
        baton_operator::uninstall::uninstall(client, &args.namespace, &args.name, args.timeout)
            .await?;
    tracing::info!(namespace = %args.namespace, name = %args.name, ?outcome, "uninstalled");
    Ok(())
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging();
    let client = kube::Client::try_default()
        .await
        .context("connecting to the cluster")?;
    let metrics = Arc::new(Metrics::default());
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding {}", args.metrics_addr))?;
    tokio::spawn(metrics::serve(listener, metrics.clone()));

    let settings = Settings {
        agent_service_account: args.agent_service_account,
        instance: args.identity.clone(),
        ..Settings::default()
    };
    let shutdown = async {
        // On SIGTERM/SIGINT the controller finishes running reconciles and stops.
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the operator");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    if !args.leader_elect {
        controller::run(client, settings, metrics, shutdown).await?;
        return Ok(());
    }
    let lock = LeaseLock::new(
        Api::namespaced(client.clone(), &args.lease_namespace),
        &args.lease_name,
        &args.identity,
        Duration::from_secs(args.lease_seconds),
    );
    lock.acquire().await;
    tokio::select! {
        result = controller::run(client, settings, metrics, shutdown) => result?,
        // Exiting lets the Deployment restart us as a follower.
        lost = lock.hold() => return Err(lost).context("leadership ended"),
    }
    Ok(())
}
