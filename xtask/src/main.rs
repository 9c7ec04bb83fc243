//! `cargo xtask`: the developer tasks README.md, scripts/ and .ci/run share.
//!
//! Each task is the cargo (and script) commands it runs, echoed before they
//! run, so a failing step names itself and its output is never cut.

mod layouts;
mod lint;
mod manifests;
mod run;
mod tiers;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Developer tasks for the Baton workspace.
#[derive(Parser, Debug)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// fmt --check, clippy -D warnings (all targets, the real-node tests too), manifest rules.
    Lint,
    /// Check only the manifest rules (workspace versions, inherited fields and lints).
    Manifests,
    /// Build the workspace (all targets) and the layout-2 agent, reusing one dependency tree.
    Build {
        /// Cargo profile (dev, release, bench).
        #[arg(long, default_value = "dev")]
        profile: String,
    },
    /// Build only the agent for map layout 2, into target/layout-v2/<profile>/baton-agent.
    AgentV2 {
        /// Cargo profile (dev, release, bench).
        #[arg(long, default_value = "dev")]
        profile: String,
        /// Packages of the main build to share dependencies with (default: the workspace).
        #[arg(short = 'p', long = "package")]
        packages: Vec<String>,
        /// As the main build's `--no-default-features` (same dependency features).
        #[arg(long)]
        no_default_features: bool,
    },
    /// Build only the agent with its test-only switches (feature test-hooks),
    /// into target/test-hooks/<profile>/baton-agent.
    AgentHooks {
        /// Cargo profile (dev, release, bench).
        #[arg(long, default_value = "dev")]
        profile: String,
        /// Packages of the main build to share dependencies with (default: the workspace).
        #[arg(short = 'p', long = "package")]
        packages: Vec<String>,
        /// As the main build's `--no-default-features` (same dependency features).
        #[arg(long)]
        no_default_features: bool,
    },
    /// Run test tiers (default: all of them, in order).
    Test {
        /// Tiers to run.
        #[arg(value_enum)]
        tiers: Vec<tiers::Tier>,
        /// Threads per test binary.
        #[arg(long, env = "BATON_TEST_THREADS", default_value_t = 2)]
        threads: usize,
    },
    /// Regenerate the CRD manifests (crds/ and the chart's copy) from the Rust types.
    Crdgen,
    /// Run every fuzz target for a bounded time (nightly + cargo-fuzz).
    Fuzz {
        /// Seconds per target.
        #[arg(default_value_t = 30)]
        seconds: u64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = run::workspace_root()?;
    std::env::set_current_dir(&root)?;
    match cli.task {
        Task::Lint => lint::all(),
        Task::Manifests => manifests::check(&root),
        Task::Build { profile } => layouts::build_all(&profile),
        Task::AgentV2 {
            profile,
            packages,
            no_default_features,
        } => layouts::agent_v2(&profile, &packages, no_default_features),
        Task::AgentHooks {
            profile,
            packages,
            no_default_features,
        } => layouts::agent_hooks(&profile, &packages, no_default_features),
        Task::Test { tiers, threads } => tiers::run(&tiers, threads),
        Task::Crdgen => crdgen(),
        Task::Fuzz { seconds } => run::program("scripts/fuzz.sh", &[&seconds.to_string()]),
    }
}

/// Writes the generated CRD to every committed copy (operator/tests/crd_files.rs checks them).
fn crdgen() -> Result<()> {
    for out in [
        "crds/kmeshupgrade.yaml",
        "charts/baton/crds/kmeshupgrade.yaml",
    ] {
        run::cargo(&[
            "run",
            "-q",
            "--locked",
            "-p",
            "baton-operator",
            "--",
            "crd",
            "-o",
            out,
        ])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn tiers_parse_and_unknown_ones_are_refused() {
        let ok = Cli::try_parse_from(["xtask", "test", "unit", "integration"]);
        assert!(ok.is_ok(), "{ok:?}");
        let bad = Cli::try_parse_from(["xtask", "test", "nightly"]);
        assert!(bad.is_err());
    }
}
