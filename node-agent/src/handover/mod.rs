//! Hot upgrade: the running agent (incumbent) hands its maps, links and
//! listening sockets to a new agent (successor) over a SOCK_SEQPACKET Unix
//! socket, two-phase, with the old agent serving until the commit
//! (docs/handover.md).

pub mod commit;
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
/// at every protocol step. `BATON_TEST_PAUSE_AT=<step>=<ms>` makes it sleep
/// there instead (e2e tests widen a window, e.g. the journal's between
/// pre-copy and freeze).
pub fn crash_point(step: &str) {
    if std::env::var("BATON_TEST_CRASH_AT").is_ok_and(|s| s == step) {
        tracing::warn!(step, "BATON_TEST_CRASH_AT: killing myself");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    if let Ok(v) = std::env::var("BATON_TEST_PAUSE_AT") {
        if let Some(ms) = v
            .split_once('=')
            .filter(|(s, _)| *s == step)
            .and_then(|(_, ms)| ms.parse::<u64>().ok())
        {
            tracing::warn!(step, ms, "BATON_TEST_PAUSE_AT: pausing");
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }
}
