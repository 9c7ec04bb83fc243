//! Where the desired state comes from: a YAML file on one machine, Services +
//! EndpointSlices in a cluster. Both produce the same `DesiredState`.

pub mod chunked;
pub mod file;
pub mod kube;
pub mod reader;
mod yaml;

pub use self::kube::{KubeOptions, KubeSource};
pub use file::{FileSource, SourceError};

use std::sync::mpsc::SyncSender;
use std::time::Duration;

use crate::model::{Capacity, DesiredState};

/// Wakes the agent's source thread before its poll interval ends: the
/// source has news (see [`Source::set_notify`]). Cloneable, cheap to call
/// from any thread; wakes that arrive while one is pending are merged.
#[derive(Clone, Debug)]
pub struct Notify(SyncSender<()>);

impl Notify {
    /// A handle that sends on `wake` (a channel of capacity 1 is enough:
    /// one pending wake is as good as many).
    pub fn new(wake: SyncSender<()>) -> Self {
        Self(wake)
    }

    /// Asks for a poll now; never blocks.
    pub fn notify(&self) {
        let _ = self.0.try_send(());
    }
}

/// A source of desired state, polled by the agent's loop.
pub trait Source: Send {
    /// The new desired state when it changed since the last call (always on
    /// the first call once the source has something); `None` when unchanged.
    /// An `Err` is reported and the previously applied state keeps serving.
    fn poll(&mut self, cap: &Capacity) -> Option<Result<DesiredState, SourceError>>;

    /// Human-readable description for logs and status (`file:/etc/…`, `kubernetes`).
    fn describe(&self) -> String;

    /// The capacity passed to `poll` changed: the next outcome must be
    /// checked against the new one even if the source did not change. The
    /// agent polls its source before it knows its maps (while it takes the
    /// datapath over), against the build's capacity. A source that checks
    /// the capacity in `poll` itself needs nothing here.
    fn capacity_changed(&mut self) {}

    /// Called once by the poller before the first `poll`: a source that
    /// learns of changes by itself (watches) calls `n.notify()` then, and is
    /// polled at once instead of at the end of the interval. A source without
    /// events (the file) ignores it and is polled every interval.
    fn set_notify(&mut self, _n: Notify) {}

    /// After a `poll` that returned `None` although a change is pending (the
    /// source coalesces changes): poll again within this time, even if
    /// before the interval ends. `None`: at the interval or on a notify.
    fn poll_again_in(&self) -> Option<Duration> {
        None
    }
}

impl Source for FileSource {
    fn poll(&mut self, cap: &Capacity) -> Option<Result<DesiredState, SourceError>> {
        FileSource::poll(self, cap)
    }

    fn describe(&self) -> String {
        format!("file:{}", self.path().display())
    }

    fn capacity_changed(&mut self) {
        FileSource::forget(self);
    }
}

impl Source for KubeSource {
    fn poll(&mut self, cap: &Capacity) -> Option<Result<DesiredState, SourceError>> {
        KubeSource::poll(self, cap)
    }

    fn describe(&self) -> String {
        KubeSource::describe(self)
    }

    fn set_notify(&mut self, n: Notify) {
        KubeSource::set_notify(self, n);
    }

    fn poll_again_in(&self) -> Option<Duration> {
        KubeSource::poll_again_in(self)
    }
}
