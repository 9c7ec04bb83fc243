//! Every `baton-agent` flag the docs show exists: an example copied from
//! README.md, docs/ or the chart (e.g. `extraArgs`, which the operator passes
//! to `baton-agent run` in both slots) must not crash-loop a pod on an
//! unknown flag.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const SUBCOMMANDS: &[&str] = &[
    "run",
    "check",
    "status",
    "dump",
    "verify",
    "teardown",
    "preflight",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Documentation a user copies from.
fn doc_files() -> Vec<PathBuf> {
    let root = repo();
    let mut files = vec![
        root.join("README.md"),
        root.join("kmeshupgrade.yaml"),
        root.join("charts/baton/values.yaml"),
    ];
    for dir in ["docs", "charts/baton"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "md") {
                files.push(p);
            }
        }
    }
    files.retain(|p| p.is_file());
    files
}

/// `--flag` tokens of a text (a trailing `=value` dropped).
fn flags(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| c.is_whitespace() || "[]\"'`,()|".contains(c))
        .filter(|t| t.starts_with("--") && t.len() > 2)
        .map(|t| {
            t.split('=')
                .next()
                .unwrap()
                .trim_end_matches(['.', ':', ';'])
                .to_string()
        })
        .filter(|t| {
            t[2..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// (subcommand → flags) the docs use, with where each was seen.
fn documented() -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for file in doc_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.strip_prefix(repo()).unwrap().display().to_string();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let at = format!("{name}:{}", i + 1);
            // `extraArgs` are `baton-agent run` flags.
            if let Some(rest) = line.split("extraArgs:").nth(1) {
                let code = rest.split('#').next().unwrap();
                for f in flags(code) {
                    out.entry("run".into()).or_default().insert(f, at.clone());
                }
            }
            for (pos, _) in line.match_indices("baton-agent ") {
                let rest = &line[pos + "baton-agent ".len()..];
                let Some(sub) = SUBCOMMANDS.iter().find(|s| {
                    rest.starts_with(*s)
                        && !rest[s.len()..].starts_with(|c: char| c.is_alphanumeric())
                }) else {
                    continue;
                };
                // The command up to the end of its code span, plus shell
                // continuation lines; a `#` starts a comment.
                let mut cmd = rest.split('`').next().unwrap().to_string();
                let mut j = i;
                while cmd.trim_end().ends_with('\\') && j + 1 < lines.len() {
                    j += 1;
                    cmd.push(' ');
                    cmd.push_str(lines[j]);
                }
                let cmd: String = cmd
                    .lines()
                    .map(|l| l.split(" #").next().unwrap())
                    .collect::<Vec<_>>()
                    .join(" ");
                for f in flags(&cmd) {
                    out.entry((*sub).into()).or_default().insert(f, at.clone());
                }
            }
        }
    }
    out
}

/// Long flags `baton-agent <sub> --help` lists.
fn known(sub: &str) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_baton-agent"))
        .args([sub, "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "baton-agent {sub} --help failed");
    flags(&String::from_utf8_lossy(&out.stdout)).collect()
}

#[test]
fn every_documented_agent_flag_exists() {
    let docs = documented();
    assert!(
        docs.get("run")
            .is_some_and(|f| f.contains_key("--services")),
        "the scan found no `baton-agent run --services` in README.md: {docs:?}"
    );
    let mut unknown = Vec::new();
    for (sub, used) in &docs {
        let known = known(sub);
        for (flag, at) in used {
            if !known.contains(flag) {
                unknown.push(format!("{at}: `baton-agent {sub} {flag}` is not a flag"));
            }
        }
    }
    assert!(unknown.is_empty(), "{}", unknown.join("\n"));
}

#[test]
fn the_scan_catches_a_made_up_flag() {
    let known = known("run");
    assert!(known.contains("--handover-timeout-ms"), "{known:?}");
    let made_up: Vec<String> = flags(r#"extraArgs: ["--log=info"]"#).collect();
    assert_eq!(made_up, ["--log"]);
    assert!(!known.contains("--log"));
}
