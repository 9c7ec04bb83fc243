//! Running child commands: echoed, inherited output, failure names the command.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(PathBuf::from)
        .context("xtask has no parent directory")
}

/// The cargo that runs this task (so a toolchain override carries over).
fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Runs `cmd`, echoing it first; an error names it and its exit status.
pub fn status(mut cmd: Command) -> Result<()> {
    let shown = format!("{cmd:?}").replace('"', "");
    eprintln!(">> {shown}");
    let st = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !st.success() {
        bail!("{shown} failed ({st})");
    }
    Ok(())
}

/// `cargo <args>`.
pub fn cargo(args: &[&str]) -> Result<()> {
    let mut cmd = Command::new(cargo_bin());
    cmd.args(args);
    status(cmd)
}

/// `cargo <args>` with extra environment.
pub fn cargo_env(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let mut cmd = Command::new(cargo_bin());
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    status(cmd)
}

/// Any program (a repository script, python3) with arguments.
pub fn program(path: &str, args: &[&str]) -> Result<()> {
    let mut cmd = Command::new(path);
    cmd.args(args);
    status(cmd)
}

/// Stdout of a repository script (its last line), e.g. a path it prints.
pub fn script_output(path: &str, args: &[&str]) -> Result<String> {
    eprintln!(">> {path} {}", args.join(" "));
    let out = Command::new(path)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("starting {path}"))?;
    if !out.status.success() {
        bail!("{path} failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().last().unwrap_or_default().trim().to_string())
}
