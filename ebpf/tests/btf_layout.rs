//! The Rust mirrors in `layout.rs` must match the C structs member by member,
//! as the compiler recorded them in the object's BTF.

use baton_ebpf::btf::{Btf, Shape};
use baton_ebpf::*;
use std::mem::{offset_of, size_of};

/// (member name, offset, size) of a Rust mirror.
type Fields = Vec<(&'static str, usize, usize)>;

macro_rules! fields {
    ($t:ty { $($f:ident : $ft:ty),* $(,)? }) => {
        (size_of::<$t>(), vec![$((stringify!($f), offset_of!($t, $f), size_of::<$ft>())),*])
    };
}

fn check(btf: &Btf, c_name: &str, (size, rust): (usize, Fields)) {
    let shape = btf
        .shape_by_name(c_name)
        .unwrap_or_else(|| panic!("struct {c_name} missing from BTF"));
    let Shape::Struct {
        size: c_size,
        members,
        ..
    } = &shape
    else {
        panic!("{c_name} is not a struct")
    };
    assert_eq!(
        *c_size as usize, size,
        "{c_name}: size differs (C {c_size}, Rust {size})"
    );
    let c: Vec<_> = members
        .iter()
        .map(|m| (m.name.as_str(), m.offset as usize, m.size as usize))
        .collect();
    assert_eq!(
        c, rust,
        "{c_name}: members (name, offset, size) differ between C and Rust"
    );
    for m in members {
        assert_eq!(
            m.bitfield_size, 0,
            "{c_name}.{}: bitfields are not mirrored",
            m.name
        );
    }
}

#[test]
fn rust_mirrors_match_c_structs() {
    let btf = Btf::from_elf(object()).expect("the datapath object carries BTF");
    check(&btf, "frontend_key", fields!(FrontendKey { addr: RawAddr }));
    check(
        &btf,
        "frontend_value",
        fields!(FrontendValue { service_id: u32 }),
    );
    check(&btf, "service_key", fields!(ServiceKey { service_id: u32 }));
    check(
        &btf,
        "service_value",
        fields!(ServiceValue {
            prio_endpoint_count: [u32; PRIO_COUNT],
            lb_policy: u32,
            service_port: [u32; MAX_PORTS],
            target_port: [u32; MAX_PORTS],
        }),
    );
    check(
        &btf,
        "endpoint_key",
        fields!(EndpointKey {
            service_id: u32,
            prio: u32,
            backend_index: u32
        }),
    );
    check(
        &btf,
        "endpoint_value",
        fields!(EndpointValue { backend_uid: u32 }),
    );
    check(
        &btf,
        "backend_key",
        fields!(BackendKey { backend_uid: u32 }),
    );
    check(
        &btf,
        "backend_value",
        fields!(BackendValue {
            addr: RawAddr,
            port: u32
        }),
    );
    check(
        &btf,
        "meta_value",
        fields!(MetaValue {
            layout_version: u32,
            flags: u32,
            generation: u64
        }),
    );
}

#[test]
fn map_specs_match_btf_sizes() {
    let btf = Btf::from_elf(object()).expect("BTF");
    for spec in MAPS {
        for (ty, size) in [
            (spec.key_type, spec.key_size),
            (spec.value_type, spec.value_size),
        ] {
            let shape = btf
                .shape_by_name(ty)
                .unwrap_or_else(|| panic!("{}: type {ty} missing", spec.name));
            assert_eq!(shape.size(), size, "{}: {ty} size", spec.name);
        }
    }
}

#[test]
fn a_drifted_mirror_is_caught() {
    // The check must fail when a member is reordered: prove it on a fake mirror.
    #[repr(C)]
    struct Swapped {
        prio: u32,
        service_id: u32,
        backend_index: u32,
    }
    let btf = Btf::from_elf(object()).expect("BTF");
    let r = std::panic::catch_unwind(|| {
        check(
            &btf,
            "endpoint_key",
            fields!(Swapped {
                prio: u32,
                service_id: u32,
                backend_index: u32
            }),
        )
    });
    assert!(r.is_err(), "a reordered mirror must be rejected");
}
