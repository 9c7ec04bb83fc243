//! The write journal a handing-over agent keeps between `Prepare` and
//! `Freeze`: the keys it wrote, so its successor re-copies just those under
//! the freeze instead of every entry.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Keys written to the maps while recording, in write order.
#[derive(Debug, Default)]
pub struct Journal {
    on: AtomicBool,
    keys: Mutex<Vec<(&'static str, Vec<u8>)>>,
}

impl Journal {
    /// Starts recording (clearing anything older).
    pub fn start(&self) {
        let mut k = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        k.clear();
        self.on.store(true, Ordering::SeqCst);
    }

    /// Stops recording and returns what was recorded.
    pub fn stop(&self) -> Vec<(&'static str, Vec<u8>)> {
        self.on.store(false, Ordering::SeqCst);
        std::mem::take(&mut *self.keys.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether writes are being recorded.
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::SeqCst)
    }

    /// Records a write of `key` to `map` when recording (one atomic load otherwise).
    pub fn record(&self, map: &'static str, key: &[u8]) {
        if self.on.load(Ordering::Relaxed) {
            self.keys
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((map, key.to_vec()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_between_start_and_stop() {
        let j = Journal::default();
        j.record("backend", &[1]);
        j.start();
        j.record("backend", &[2]);
        j.record("endpoint", &[3, 4]);
        assert_eq!(
            j.stop(),
            vec![("backend", vec![2]), ("endpoint", vec![3, 4])]
        );
        j.record("backend", &[5]);
        assert!(j.stop().is_empty());
    }
}
