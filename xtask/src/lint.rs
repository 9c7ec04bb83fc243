//! The lint gate CI runs (`.ci/run`) and a developer runs before pushing.

use crate::{manifests, run};
use anyhow::Result;

/// fmt, clippy on every target (the feature-gated real-node tests too), manifest rules.
pub fn all() -> Result<()> {
    run::cargo(&["fmt", "--all", "--check"])?;
    manifests::check(&run::workspace_root()?)?;
    eprintln!(">> manifests: workspace versions, lints and rust-version inherited");
    run::cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ])?;
    run::cargo(&[
        "clippy",
        "-p",
        "baton-e2e",
        "--features",
        "real-node",
        "--test",
        "real_node",
        "--locked",
        "--",
        "-D",
        "warnings",
    ])
}
