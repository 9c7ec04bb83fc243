//! The source, polled on a thread of its own from the agent's start: the
//! file is parsed (the Kubernetes caches listed) while the datapath starts,
//! a handover included, so the first sync after the commit applies the
//! latest state at once instead of parsing it then; and later a parse no
//! longer waits for a sync (or a sync for a parse).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::model::{Capacity, DesiredState, LatestState};
use crate::source::{Source, SourceError};

/// One outcome of the source, as `Source::poll` returned it.
pub(super) type Outcome = Result<DesiredState, SourceError>;

/// The polling thread; stopped and joined on drop.
pub(super) struct Poller {
    stop: Arc<AtomicBool>,
    /// While the agent starts: the latest state, for a successor to match
    /// its view against before its commit.
    latest: LatestState,
    sharing: Arc<AtomicBool>,
    cap: Arc<Mutex<Capacity>>,
    wake: SyncSender<()>,
    rx: Receiver<Outcome>,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    /// Starts polling `source` every `interval` against `cap` (the build's
    /// capacity until the datapath is known, see [`Poller::set_capacity`]).
    pub(super) fn start(
        mut source: Box<dyn Source>,
        cap: Capacity,
        interval: Duration,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let cap = Arc::new(Mutex::new(cap));
        let (tx, rx) = mpsc::channel();
        // Wakes the thread from its sleep when it must stop or re-read.
        let (wake, wake_rx) = mpsc::sync_channel::<()>(1);
        let (stop2, cap2) = (stop.clone(), cap.clone());
        let latest = LatestState::default();
        let sharing = Arc::new(AtomicBool::new(true));
        let (latest2, sharing2) = (latest.clone(), sharing.clone());
        let thread = std::thread::Builder::new()
            .name("baton-source".into())
            .spawn(move || {
                while !stop2.load(Ordering::SeqCst) {
                    let c = *cap2.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some(o) = source.poll(&c) {
                        if let Ok(d) = &o {
                            // Tells when a state was ready, which may be
                            // long before it could be applied (a handover).
                            tracing::info!(services = d.services.len(), "source state read");
                            if sharing2.load(Ordering::SeqCst) {
                                *latest2.lock().unwrap_or_else(PoisonError::into_inner) =
                                    Some(Arc::new(d.clone()));
                            }
                        }
                        if tx.send(o).is_err() {
                            return;
                        }
                    }
                    match wake_rx.recv_timeout(interval) {
                        Ok(()) => source.capacity_changed(),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })?;
        Ok(Self {
            stop,
            latest,
            sharing,
            cap,
            wake,
            rx,
            thread: Some(thread),
        })
    }

    /// The latest state while the agent starts (see [`Poller::stop_sharing`]).
    pub(super) fn latest(&self) -> LatestState {
        self.latest.clone()
    }

    /// The agent owns its datapath: states only go to the main loop now.
    pub(super) fn stop_sharing(&self) {
        self.sharing.store(false, Ordering::SeqCst);
        self.latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// The datapath's real capacity: when it differs from the one polled
    /// against so far, the source reads its state again against it (an
    /// outcome already queued was checked against the old one).
    pub(super) fn set_capacity(&self, cap: Capacity) -> bool {
        let mut c = self.cap.lock().unwrap_or_else(PoisonError::into_inner);
        if *c == cap {
            return false;
        }
        *c = cap;
        drop(c);
        // Drop what was checked against the old capacity.
        while self.rx.try_recv().is_ok() {}
        let _ = self.wake.try_send(());
        true
    }

    /// The outcomes since the last call, waiting up to `timeout` for the
    /// first. Successive states are coalesced: only the last state counts,
    /// with the errors reported after it.
    pub(super) fn next(&self, timeout: Duration) -> Vec<Outcome> {
        let mut out = match self.rx.recv_timeout(timeout) {
            Ok(o) => vec![o],
            Err(_) => return Vec::new(),
        };
        out.extend(self.rx.try_iter());
        match out.iter().rposition(Result::is_ok) {
            Some(last) if last > 0 => out.split_off(last),
            _ => out,
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.try_send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
