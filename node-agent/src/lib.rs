//! `baton-agent`: owns the datapath maps, programs them transactionally from a
//! source, serves an admin socket and metrics.

pub mod maps;
pub mod model;
pub mod programmer;
pub mod sys;
pub mod datapath;
pub mod verify;
pub mod source;
pub mod admin;
pub mod agent;
pub mod metrics;
