//! Former home of the process sandbox, now [`crate::kit::sandbox::enter`];
//! re-exported for `baton-bench`.

pub use crate::kit::sandbox::enter::*;
