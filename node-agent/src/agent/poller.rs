//! The source, polled on a thread of its own from the agent's start: the
//! file is parsed (the Kubernetes caches listed) while the datapath starts,
//! a handover included, so the first sync after the commit applies the
//! latest state at once instead of parsing it then; and later a parse no
//! longer waits for a sync (or a sync for a parse).
//!
//! The thread sleeps on a wake channel between polls: the interval ends it,
//! and so do a stop, a capacity change (flagged in `recheck`) and the
//! source's own [`Notify`] (a watch saw a change), so an event-driven source
//! is polled as soon as it has news, not at the next interval.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::model::{Capacity, DesiredState, LatestState};
use crate::source::{Notify, Source, SourceError};

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
    /// The capacity changed: the source must check its state against it again.
    recheck: Arc<AtomicBool>,
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
        // Wakes the thread from its sleep when it must stop or re-read, or
        // when the source has news; why is in `stop` / `recheck`.
        let (wake, wake_rx) = mpsc::sync_channel::<()>(1);
        let recheck = Arc::new(AtomicBool::new(false));
        let (stop2, cap2, recheck2) = (stop.clone(), cap.clone(), recheck.clone());
        source.set_notify(Notify::new(wake.clone()));
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
                    let wait = source.poll_again_in().map_or(interval, |d| d.min(interval));
                    match wake_rx.recv_timeout(wait) {
                        Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    if recheck2.swap(false, Ordering::SeqCst) {
                        source.capacity_changed();
                    }
                }
            })?;
        Ok(Self {
            stop,
            latest,
            sharing,
            cap,
            recheck,
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
        self.recheck.store(true, Ordering::SeqCst);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// What the test sees of its source.
    #[derive(Default)]
    struct Shared {
        notify: Option<Notify>,
        /// Polls that return a state while set.
        news: bool,
        polls: u32,
        rechecks: u32,
    }

    struct Fake(Arc<Mutex<Shared>>);

    impl Source for Fake {
        fn poll(&mut self, _cap: &Capacity) -> Option<Outcome> {
            let mut s = self.0.lock().unwrap();
            s.polls += 1;
            std::mem::take(&mut s.news).then(|| Ok(DesiredState::default()))
        }

        fn describe(&self) -> String {
            "fake".into()
        }

        fn capacity_changed(&mut self) {
            let mut s = self.0.lock().unwrap();
            s.rechecks += 1;
            s.news = true;
        }

        fn set_notify(&mut self, n: Notify) {
            self.0.lock().unwrap().notify = Some(n);
        }
    }

    const LONG: Duration = Duration::from_secs(10);

    fn start() -> (Poller, Arc<Mutex<Shared>>) {
        let shared = Arc::new(Mutex::new(Shared {
            news: true,
            ..Shared::default()
        }));
        let poller = Poller::start(Box::new(Fake(shared.clone())), Capacity::default(), LONG)
            .expect("start");
        // The first poll's state.
        assert_eq!(poller.next(Duration::from_secs(5)).len(), 1);
        (poller, shared)
    }

    #[test]
    fn notify_wakes_the_poller_before_its_interval() {
        let (poller, shared) = start();
        for _ in 0..3 {
            let t = Instant::now();
            {
                let mut s = shared.lock().unwrap();
                s.news = true;
                s.notify.as_ref().expect("set_notify was called").notify();
            }
            let out = poller.next(Duration::from_secs(5));
            assert_eq!(out.len(), 1);
            assert!(
                t.elapsed() < Duration::from_millis(100),
                "{:?}",
                t.elapsed()
            );
        }
        assert_eq!(
            shared.lock().unwrap().rechecks,
            0,
            "a notify is no capacity change"
        );
    }

    #[test]
    fn a_capacity_change_still_rereads() {
        let (poller, shared) = start();
        let t = Instant::now();
        let cap = Capacity {
            endpoints: Capacity::default().endpoints + 1,
            ..Capacity::default()
        };
        assert!(poller.set_capacity(cap));
        assert!(!poller.set_capacity(cap), "unchanged");
        assert_eq!(poller.next(Duration::from_secs(5)).len(), 1);
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(shared.lock().unwrap().rechecks, 1);
    }

    #[test]
    fn stop_joins_promptly() {
        let (poller, shared) = start();
        let t = Instant::now();
        drop(poller);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        // Only the first poll: the thread slept until the stop.
        assert_eq!(shared.lock().unwrap().polls, 1);
    }

    #[test]
    fn a_wait_hint_shortens_the_sleep() {
        struct Again(Arc<Mutex<u32>>);
        impl Source for Again {
            fn poll(&mut self, _cap: &Capacity) -> Option<Outcome> {
                let mut n = self.0.lock().unwrap();
                *n += 1;
                (*n == 2).then(|| Ok(DesiredState::default()))
            }
            fn describe(&self) -> String {
                "again".into()
            }
            fn poll_again_in(&self) -> Option<Duration> {
                Some(Duration::from_millis(20))
            }
        }
        let polls = Arc::new(Mutex::new(0));
        let poller = Poller::start(Box::new(Again(polls.clone())), Capacity::default(), LONG)
            .expect("start");
        let t = Instant::now();
        assert_eq!(poller.next(Duration::from_secs(5)).len(), 1);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
}
