//! `baton-operator` command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { output } => {
            let yaml = baton_operator::crd::crd_yaml()?;
            match output {
                Some(path) => std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => print!("{yaml}"),
            }
        }
    }
    Ok(())
}
