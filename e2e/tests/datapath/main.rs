//! The datapath on the real kernel without an agent process: connects from
//! `baton-probe` through programs this process loads and programs
//! (`traffic`), transactional programming of real maps (`programmer`), and
//! the probe itself (`probe`). One test binary, one link.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics

mod probe;
mod programmer;
mod traffic;
