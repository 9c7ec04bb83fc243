//! The datapath's maps as typed handles over kernel file descriptors.

mod handle;
pub mod journal;
pub mod set;

pub use handle::{MapError, MapHandle};
pub use journal::Journal;
pub use set::{MapSet, Snapshot};
