//! One binary locator: `baton-agent` of either map layout, `baton-probe`,
//! `baton-operator` and `baton-node-shim`; and the agents of the pinned
//! earlier revision ([`pinned_agent_bin`]).
//!
//! An environment variable overrides each (`BATON_AGENT_V1`/`_V2`,
//! `BATON_AGENT_BIN` for this build's layout, `BATON_PROBE_BIN`,
//! `BATON_OPERATOR_BIN`, `BATON_NODE_SHIM_BIN`). Otherwise a binary is taken
//! from the target directory and profile of the running executable
//! (`<target>/<profile>/`, as `cargo build --workspace --bins` leaves it),
//! the other layout's agent from `<target>/layout-v<n>/<profile>/` (where
//! `cargo xtask agent-v2` puts it). Nothing is built here: a missing binary
//! is an [`Error::Binary`] naming the command that builds it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

use super::error::{Error, Result};

/// Overrides where `baton-probe` is found.
pub const PROBE_BIN_ENV: &str = "BATON_PROBE_BIN";
/// Overrides where `baton-node-shim` is found.
pub const SHIM_BIN_ENV: &str = "BATON_NODE_SHIM_BIN";
/// Overrides where `baton-operator` is found.
pub const OPERATOR_BIN_ENV: &str = "BATON_OPERATOR_BIN";
/// Overrides where the agent of this build's layout is found (after `BATON_AGENT_V<n>`).
pub const AGENT_BIN_ENV: &str = "BATON_AGENT_BIN";

/// The repository root (the workspace).
pub fn workspace_root() -> PathBuf {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR"));
    e2e.parent().unwrap_or(e2e).to_path_buf()
}

/// `(target dir, profile dir)` of the running executable, which lives in
/// `<target>/<profile>/` or, for tests, `<target>/<profile>/deps/`; else the
/// workspace's `target/` and this build's profile.
pub fn target_and_profile() -> (PathBuf, String) {
    let own = || {
        let exe = std::env::current_exe().ok()?;
        let mut dir = exe.parent()?;
        if dir.file_name()? == "deps" {
            dir = dir.parent()?;
        }
        let profile = dir.file_name()?.to_str()?.to_string();
        Some((dir.parent()?.to_path_buf(), profile))
    };
    own().unwrap_or_else(|| {
        let profile = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        };
        (workspace_root().join("target"), profile.to_string())
    })
}

/// Cargo's profile flag for a profile directory (`debug` needs none).
fn profile_flag(profile: &str) -> String {
    match profile {
        "debug" => String::new(),
        "release" => " --release".into(),
        other => format!(" --profile {other}"),
    }
}

/// `$env` if set (it must name a file), else the first of `candidates` that
/// is a file, else an [`Error::Binary`] with `build`.
fn locate(name: &str, env: &str, candidates: Vec<PathBuf>, build: String) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let path = PathBuf::from(p);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::BadOverride {
                env: env.to_owned(),
                path,
            })
        };
    }
    match candidates.iter().find(|p| p.is_file()) {
        Some(p) => Ok(p.clone()),
        None => Err(Error::Binary {
            name: name.to_owned(),
            tried: candidates,
            build,
            env: Some(env.to_owned()),
        }),
    }
}

/// A binary of this workspace in `<target>/<profile>/`.
fn workspace_bin(name: &str, env: &str, package: &str) -> Result<PathBuf> {
    let (target, profile) = target_and_profile();
    let build = format!(
        "cargo build -p {package} --bin {name}{}",
        profile_flag(&profile)
    );
    locate(name, env, vec![target.join(&profile).join(name)], build)
}

/// `baton-probe`.
pub fn probe_bin() -> Result<PathBuf> {
    workspace_bin("baton-probe", PROBE_BIN_ENV, "baton-e2e")
}

/// `baton-node-shim`.
pub fn shim_bin() -> Result<PathBuf> {
    workspace_bin("baton-node-shim", SHIM_BIN_ENV, "baton-e2e")
}

/// `baton-operator`.
pub fn operator_bin() -> Result<PathBuf> {
    workspace_bin("baton-operator", OPERATOR_BIN_ENV, "baton-operator")
}

/// Environment variable naming the `baton-agent` binary of map layout
/// `layout` (`BATON_AGENT_V1`, `BATON_AGENT_V2`).
pub fn agent_bin_env(layout: u32) -> String {
    format!("BATON_AGENT_V{layout}")
}

