//! Both map layouts from one dependency tree.
//!
//! The layout is a cargo feature of `baton-agent` (`layout-v2`). Built with
//! the same package selection as the main build, only `baton-ebpf` and
//! `baton-agent` recompile (about 16 s) instead of every dependency in a
//! second target directory (11 min on a fresh 2-core machine). The layout-2
//! binary is copied to `target/layout-v2/<profile>/baton-agent`, where tests,
//! images and the bench look for it, and a plain build then puts the layout-1
//! binary back in place.

use crate::run;
use anyhow::{Context, Result};
use std::path::PathBuf;

/// The workspace build (all targets), the layout-2 agent and the pinned
/// earlier revision's agents (e2e/tests/handover_revisions.rs).
pub fn build_all(profile: &str) -> Result<()> {
    agent_v2(profile, &[], false)?;
    run::cargo(&[
        "build",
        "--workspace",
        "--all-targets",
        "--locked",
        "--profile",
        profile,
    ])?;
    run::program("scripts/build-pinned.sh", &["--profile", profile])
}

/// Builds the layout-2 agent sharing `packages`' dependency tree (the workspace when empty).
pub fn agent_v2(profile: &str, packages: &[String], no_default_features: bool) -> Result<()> {
    let mut selection: Vec<&str> = Vec::new();
    if packages.is_empty() {
        selection.push("--workspace");
    } else {
        for p in packages {
            selection.extend(["-p", p.as_str()]);
        }
    }
    if no_default_features {
        selection.push("--no-default-features");
    }
    let build = |extra: &[&str]| -> Result<()> {
        let mut args = vec![
            "build",
            "--locked",
            "--profile",
            profile,
            "--bin",
            "baton-agent",
        ];
        args.extend(&selection);
        args.extend(extra);
        run::cargo(&args)
    };
    build(&["--features", "baton-agent/layout-v2"])?;
    let target = target_dir()?;
    let built = target.join(profile_dir(profile)).join("baton-agent");
    let dest_dir = target.join("layout-v2").join(profile_dir(profile));
    std::fs::create_dir_all(&dest_dir)
        .with_context(|| format!("creating {}", dest_dir.display()))?;
    let dest = dest_dir.join("baton-agent");
    // Copy through a temporary name: a test may be running the old file.
    let tmp = dest_dir.join(".baton-agent.tmp");
    std::fs::copy(&built, &tmp)
        .with_context(|| format!("copying {} to {}", built.display(), tmp.display()))?;
    std::fs::rename(&tmp, &dest).with_context(|| format!("renaming to {}", dest.display()))?;
    eprintln!(">> layout-2 agent: {}", dest.display());
    // Puts the layout-1 binary back where cargo uplifts it (no recompile).
    build(&[])
}

/// The directory a profile's artifacts land in.
fn profile_dir(profile: &str) -> &str {
    match profile {
        "dev" | "test" => "debug",
        "bench" => "release",
        other => other,
    }
}

/// `$CARGO_TARGET_DIR` or `<workspace>/target`.
fn target_dir() -> Result<PathBuf> {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => Ok(run::workspace_root()?.join("target")),
    }
}
