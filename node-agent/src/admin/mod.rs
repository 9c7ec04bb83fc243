//! The admin Unix socket: one JSON request per line, one JSON response per line.
//! `baton-agent status|dump|verify` are its clients.

pub mod client;
pub mod offline;
pub mod server;

use serde::{Deserialize, Serialize};

/// A request on the admin socket.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Agent status and the last sync.
    Status,
    /// The programmed services.
    Dump,
    /// Invariants of the maps and agreement with the agent's view.
    Verify,
}

/// Longest request line accepted; anything longer is refused.
pub const MAX_REQUEST: usize = 4096;