/// The other map layout (1 ↔ 2).
pub fn other_layout(layout: u32) -> u32 {
    if layout == 1 {
        2
    } else {
        1
    }
}

/// Overrides where the agent with test hooks ([`hooks_agent_bin`]) is found.
pub const HOOKS_AGENT_BIN_ENV: &str = "BATON_AGENT_HOOKS";

/// Whether the agent binary at `path` was built with the test-only datapath
/// switches (feature `test-hooks`): its embedded object names the global.
pub fn has_test_hooks(path: &Path) -> bool {
    let marker = baton_ebpf::TEST_REFUSE_ONE_IN_GLOBAL.as_bytes();
    std::fs::read(path).is_ok_and(|bin| bin.windows(marker.len()).any(|w| w == marker))
}

/// `baton-agent` of this build's layout with its test hooks
/// (`BATON_TEST_REFUSE_ONE_IN`, ...): `$BATON_AGENT_HOOKS`, else
/// `<target>/test-hooks/<profile>/baton-agent` (`cargo xtask agent-hooks`),
/// else this build's own agent when it has them (a `cargo test --workspace`
/// or `--all-targets` build turns the feature on through baton-agent's
/// dev-dependency on itself).
pub fn hooks_agent_bin() -> Result<PathBuf> {
    let (target, profile) = target_and_profile();
    let built = target.join("test-hooks").join(&profile).join("baton-agent");
    if std::env::var_os(HOOKS_AGENT_BIN_ENV).is_none() && !built.is_file() {
        if let Ok(own) = agent_bin(baton_ebpf::LAYOUT_VERSION) {
            if has_test_hooks(&own) {
                return Ok(own);
            }
        }
    }
    let p = match profile.as_str() {
        "debug" => String::new(),
        other => format!(" --profile {other}"),
    };
    let path = locate(
        "baton-agent (test hooks)",
        HOOKS_AGENT_BIN_ENV,
        vec![built],
        format!("cargo xtask agent-hooks{p}"),
    )?;
    if has_test_hooks(&path) {
        Ok(path)
    } else {
        Err(Error::check(
            "an agent with test hooks",
            format!(
                "{} has no {} (a production build?); rebuild it with `cargo xtask agent-hooks{p}`",
                path.display(),
                baton_ebpf::TEST_REFUSE_ONE_IN_GLOBAL
            ),
        ))
    }
}

/// `baton-agent` of map layout `layout` (1 or 2), looked up once per process.
///
/// `$BATON_AGENT_V<layout>` wins. For this build's layout
/// ([`baton_ebpf::LAYOUT_VERSION`]) it is `$BATON_AGENT_BIN` or
/// `<target>/<profile>/baton-agent`; for the other one
/// `<target>/layout-v<layout>/<profile>/baton-agent`.
pub fn agent_bin(layout: u32) -> Result<PathBuf> {
    static FOUND: OnceLock<Mutex<BTreeMap<u32, PathBuf>>> = OnceLock::new();
    let found = FOUND.get_or_init(Default::default);
    let mut found = found.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(p) = found.get(&layout) {
        return Ok(p.clone());
    }
    let path = find_agent(layout)?;
    found.insert(layout, path.clone());
    Ok(path)
}

fn find_agent(layout: u32) -> Result<PathBuf> {
    if !baton_ebpf::LAYOUTS.contains(&layout) {
        return Err(Error::check(
            "a map layout",
            format!("no layout {layout} (known: {:?})", baton_ebpf::LAYOUTS),
        ));
    }
    let env = agent_bin_env(layout);
    let name = format!("baton-agent (layout {layout})");
    let (target, profile) = target_and_profile();
    if std::env::var_os(&env).is_none() && layout == baton_ebpf::LAYOUT_VERSION {
        let build = format!(
            "cargo build -p baton-agent{}{}",
            if layout == 2 {
                " --features layout-v2"
            } else {
                ""
            },
            profile_flag(&profile)
        );
        return locate(
            &name,
            AGENT_BIN_ENV,
            vec![target.join(&profile).join("baton-agent")],
            build,
        );
    }
    let build = if layout == 2 {
        let p = match profile.as_str() {
            "debug" => String::new(),
            other => format!(" --profile {other}"),
        };
        format!("cargo xtask agent-v2{p}")
    } else {
        format!(
            "cargo build -p baton-agent{} --target-dir {}",
            profile_flag(&profile),
            target.join(format!("layout-v{layout}")).display()
        )
    };
    locate(
        &name,
        &env,
        vec![target
            .join(format!("layout-v{layout}"))
            .join(&profile)
            .join("baton-agent")],
        build,
    )
}

