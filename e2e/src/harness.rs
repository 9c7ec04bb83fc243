//! Former home of the probe driver and the binary locator, now in
//! [`crate::kit`]; what the bench and tests not migrated yet still use.
//! These shapes panic instead of returning errors.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::kit::probe::ProbeRun;
use crate::report::Report;

/// The `baton-agent` binary for map layout `layout`: [`crate::kit::bins::agent_bin`].
pub fn agent_bin_for_layout(layout: u32) -> crate::kit::Result<PathBuf> {
    crate::kit::bins::agent_bin(layout)
}

/// A running `baton-probe run` ([`crate::kit::ProbeProcess`], panicking).
pub struct ProbeProcess(crate::kit::ProbeProcess);

impl ProbeProcess {
    /// [`crate::kit::ProbeProcess::start`]; panics when it does not get ready.
    pub fn start(run: ProbeRun, dir: &Path, name: &str, ready_within: Duration) -> ProbeProcess {
        ProbeProcess(
            crate::kit::ProbeProcess::start(run, dir, name, ready_within)
                .unwrap_or_else(|e| panic!("{e}")),
        )
    }

    /// Asks the probe to end its run, without waiting.
    pub fn request_stop(&self) {
        self.0.request_stop().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stops the probe and returns its report; panics without one.
    pub fn report(self, timeout: Duration) -> Report {
        self.0.report(timeout).unwrap_or_else(|e| panic!("{e}"))
    }
}
