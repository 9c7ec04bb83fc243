//! Both map layouts from one dependency tree.
//!
//! The layout is a cargo feature of `baton-agent` (`layout-v2`). Built with
//! the same package selection as the main build, only `baton-ebpf` and
//! `baton-agent` recompile (about 16 s) instead of every dependency in a
//! second target directory (11 min on a fresh 2-core machine). The layout-2
//! binary is copied to `target/layout-v2/<profile>/baton-agent`, where tests,
//! images and the bench look for it, and a plain build then puts the layout-1
//! binary back in place. `cargo xtask agent-hooks` does the same for the
//! agent with its test-only switches (`test-hooks`), into
//! `target/test-hooks/<profile>/baton-agent`.

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
    agent_variant(
        profile,
        packages,
        no_default_features,
        "baton-agent/layout-v2",
        "layout-v2",
    )
}

/// Builds the agent with its test-only switches (`baton-agent/test-hooks`:
/// `BATON_TEST_REFUSE_ONE_IN`, `BATON_TEST_BREAK_PROGRAM`, ...) into
/// `target/test-hooks/<profile>/baton-agent`, for test images and the
/// canary's tests; the normal binary is put back afterwards.
pub fn agent_hooks(profile: &str, packages: &[String], no_default_features: bool) -> Result<()> {
    agent_variant(
        profile,
        packages,
        no_default_features,
        "baton-agent/test-hooks",
        "test-hooks",
    )
}

/// Builds `baton-agent` with `feature` on, sharing `packages`' dependency
/// tree, copies it to `target/<dir>/<profile>/baton-agent`, then rebuilds
/// the plain binary in place (no recompile when nothing changed).
fn agent_variant(
    profile: &str,
    packages: &[String],
    no_default_features: bool,
    feature: &str,
    dir: &str,
) -> Result<()> {
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
    build(&["--features", feature])?;
    let target = target_dir()?;
    let built = target.join(profile_dir(profile)).join("baton-agent");
    let dest_dir = target.join(dir).join(profile_dir(profile));
    std::fs::create_dir_all(&dest_dir)
        .with_context(|| format!("creating {}", dest_dir.display()))?;
    let dest = dest_dir.join("baton-agent");
    // Copy through a temporary name: a test may be running the old file.
    let tmp = dest_dir.join(".baton-agent.tmp");
    std::fs::copy(&built, &tmp)
        .with_context(|| format!("copying {} to {}", built.display(), tmp.display()))?;
    std::fs::rename(&tmp, &dest).with_context(|| format!("renaming to {}", dest.display()))?;
    eprintln!(">> {feature} agent: {}", dest.display());
    // Puts the plain binary back where cargo uplifts it (no recompile).
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
