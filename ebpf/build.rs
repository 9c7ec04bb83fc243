//! Compiles the C datapath with clang, once per map layout, and leaves
//! `baton-v1.bpf.o` and `baton-v2.bpf.o` in OUT_DIR. Both are always built so
//! any build can read the other layout's BTF; the `layout-v2` feature only
//! chooses which one the crate calls its own.
// A build script reports failure by panicking: cargo prints the message.
#![allow(clippy::expect_used, clippy::unwrap_used)]
use std::{env, path::PathBuf, process::Command};

/// Layout generations known to `src/bpf/layout.h`.
const LAYOUTS: [u32; 2] = [1, 2];

fn main() {
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let src = manifest.join("src/bpf/baton.bpf.c");
    println!("cargo:rerun-if-changed=src/bpf");
    println!("cargo:rerun-if-env-changed=CLANG");
    // Feature `test-hooks`: test-only switches in the datapath (see
    // `test_refuse_one_in` in baton.bpf.c); never in a production object.
    let test_hooks = env::var_os("CARGO_FEATURE_TEST_HOOKS").is_some();

    let clang = find_clang();
    let multiarch = Command::new("gcc")
        .arg("-print-multiarch")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            format!(
                "{}-linux-gnu",
                env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default()
            )
        });

    for layout in LAYOUTS {
        let obj = out.join(format!("baton-v{layout}.bpf.o"));
        let status = Command::new(&clang)
            .args(["-g", "-O2", "-target", "bpf", "-Wall", "-Werror"])
            .arg(format!("-I/usr/include/{multiarch}"))
            .arg(format!("-DBATON_LAYOUT={layout}"))
            .args(test_hooks.then_some("-DBATON_TEST_HOOKS"))
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {clang}: {e}. Install clang (apt-get install clang-19 libbpf-dev) \
                     or set CLANG to a clang binary"
                )
            });
        assert!(
            status.success(),
            "{clang} failed to compile {} with BATON_LAYOUT={layout}",
            src.display()
        );
    }
}

/// `CLANG` if set, else the first of clang-19 / clang found on PATH.
fn find_clang() -> String {
    if let Ok(c) = env::var("CLANG") {
        return c;
    }
    for candidate in ["clang-19", "clang"] {
        let found = Command::new(candidate)
            .arg("--version")
            .output()
            .map(|o| o.status.success());
        if matches!(found, Ok(true)) {
            return candidate.to_string();
        }
    }
    panic!("no clang found: install clang-19 and libbpf-dev (apt-get install clang-19 libbpf-dev) or set CLANG");
}
