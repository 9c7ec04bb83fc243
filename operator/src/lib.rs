//! Baton operator: reconciles `KmeshUpgrade` objects into per-node agent pair
//! pods and drives hot upgrades of the node agent.

pub mod controller;
pub mod crd;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod uninstall;
