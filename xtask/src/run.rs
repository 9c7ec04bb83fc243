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
pub fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Variables `cargo run` sets for xtask itself. Build scripts (ring's, via
/// cc) declare `rerun-if-env-changed` on several of them, so passing them on
/// would make every cargo run from here rebuild ring, rustls and kube, and
/// the next plain `cargo build` rebuild them back.
fn is_cargo_run_var(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "OUT_DIR"
        )
}

/// Removes what `cargo run` added to xtask's environment (see [`is_cargo_run_var`]).
fn clean_env(cmd: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(is_cargo_run_var) {
            cmd.env_remove(&name);
        }
    }
}

/// Runs `cmd`, echoing it first; an error names it and its exit status.
pub fn status(mut cmd: Command) -> Result<()> {
    clean_env(&mut cmd);
    let shown = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    eprintln!(">> {shown}");
    let st = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !st.success() {
        bail!("{shown} failed ({st})");
    }
    Ok(())
}

/// `cargo <args>`.
pub fn cargo(args: &[&str]) -> Result<()> {
    cargo_env(args, &[])
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
    let mut cmd = Command::new(path);
    clean_env(&mut cmd);
    let out = cmd
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
