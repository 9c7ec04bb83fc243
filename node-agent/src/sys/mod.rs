//! Thin, checked wrappers over the `bpf(2)` commands aya 0.14 does not expose
//! (BPF_LINK_UPDATE, raw map element access, object info, batch map access,
//! map creation, BTF objects), plus bpffs helpers.

mod batch;
mod bpf;
mod btf;
mod call;
mod create;
mod fs;

pub use batch::*;
pub use bpf::*;
pub use btf::*;
pub use create::*;
pub use fs::*;
