//! The Rust mirrors in `layout.rs` must match the C structs member by member,
//! as the compiler recorded them in the active layout's object BTF (run under
//! both features), and layouts 1 and 2 must differ exactly as documented in
//! `src/bpf/layout.h` and docs/architecture.md.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics

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
    #[cfg(not(feature = "layout-v2"))]
    check(
        &btf,
        "endpoint_key",
        fields!(EndpointKey {
            service_id: u32,
            prio: u32,
            backend_index: u32
        }),
    );
    #[cfg(feature = "layout-v2")]
    check(
        &btf,
        "endpoint_key",
        fields!(EndpointKey {
            service_id: u32,
            backend_index: u32,
            prio: u32
        }),
    );
    #[cfg(not(feature = "layout-v2"))]
    check(
        &btf,
        "endpoint_value",
        fields!(EndpointValue { backend_uid: u32 }),
    );
    #[cfg(feature = "layout-v2")]
    check(
        &btf,
        "endpoint_value",
        fields!(EndpointValue {
            backend_uid: u32,
            weight: u32
        }),
    );
    check(
        &btf,
        "backend_key",
        fields!(BackendKey { backend_uid: u32 }),
    );
    #[cfg(not(feature = "layout-v2"))]
    check(
        &btf,
        "backend_value",
        fields!(BackendValue {
            addr: RawAddr,
            port: u32
        }),
    );
    #[cfg(feature = "layout-v2")]
    check(
        &btf,
        "backend_value",
        fields!(BackendValue {
            port: u16,
            zone: u16,
            addr: RawAddr,
            flags: u32
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
fn the_active_object_is_this_builds_layout() {
    let active = object_of_layout(LAYOUT_VERSION).expect("LAYOUT_VERSION has an object");
    assert!(std::ptr::eq(object(), active));
    assert_eq!(LAYOUTS, [1, 2]);
    assert!(object_of_layout(3).is_none());
}

/// The maps of an object as the loader sees them: name → (type, key size, value size, max_entries).
fn object_maps(obj: &[u8]) -> std::collections::BTreeMap<String, (u32, u32, u32, u32)> {
    let o = aya_obj::Object::parse(obj).expect("the datapath object parses");
    o.maps
        .iter()
        .map(|(name, m)| {
            let shape = (m.map_type(), m.key_size(), m.value_size(), m.max_entries());
            (name.clone(), shape)
        })
        .collect()
}

#[test]
fn map_specs_match_the_object() {
    let mut maps = object_maps(object());
    // The test-only switch's `.rodata` (feature test-hooks) is a loader
    // map of one `__u32`, not a datapath map.
    let rodata = maps.remove(".rodata");
    assert_eq!(
        rodata.map(|(_, _, value_size, n)| (value_size, n)),
        TEST_HOOKS.then_some((4, 1)),
        "{maps:?}"
    );
    assert_eq!(maps.len(), MAPS.len(), "{maps:?}");
    for spec in MAPS {
        let want = (
            spec.kind as u32,
            spec.key_size,
            spec.value_size,
            spec.max_entries,
        );
        assert_eq!(maps.get(spec.name), Some(&want), "map {}", spec.name);
    }
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

/// (name, byte offset, size) of every member of `c_name` in `btf`.
fn members(btf: &Btf, c_name: &str) -> (u32, Vec<(String, u32, u32)>) {
    let shape = btf
        .shape_by_name(c_name)
        .unwrap_or_else(|| panic!("struct {c_name} missing from BTF"));
    let m = shape
        .members()
        .iter()
        .map(|m| (m.name.clone(), m.offset, m.size))
        .collect();
    (shape.size(), m)
}

/// A struct's size and its (member, offset, size) list, as documented.
type Struct = (u32, &'static [(&'static str, u32, u32)]);

fn owned(m: &[(&str, u32, u32)]) -> Vec<(String, u32, u32)> {
    m.iter().map(|&(n, o, s)| (n.to_string(), o, s)).collect()
}

/// The documented differences between layouts 1 and 2, checked on both
/// objects whatever the active layout, so the two cannot silently converge.
#[test]
fn layouts_1_and_2_differ_exactly_as_documented() {
    let obj = |v| object_of_layout(v).expect("both layouts are built");
    let (b1, b2) = (
        Btf::from_elf(obj(1)).expect("v1 BTF"),
        Btf::from_elf(obj(2)).expect("v2 BTF"),
    );

    // (struct, layout 1, layout 2).
    let changed: [(&str, Struct, Struct); 3] = [
        (
            "endpoint_key",
            (
                12,
                &[
                    ("service_id", 0, 4),
                    ("prio", 4, 4),
                    ("backend_index", 8, 4),
                ],
            ),
            (
                12,
                &[
                    ("service_id", 0, 4),
                    ("backend_index", 4, 4),
                    ("prio", 8, 4),
                ],
            ),
        ),
        (
            "endpoint_value",
            (4, &[("backend_uid", 0, 4)]),
            (8, &[("backend_uid", 0, 4), ("weight", 4, 4)]),
        ),
        (
            "backend_value",
            (20, &[("addr", 0, 16), ("port", 16, 4)]),
            (
                24,
                &[
                    ("port", 0, 2),
                    ("zone", 2, 2),
                    ("addr", 4, 16),
                    ("flags", 20, 4),
                ],
            ),
        ),
    ];
    for (name, (s1, m1), (s2, m2)) in changed {
        assert_eq!(members(&b1, name), (s1, owned(m1)), "layout 1 {name}");
        assert_eq!(members(&b2, name), (s2, owned(m2)), "layout 2 {name}");
    }

    // Everything else is identical, so an upgrade reuses those maps as they are.
    for name in [
        "frontend_key",
        "frontend_value",
        "service_key",
        "service_value",
        "backend_key",
        "meta_value",
    ] {
        let (s1, s2) = (b1.shape_by_name(name), b2.shape_by_name(name));
        assert!(s1.is_some(), "{name} missing");
        assert_eq!(s1, s2, "{name} must be the same in both layouts");
    }

    // Map definitions: only endpoint and backend differ, in value size and capacity.
    let (m1, m2) = (object_maps(obj(1)), object_maps(obj(2)));
    assert_eq!(m1.keys().collect::<Vec<_>>(), m2.keys().collect::<Vec<_>>());
    for (name, d1) in &m1 {
        let d2 = m2[name];
        match name.as_str() {
            "endpoint" => {
                assert_eq!((*d1, d2), ((1, 12, 4, 131_072), (1, 12, 8, 262_144)))
            }
            "backend" => {
                assert_eq!((*d1, d2), ((1, 4, 20, 131_072), (1, 4, 24, 262_144)))
            }
            _ => assert_eq!(*d1, d2, "map {name} must be the same in both layouts"),
        }
    }
}

/// The test-only switch is compiled into both objects with feature
/// `test-hooks` and into neither without it: a production object has no
/// `test_refuse_one_in` symbol (nor its `.rodata`).
#[test]
fn the_test_switch_exists_only_in_test_hook_objects() {
    use object::{Object, ObjectSection};
    for layout in LAYOUTS {
        let elf = object::File::parse(object_of_layout(layout).unwrap()).unwrap();
        let has_symbol = elf.symbol_by_name(TEST_REFUSE_ONE_IN_GLOBAL).is_some();
        let has_rodata = elf.sections().any(|s| s.name() == Ok(".rodata"));
        assert_eq!(
            (has_symbol, has_rodata),
            (TEST_HOOKS, TEST_HOOKS),
            "layout {layout}: symbol {TEST_REFUSE_ONE_IN_GLOBAL} / .rodata present = \
             {has_symbol}/{has_rodata}, test-hooks = {TEST_HOOKS}"
        );
    }
}
