//! The edit stream: rewrites the services file every `EDIT_INTERVAL` on its own thread.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{traffic_svcs, EDIT_INTERVAL, EDIT_SERVICES};
use crate::common::{big_eps, service_yaml, Rng, BIG, EPS_PER_SVC};

/// The services file the edit stream rewrites: backend numbers per service of the big state.
pub struct EditState {
    eps: Vec<Vec<u32>>,
    chunks: Vec<String>,
    next: u32,
    rng: Rng,
}

impl EditState {
    pub fn new() -> Self {
        let eps: Vec<Vec<u32>> = (0..BIG).map(big_eps).collect();
        let chunks = eps
            .iter()
            .enumerate()
            .map(|(i, e)| service_yaml(i, e))
            .collect();
        Self {
            eps,
            chunks,
            next: (BIG * EPS_PER_SVC) as u32,
            rng: Rng(0x5851_F42D_4C95_7F2D),
        }
    }

    /// Replaces one endpoint of `EDIT_SERVICES` random services (never a traffic service) by a
    /// backend never used before.
    pub fn edit(&mut self) {
        for _ in 0..EDIT_SERVICES {
            let i = self.rng.below(BIG);
            if traffic_svcs().contains(&i) {
                continue;
            }
            let j = self.rng.below(EPS_PER_SVC);
            self.eps[i][j] = self.next;
            self.next += 1;
            self.chunks[i] = service_yaml(i, &self.eps[i]);
        }
    }

    /// Writes the file atomically (the agent never reads half of it).
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut text =
            String::with_capacity(self.chunks.iter().map(String::len).sum::<usize>() + 16);
        text.push_str("services:\n");
        for c in &self.chunks {
            text.push_str(c);
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming onto {}", path.display()))
    }
}

/// Edits the services file every `EDIT_INTERVAL` on its own thread until stopped.
pub struct Editor {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<(EditState, Result<u64>)>>,
}

impl Editor {
    pub fn start(mut state: EditState, path: PathBuf) -> Result<Self> {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("edit-stream".into())
            .spawn(move || {
                let mut edits = 0u64;
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    state.edit();
                    if let Err(e) = state.write(&path) {
                        return (state, Err(e));
                    }
                    edits += 1;
                    std::thread::sleep(EDIT_INTERVAL);
                }
                (state, Ok(edits))
            })
            .context("spawning the edit stream")?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops; returns the file's state and the number of edits.
    pub fn stop(mut self) -> Result<(EditState, u64)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let handle = self.handle.take().context("edit stream already stopped")?;
        match handle.join() {
            Ok((state, Ok(n))) => Ok((state, n)),
            Ok((_, Err(e))) => Err(e.context("edit stream")),
            Err(_) => bail!("the edit stream panicked"),
        }
    }
}

impl Drop for Editor {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
