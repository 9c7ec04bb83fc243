//! Thin, checked wrappers over the `bpf(2)` commands aya 0.14 does not expose
//! (BPF_LINK_UPDATE, raw map element access, object info), plus bpffs helpers.

mod bpf;
mod fs;

pub use bpf::*;
pub use fs::*;
