//! Waiting for a condition: every poll loop of the tests, in one place.

use std::path::Path;
use std::time::{Duration, Instant};

use super::error::{Error, Result};

/// The default polling interval.
pub const POLL: Duration = Duration::from_millis(10);

/// Polls `cond` every [`POLL`] until it holds; false when `timeout` passed first.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    poll(
        "a condition",
        timeout,
        POLL,
        || cond().then_some(()),
        String::new,
    )
    .is_ok()
}

/// Polls `f` every `every` until it returns `Some`; after `timeout`, an
/// [`Error::Timeout`] for `what` carrying `context()` (a log tail, the last
/// state seen), computed only then.
pub fn poll<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
    context: impl FnOnce() -> String,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::Timeout {
                what: what.to_owned(),
                after: timeout,
                context: context(),
            });
        }
        std::thread::sleep(every.min(deadline - now));
    }
}

/// Polls until `path` exists; false on timeout.
pub fn wait_for_file(path: &Path, timeout: Duration) -> bool {
    wait_until(timeout, || path.exists())
}

/// The async [`poll`], every 100 ms: for tests on a tokio runtime (API server checks).
#[cfg(feature = "apiserver")]
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    context: impl FnOnce() -> String,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            return Err(Error::Timeout {
                what: what.to_owned(),
                after: timeout,
                context: context(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
