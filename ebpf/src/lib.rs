//! Baton's datapath: the compiled connect4/connect6 object, the Rust mirrors of
//! its map layouts, and a small BTF reader used to prove they agree.

pub mod btf;
pub mod layout;

pub use layout::*;

#[repr(C, align(8))]
struct Aligned<T: ?Sized>(T);

static OBJECT: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/baton.bpf.o")));

/// The compiled eBPF object (ELF, with BTF), 8-byte aligned for the ELF parser.
pub fn object() -> &'static [u8] {
    &OBJECT.0
}

/// Program name of the IPv4 connect hook.
pub const PROG_CONNECT4: &str = "baton_connect4";
/// Program name of the IPv6 connect hook.
pub const PROG_CONNECT6: &str = "baton_connect6";
