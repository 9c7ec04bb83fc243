//! Test tiers, cheapest first. `cargo xtask test` runs them all; CI too.

use crate::{layouts, run};
use anyhow::Result;
use clap::ValueEnum;

/// A group of tests with the same needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Tier {
    /// Library and binary unit tests, doc tests (some load programs into this kernel).
    Unit,
    /// Every integration test: real kernel, real agent processes, a real
    /// kube-apiserver and the emulated kubelet.
    Integration,
    /// The Helm chart's pytest suite.
    Chart,
    /// The real kubelet + containerd rig with images built here (e2e/node/).
    RealNode,
}

const ALL: &[Tier] = &[Tier::Unit, Tier::Integration, Tier::Chart, Tier::RealNode];

/// Builds what the tiers need once, then runs `tiers` (all when empty).
pub fn run(tiers: &[Tier], threads: usize) -> Result<()> {
    let tiers = if tiers.is_empty() { ALL } else { tiers };
    let threads = format!("--test-threads={threads}");
    let mut env: Vec<(&str, String)> = Vec::new();
    if tiers.contains(&Tier::Integration) && std::env::var_os("BATON_SKIP_APISERVER").is_none() {
        // etcd, kube-apiserver, kubelet, helm: built from their Go modules once, then cached.
        let dir = run::script_output("e2e/cluster/k8s-bins.sh", &[])?;
        env.push(("BATON_K8S_BIN_DIR", dir));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    if tiers
        .iter()
        .any(|t| matches!(t, Tier::Unit | Tier::Integration))
    {
        layouts::build_all("dev")?;
    }
    for tier in tiers {
        eprintln!(">> tier {tier:?}");
        match tier {
            Tier::Unit => {
                run::cargo_env(
                    &[
                        "test",
                        "--workspace",
                        "--locked",
                        "--lib",
                        "--bins",
                        "--",
                        &threads,
                    ],
                    &env,
                )?;
                run::cargo_env(&["test", "--workspace", "--locked", "--doc"], &env)?;
            }
            Tier::Integration => {
                // `--test '*'` refuses targets whose required features are off (real_node).
                let names = integration_tests()?;
                let mut args = vec!["test", "--workspace", "--locked"];
                for name in &names {
                    args.extend(["--test", name.as_str()]);
                }
                args.extend(["--", threads.as_str()]);
                run::cargo_env(&args, &env)?
            }
            Tier::Chart => {
                run::program(
                    "python3",
                    &[
                        "-m",
                        "pip",
                        "install",
                        "-q",
                        "-r",
                        "charts/tests/requirements.txt",
                    ],
                )?;
                run::program("python3", &["-m", "pytest", "-q", "charts/tests"])?;
            }
            Tier::RealNode => run::program("e2e/node/test.sh", &[])?,
        }
    }
    Ok(())
}

/// Integration test targets of the workspace that build with default features.
fn integration_tests() -> Result<Vec<String>> {
    let out = std::process::Command::new(run::cargo_bin())
        .args(["metadata", "--no-deps", "--format-version", "1", "--locked"])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut names = Vec::new();
    for pkg in meta["packages"].as_array().into_iter().flatten() {
        for t in pkg["targets"].as_array().into_iter().flatten() {
            let is_test = t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "test"));
            let defaults = pkg["features"]["default"].as_array();
            let gated = t["required-features"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|f| !defaults.is_some_and(|d| d.contains(f)));
            if let (true, false, Some(name)) = (is_test, gated, t["name"].as_str()) {
                names.push(name.to_string());
            }
        }
    }
    anyhow::ensure!(
        !names.is_empty(),
        "cargo metadata lists no integration tests"
    );
    names.sort();
    names.dedup();
    Ok(names)
}

#[cfg(test)]
mod tests {
    #[test]
    fn integration_tests_skip_targets_behind_non_default_features() {
        let names = super::integration_tests().unwrap();
        for t in ["agent", "cluster", "handover", "preflight", "apiserver_crd"] {
            assert!(names.iter().any(|n| n == t), "{t} missing from {names:?}");
        }
        assert!(!names.iter().any(|n| n == "real_node"), "{names:?}");
    }
}
