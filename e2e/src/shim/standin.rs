//! Stand-in container processes, run as modes of the `baton-node-shim`
//! binary so tests need nothing from PATH: `idle` (the empty image) and
//! `record` (writes what it was started with, then idles, exits or crashes).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{self, SigHandler, SigSet, Signal};

/// Blocks SIGTERM/SIGINT (all threads started later inherit it) and returns the set.
fn block(with_term: bool) -> nix::Result<SigSet> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    if with_term {
        set.add(Signal::SIGTERM);
    }
    set.thread_block()?;
    Ok(set)
}

/// `idle`: waits for SIGTERM or SIGINT and exits 0 (what an empty image does).
pub fn idle() -> i32 {
    match block(true).and_then(|set| set.wait()) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("baton-node-shim idle: {e}");
            1
        }
    }
}

/// Options of `record`.
#[derive(Clone, Debug, Default)]
pub struct Record {
    /// Directory of the `.jsonl` files.
    pub dir: PathBuf,
    /// Exit with this code instead of idling.
    pub exit_code: Option<i32>,
    /// ... after this long.
    pub after: Option<Duration>,
    /// Ignore SIGTERM, so only SIGKILL ends it (tests the grace period).
    pub ignore_sigterm: bool,
}

/// File a `record` process appends to: `<dir>/<namespace>_<pod>_<container>.jsonl`
/// (from the shim's `BATON_SHIM_*` variables).
pub fn record_file(dir: &Path, namespace: &str, pod: &str, container: &str) -> PathBuf {
    dir.join(format!("{namespace}_{pod}_{container}.jsonl"))
}

fn append(path: &Path, line: &serde_json::Value) {
    let text = format!("{line}\n");
    let written = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        // One write per line: concurrent runs never interleave inside a line.
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = written {
        eprintln!("baton-node-shim record: writing {}: {e}", path.display());
    }
}

/// `record`: appends `{"event":"start", pid, args, env}` to its file, then
/// exits with `exit_code` (after `after`) or idles until a signal (appending
/// `{"event":"signal"}`, exit 0).
pub fn record(opts: &Record) -> i32 {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let file = record_file(
        &opts.dir,
        &var("BATON_SHIM_NAMESPACE"),
        &var("BATON_SHIM_POD"),
        &var("BATON_SHIM_CONTAINER"),
    );
    if opts.ignore_sigterm {
        // SAFETY: installing SIG_IGN before any other thread exists.
        if let Err(e) = unsafe { signal::signal(Signal::SIGTERM, SigHandler::SigIgn) } {
            eprintln!("baton-node-shim record: ignoring SIGTERM: {e}");
            return 1;
        }
    }
    let set = match block(!opts.ignore_sigterm) {
        Ok(set) => set,
        Err(e) => {
            eprintln!("baton-node-shim record: blocking signals: {e}");
            return 1;
        }
    };
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let args: Vec<String> = std::env::args().collect();
    append(
        &file,
        &serde_json::json!({"event": "start", "pid": std::process::id(), "args": args, "env": env}),
    );
    eprintln!(
        "baton-node-shim record: started, recording to {}",
        file.display()
    );
    if let Some(code) = opts.exit_code {
        let after = opts.after.unwrap_or_default();
        // A thread, so signals are still answered while waiting.
        let path = file.clone();
        std::thread::spawn(move || {
            std::thread::sleep(after);
            append(&path, &serde_json::json!({"event": "exit", "code": code}));
            eprintln!("baton-node-shim record: exiting with {code}");
            std::process::exit(code);
        });
    }
    match set.wait() {
        Ok(sig) => {
            append(
                &file,
                &serde_json::json!({"event": "signal", "signal": sig.as_str()}),
            );
            0
        }
        Err(e) => {
            eprintln!("baton-node-shim record: waiting for signals: {e}");
            1
        }
    }
}
