//! Baton's datapath: the compiled connect4/connect6 object, the Rust mirrors of
//! its map layouts, and a small BTF reader used to prove they agree.

pub mod btf;
pub mod layout;

pub use layout::*;

#[repr(C, align(8))]
struct Aligned<T: ?Sized>(T);

static OBJECT_V1: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/baton-v1.bpf.o")));
static OBJECT_V2: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/baton-v2.bpf.o")));

/// The compiled eBPF object (ELF, with BTF) of this build's [`LAYOUT_VERSION`],
/// 8-byte aligned for the ELF parser.
pub fn object() -> &'static [u8] {
    match LAYOUT_VERSION {
        2 => &OBJECT_V2.0,
        _ => &OBJECT_V1.0,
    }
}

/// The object compiled for map layout `v` (1 or 2) whatever this build's own
/// layout is, so tools and tests can compare both BTFs; `None` for other `v`.
pub fn object_of_layout(v: u32) -> Option<&'static [u8]> {
    match v {
        1 => Some(&OBJECT_V1.0),
        2 => Some(&OBJECT_V2.0),
        _ => None,
    }
}

/// Whether the objects carry the test-only switches (feature `test-hooks`).
pub const TEST_HOOKS: bool = cfg!(feature = "test-hooks");

/// The test-only global (a `const volatile __u32` in `.rodata`, feature
/// `test-hooks` only): refuse one in this many connects to a VIP that has
/// endpoints, as if it had none; 0 = off.
pub const TEST_REFUSE_ONE_IN_GLOBAL: &str = "test_refuse_one_in";

/// Every layout generation this crate carries an object for.
pub const LAYOUTS: [u32; 2] = [1, 2];

/// Program name of the IPv4 connect hook.
pub const PROG_CONNECT4: &str = "baton_connect4";
/// Program name of the IPv6 connect hook.
pub const PROG_CONNECT6: &str = "baton_connect6";
