//! Manifest rules: one version of each dependency, set in the workspace.
//!
//! Every member inherits `rust-version`, `edition`, `license` and the
//! workspace lints, and names each dependency with `workspace = true`, so a
//! version is written once (the root `[workspace.dependencies]`).

use anyhow::{bail, Context, Result};
use std::path::Path;
use toml::{Table, Value};

const INHERITED: &[&str] = &["version", "edition", "license", "rust-version"];
const DEP_TABLES: &[&str] = &["dependencies", "dev-dependencies", "build-dependencies"];

/// Checks every workspace member's Cargo.toml; the error lists every violation.
pub fn check(root: &Path) -> Result<()> {
    let workspace = read(&root.join("Cargo.toml"))?;
    let members = workspace
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(Value::as_array)
        .context("Cargo.toml: no workspace.members")?;
    let mut problems = Vec::new();
    for member in members.iter().filter_map(Value::as_str) {
        let path = root.join(member).join("Cargo.toml");
        problems.extend(
            member_problems(&read(&path)?)
                .into_iter()
                .map(|p| format!("{member}/Cargo.toml: {p}")),
        );
    }
    if !problems.is_empty() {
        bail!("manifest rules broken:\n  {}", problems.join("\n  "));
    }
    Ok(())
}

fn read(path: &Path) -> Result<Table> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.parse::<Table>()
        .with_context(|| format!("parsing {}", path.display()))
}

/// `{ workspace = true }` (or `x.workspace = true`, the same table).
fn inherits(v: &Value) -> bool {
    v.get("workspace").and_then(Value::as_bool) == Some(true)
}

/// What one member manifest breaks.
fn member_problems(manifest: &Table) -> Vec<String> {
    let mut out = Vec::new();
    let package = manifest.get("package");
    for key in INHERITED {
        if !package.and_then(|p| p.get(*key)).is_some_and(inherits) {
            out.push(format!("package.{key} must be `{key}.workspace = true`"));
        }
    }
    if !manifest.get("lints").is_some_and(inherits) {
        out.push("needs `[lints] workspace = true`".into());
    }
    let targets = manifest
        .get("target")
        .and_then(Value::as_table)
        .into_iter()
        .flat_map(|t| t.values());
    let tables = std::iter::once(manifest as &Table)
        .chain(targets.filter_map(Value::as_table))
        .flat_map(|t| {
            DEP_TABLES
                .iter()
                .filter_map(move |k| Some((*k, t.get(*k)?)))
        });
    for (kind, deps) in tables {
        for (name, spec) in deps.as_table().into_iter().flatten() {
            if !inherits(spec) {
                out.push(format!(
                    "{kind}.{name}: declare it in the root [workspace.dependencies] \
                     and write `{name} = {{ workspace = true, ... }}`"
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        member_problems(&text.parse::<Table>().unwrap())
    }

    const GOOD_PACKAGE: &str = "[package]\nname = \"x\"\nversion.workspace = true\n\
        edition.workspace = true\nlicense.workspace = true\nrust-version.workspace = true\n\
        [lints]\nworkspace = true\n";

    #[test]
    fn a_member_inheriting_everything_passes() {
        let text = format!(
            "{GOOD_PACKAGE}[dependencies]\nserde.workspace = true\n\
             tokio = {{ workspace = true, features = [\"rt\"] }}\n"
        );
        assert_eq!(problems(&text), Vec::<String>::new());
    }

    #[test]
    fn own_versions_and_missing_inheritance_are_named() {
        let text = "[package]\nname = \"x\"\nversion = \"0.1.0\"\nedition.workspace = true\n\
            [dev-dependencies]\ntempfile = \"3\"\n\
            [target.'cfg(unix)'.dependencies]\nlibc = { version = \"0.2\" }\n";
        let p = problems(text);
        for needle in [
            "package.version",
            "package.license",
            "package.rust-version",
            "[lints]",
            "dev-dependencies.tempfile",
            "dependencies.libc",
        ] {
            assert!(p.iter().any(|l| l.contains(needle)), "{needle} in {p:?}");
        }
        assert!(!p.iter().any(|l| l.contains("package.edition")), "{p:?}");
    }
}
