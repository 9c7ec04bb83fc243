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
            Tier::Integration => run::cargo_env(
                &[
                    "test",
                    "--workspace",
                    "--locked",
                    "--test",
                    "*",
                    "--",
                    &threads,
                ],
                &env,
            )?,
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
