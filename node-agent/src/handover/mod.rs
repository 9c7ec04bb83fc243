//! Hot upgrade: the running agent (incumbent) hands its maps, links and
//! listening sockets to a new agent (successor) over a SOCK_SEQPACKET Unix
//! socket, two-phase, with the old agent serving until the commit
//! (docs/handover.md).

pub mod incumbent;
pub mod manifest;
pub mod msg;
pub mod successor;
pub mod wire;

pub use msg::{ErrorCode, Msg, PROTO};
pub use wire::{Conn, Listener, WireError};

/// Handover socket file name in the run directory.
pub const SOCKET: &str = "handover.sock";

/// Test-only crash hook: `BATON_TEST_CRASH_AT=<step>` makes the agent
/// SIGKILL itself when it reaches `<step>`, so e2e tests can kill either side
/// at every protocol step.
pub fn crash_point(step: &str) {
    if std::env::var("BATON_TEST_CRASH_AT").is_ok_and(|s| s == step) {
        tracing::warn!(step, "BATON_TEST_CRASH_AT: killing myself");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