/// The pinned earlier revision: the first line of `e2e/pinned-revision`
/// that is a 40-hex commit id.
pub fn pinned_revision() -> Result<String> {
    let path = workspace_root().join("e2e/pinned-revision");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    first_commit_id(&text)
        .ok_or_else(|| Error::check(format!("{}", path.display()), "no 40-hex commit id"))
}

fn first_commit_id(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|l| l.len() == 40 && l.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
}

/// `baton-agent` of map layout `layout` (1 or 2) built from the pinned
/// earlier revision ([`pinned_revision`]):
/// `<target>/pinned/<profile>/baton-agent-v<layout>`, which
/// `scripts/build-pinned.sh` puts there. A missing one is an
/// [`Error::Binary`] naming that script (with this build's profile flag);
/// one built from another commit than the pinned one (the directory's
/// `revision` stamp) is an [`Error::Check`]. No override: the point is
/// that exact build.
pub fn pinned_agent_bin(layout: u32) -> Result<PathBuf> {
    let (target, profile) = target_and_profile();
    pinned_agent_in(
        &target.join("pinned").join(&profile),
        &profile,
        layout,
        &pinned_revision()?,
    )
}

/// [`pinned_agent_bin`] in `dir` (a profile directory of `<target>/pinned/`).
fn pinned_agent_in(dir: &Path, profile: &str, layout: u32, rev: &str) -> Result<PathBuf> {
    if !baton_ebpf::LAYOUTS.contains(&layout) {
        return Err(Error::check(
            "a map layout",
            format!("no layout {layout} (known: {:?})", baton_ebpf::LAYOUTS),
        ));
    }
    let bin = dir.join(format!("baton-agent-v{layout}"));
    let build = format!("scripts/build-pinned.sh{}", profile_flag(profile));
    if !bin.is_file() {
        return Err(Error::Binary {
            name: format!("baton-agent of the pinned revision {rev} (layout {layout})"),
            tried: vec![bin],
            build,
            env: None,
        });
    }
    let stamp = dir.join("revision");
    let built = std::fs::read_to_string(&stamp).unwrap_or_default();
    if built.trim() != rev {
        return Err(Error::check(
            format!("the pinned agent {}", bin.display()),
            format!(
                "built from {:?} ({}), not from e2e/pinned-revision's {rev}: run `{build}`",
                built.trim(),
                stamp.display()
            ),
        ));
    }
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_names_its_build_command_and_override() {
        let e = locate(
            "baton-x",
            "BATON_KIT_TEST_UNSET",
            vec![PathBuf::from("/nonexistent/baton-x")],
            "cargo build -p baton-x".into(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`cargo build -p baton-x`") && e.contains("BATON_KIT_TEST_UNSET"),
            "{e}"
        );
    }

    #[test]
    fn the_other_layout_is_built_by_xtask() {
        let other = other_layout(baton_ebpf::LAYOUT_VERSION);
        if std::env::var_os(agent_bin_env(other)).is_some() {
            return;
        }
        if let Err(e) = find_agent(other) {
            let want = if other == 2 {
                "cargo xtask agent-v2"
            } else {
                "--target-dir"
            };
            assert!(e.to_string().contains(want), "{e}");
        }
        assert!(find_agent(7).is_err());
    }

    #[test]
    fn a_pinned_agent_must_exist_and_be_stamped_with_the_pinned_commit() {
        let rev = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            first_commit_id(&format!("# why\n{rev}\n")).as_deref(),
            Some(rev)
        );
        let dir = tempfile::tempdir().unwrap();
        let e = pinned_agent_in(dir.path(), "release", 2, rev)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`scripts/build-pinned.sh --release`") && e.contains(rev),
            "{e}"
        );
        std::fs::write(dir.path().join("baton-agent-v2"), "").unwrap();
        let e = pinned_agent_in(dir.path(), "debug", 2, rev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`scripts/build-pinned.sh`"), "{e}");
        std::fs::write(dir.path().join("revision"), format!("{rev}\n")).unwrap();
        assert_eq!(
            pinned_agent_in(dir.path(), "debug", 2, rev).unwrap(),
            dir.path().join("baton-agent-v2")
        );
        assert!(pinned_agent_in(dir.path(), "debug", 7, rev).is_err());
    }
}
