//! Baton's shared contracts, in one place so that the agent, the operator and
//! the tests cannot drift apart:
//!
//! - [`pairpod`]: what the operator and the node agent tell each other
//!   through the agent pod (slots, annotations, env, the
//!   `baton.dev/Handover` and `baton.dev/Started` conditions), and the rules
//!   both sides read it by;
//! - [`admin`]: the agent's admin socket (requests and typed answers);
//! - [`datapath`]: the datapath's outcome counters over a window, which a
//!   handover report carries and the operator's canary judges;
//! - [`preflight`]: the report of `baton-agent preflight`, which the
//!   operator reads from the agent pod.
//!
//! No Kubernetes types here: the crate stays light, and each side converts
//! at its edge.

#![deny(missing_docs)]

pub mod admin;
pub mod datapath;
pub mod pairpod;
pub mod preflight;
