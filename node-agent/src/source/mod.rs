//! Where the desired state comes from: a YAML file on one machine (Services +
//! EndpointSlices in a cluster come later through the same `DesiredState`).

pub mod file;
mod locate;

pub use file::{FileSource, SourceError};
