//! The real `baton-agent` process on the real kernel, one emulated host
//! per test (`baton_e2e::kit::Host`): serving a services file (`run`), bad
//! input (`bad_input`), a crash at every step of a handover
//! (`handover_crash`) and a hostile handover peer (`handover_hostile`). One
//! test binary, one link.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics

mod bad_input;
mod handover_crash;
mod handover_hostile;
mod run;
