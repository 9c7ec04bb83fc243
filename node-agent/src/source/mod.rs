//! Where the desired state comes from: a YAML file on one machine, Services +
//! EndpointSlices in a cluster. Both produce the same `DesiredState`.

pub mod file;
pub mod kube;
pub mod reader;
mod yaml;

pub use self::kube::{KubeOptions, KubeSource};
pub use file::{FileSource, SourceError};

use crate::model::{Capacity, DesiredState};

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
}
