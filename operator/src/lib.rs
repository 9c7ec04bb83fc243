//! Baton operator: reconciles `KmeshUpgrade` objects into per-node agent pair
//! pods and drives hot upgrades of the node agent.

pub mod crd;
pub mod plan;
