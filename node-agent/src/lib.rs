//! `baton-agent`: owns the datapath maps, programs them transactionally from a
//! source, serves an admin socket and metrics.

pub mod admin;
pub mod agent;
pub mod cluster;
pub mod datapath;
pub mod handover;
pub mod maps;
pub mod metrics;
pub mod migrate;
pub mod model;
pub mod preflight;
pub mod programmer;
pub mod rate;
pub mod source;
pub mod sys;
#[cfg(test)]
mod testing;
pub mod verify;
