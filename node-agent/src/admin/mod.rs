//! The admin Unix socket: one JSON request per line, one JSON response per line.
//! `baton-agent status|dump|verify` are its clients. The requests and the
//! answers are `baton_api::admin`'s types.

pub mod client;
pub mod offline;
pub mod server;

// Re-exported: callers (the e2e kit among them) name them from here.
pub use baton_api::admin::{Request, MAX_REQUEST};
