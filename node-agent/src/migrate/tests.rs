//! Converter and decision tests on hand-built shapes (no kernel needed).

use std::collections::BTreeMap;

use baton_ebpf::btf::{Member, Shape};

use super::*;

fn int(size: u32, signed: bool) -> Shape {
    Shape::Int { size, signed }
}
fn u(size: u32) -> Shape {
    int(size, false)
}
fn s(size: u32) -> Shape {
    int(size, true)
}
fn arr(elem: Shape, len: u32) -> Shape {
    Shape::Array {
        elem: Box::new(elem),
        len,
    }
}

fn align_of(s: &Shape) -> u32 {
    match s {
        Shape::Array { elem, .. } => align_of(elem),
        Shape::Struct { members, .. } => members
            .iter()
            .map(|m| align_of(&m.shape))
            .max()
            .unwrap_or(1),
        other => other.size().max(1),
    }
}

/// A C struct with natural alignment.
fn st(name: &str, fields: &[(&str, Shape)]) -> Shape {
    let mut off = 0u32;
    let mut members = Vec::new();
    let mut align = 1;
    for (n, shape) in fields {
        let a = align_of(shape);
        align = align.max(a);
        off = off.next_multiple_of(a);
        members.push(Member {
            name: n.to_string(),
            offset: off,
            size: shape.size(),
            bitfield_size: 0,
            bit_offset: off * 8,
            shape: shape.clone(),
        });
        off += shape.size();
    }
    Shape::Struct {
        name: name.into(),
        size: off.next_multiple_of(align),
        members,
    }
}

fn hash(name: &str, key: Shape, value: Shape, max: u32) -> MapLayout {
    MapLayout {
        name: name.into(),
        map_type: 1,
        key_size: key.size(),
        value_size: value.size(),
        max_entries: max,
        map_flags: 0,
        key,
        value,
    }
}

/// Little helper writing integers at offsets.
fn bytes(size: u32, fields: &[(u32, u32, i128)]) -> Vec<u8> {
    let mut b = vec![0u8; size as usize];
    for &(off, width, v) in fields {
        let le = (v as u128).to_le_bytes();
        b[off as usize..(off + width) as usize].copy_from_slice(&le[..width as usize]);
    }
    b
}

fn conv(old: &MapLayout, new: &MapLayout) -> Converter {
    match decide(old, new, None) {
        Ok(Decision::Migrate(c)) => *c,
        other => panic!("expected a migration, got {other:?}"),
    }
}

fn value_of(c: &Converter, old: &[u8]) -> Result<Vec<u8>, MigrateError> {
    let mut out = vec![0u8; c.new_value_len()];
    c.convert_value(old, &mut out).map(|()| out)
}

fn backend(value: Shape) -> MapLayout {
    hash(
        "backend",
        st("backend_key", &[("backend_uid", u(4))]),
        value,
        1024,
    )
}

#[test]
fn widening_keeps_values_and_signs() {
    let old = backend(st("v", &[("port", u(2)), ("delta", s(2))]));
    let new = backend(st("v", &[("port", u(4)), ("delta", s(8))]));
    let c = conv(&old, &new);
    let out = value_of(
        &c,
        &bytes(4, &[(0, 2, 65535), (2, 2, -7i128 as u16 as i128)]),
    )
    .expect("widens");
    assert_eq!(out, bytes(16, &[(0, 4, 65535), (8, 8, -7)]));
}

#[test]
fn narrowing_fits_or_names_the_member_and_value() {
    let old = backend(st("v", &[("addr", arr(u(4), 4)), ("port", u(4))]));
    let new = backend(st("v", &[("addr", arr(u(4), 4)), ("port", u(2))]));
    let c = conv(&old, &new);
    let ok = value_of(&c, &bytes(20, &[(0, 4, 0x0a000001), (16, 4, 8080)])).expect("fits");
    assert_eq!(ok, bytes(20, &[(0, 4, 0x0a000001), (16, 2, 8080)]));
    let err = value_of(&c, &bytes(20, &[(16, 4, 70000)])).expect_err("does not fit");
    let msg = err.to_string();
    assert!(
        msg.contains("backend")
            && msg.contains("value.port")
            && msg.contains("70000")
            && msg.contains("u16"),
        "{msg}"
    );

    // Signed → unsigned: negatives do not fit.
    let old = backend(st("v", &[("w", s(4))]));
    let new = backend(st("v", &[("w", u(4))]));
    let c = conv(&old, &new);
    assert!(value_of(&c, &bytes(4, &[(0, 4, -1i128 as u32 as i128)])).is_err());
    assert_eq!(
        value_of(&c, &bytes(4, &[(0, 4, 5)])).expect("fits"),
        bytes(4, &[(0, 4, 5)])
    );
}

#[test]
fn reordered_added_and_removed_members() {
    let old = backend(st("v", &[("a", u(4)), ("b", u(8)), ("gone", u(4))]));
    let new = backend(st("v", &[("b", u(8)), ("added", u(2)), ("a", u(4))]));
    let c = conv(&old, &new);
    let changes: Vec<_> = c.changes().collect();
    assert!(changes.contains(&"+value.added (zero)"), "{changes:?}");
    assert!(changes.contains(&"-value.gone (dropped)"), "{changes:?}");
    let out = value_of(&c, &bytes(24, &[(0, 4, 1), (8, 8, 2), (16, 4, 3)])).expect("converts");
    assert_eq!(out, bytes(16, &[(0, 8, 2), (8, 2, 0), (12, 4, 1)]));
}

#[test]
fn arrays_convert_element_wise() {
    let old = backend(st("v", &[("ports", arr(u(4), 4))]));
    let new = backend(st("v", &[("ports", arr(u(2), 6))]));
    let c = conv(&old, &new);
    let out = value_of(
        &c,
        &bytes(16, &[(0, 4, 1), (4, 4, 2), (8, 4, 3), (12, 4, 4)]),
    )
    .expect("converts");
    assert_eq!(
        out,
        bytes(12, &[(0, 2, 1), (2, 2, 2), (4, 2, 3), (6, 2, 4)])
    );

    // Shorter array: dropped elements must be zero.
    let new = backend(st("v", &[("ports", arr(u(4), 2))]));
    let c = conv(&old, &new);
    assert_eq!(
        value_of(&c, &bytes(16, &[(0, 4, 9)])).expect("tail is zero"),
        bytes(8, &[(0, 4, 9)])
    );
    let err = value_of(&c, &bytes(16, &[(12, 4, 1)])).expect_err("tail not zero");
    assert!(err.to_string().contains("value.ports[2..4]"), "{err}");
}

#[test]
fn nested_structs_convert_recursively() {
    let inner_old = st("addr", &[("ip", arr(u(4), 4)), ("port", u(2))]);
    let inner_new = st(
        "addr2",
        &[("port", u(4)), ("ip", arr(u(4), 4)), ("zone", u(4))],
    );
    let old = backend(st("v", &[("flags", u(4)), ("a", inner_old)]));
    let new = backend(st("v", &[("a", inner_new), ("flags", u(8))]));
    let c = conv(&old, &new);
    // old: flags@0, a@4 {ip@4..20, port@20}; size 24
    let src = bytes(24, &[(0, 4, 7), (4, 4, 1), (16, 4, 4), (20, 2, 443)]);
    // new: a@0 {port@0, ip@4..20, zone@20} (24B), flags@24; size 32
    let out = value_of(&c, &src).expect("converts");
    assert_eq!(
        out,
        bytes(32, &[(0, 4, 443), (4, 4, 1), (16, 4, 4), (24, 8, 7)])
    );
}

#[test]
fn key_layout_changes_convert_too() {
    let v = st("endpoint_value", &[("backend_uid", u(4))]);
    let old = hash(
        "endpoint",
        st(
            "k",
            &[
                ("service_id", u(4)),
                ("prio", u(4)),
                ("backend_index", u(4)),
            ],
        ),
        v.clone(),
        64,
    );
    let new = hash(
        "endpoint",
        st(
            "k",
            &[
                ("service_id", u(4)),
                ("backend_index", u(2)),
                ("prio", u(1)),
            ],
        ),
        v,
        64,
    );
    let c = conv(&old, &new);
    assert!(!c.lossy_key());
    let mut out = vec![0u8; c.new_key_len()];
    c.convert_key(&bytes(12, &[(0, 4, 5), (4, 4, 2), (8, 4, 300)]), &mut out)
        .expect("fits");
    assert_eq!(out, bytes(8, &[(0, 4, 5), (4, 2, 300), (6, 1, 2)]));
    let err = c
        .convert_key(&bytes(12, &[(4, 4, 256)]), &mut out)
        .expect_err("prio 256 > u8");
    assert!(err.to_string().contains("key.prio"), "{err}");
}

#[test]
fn bitfields_convert_by_value() {
    let bf = |name: &str, bit: u32, width: u32| Member {
        name: name.into(),
        offset: bit / 8,
        size: width.div_ceil(8),
        bitfield_size: width,
        bit_offset: bit,
        shape: u(4),
    };
    let old = backend(Shape::Struct {
        name: "v".into(),
        size: 4,
        members: vec![bf("lo", 0, 3), bf("hi", 3, 5)],
    });
    let new = backend(st("v", &[("hi", u(1)), ("lo", u(1))]));
    let c = conv(&old, &new);
    // lo = 5 (bits 0..3), hi = 17 (bits 3..8): byte 0 = 17 << 3 | 5.
    let out = value_of(&c, &bytes(4, &[(0, 1, (17 << 3) | 5)])).expect("converts");
    assert_eq!(out, vec![17, 5]);
}

#[test]
fn unconvertible_members_are_refused_by_decide() {
    let old = backend(st("v", &[("addr", arr(u(4), 4))]));
    let new = backend(st("v", &[("addr", u(4))]));
    let err = decide(&old, &new, None).expect_err("array cannot become int");
    assert!(
        matches!(err, MigrateError::Incompatible { ref member, .. } if member == "value.addr"),
        "{err}"
    );
}

#[test]
fn decisions_follow_the_policy_table() {
    let v1 = backend(st("backend_value", &[("port", u(4))]));
    // Renamed struct, same members: the same bytes.
    let renamed = backend(st("backend_value_v1", &[("port", u(4))]));
    assert!(matches!(
        decide(&v1, &renamed, Some(10)),
        Ok(Decision::Reuse)
    ));

    let mut bigger = v1.clone();
    bigger.max_entries *= 2;
    let Ok(Decision::Migrate(c)) = decide(&v1, &bigger, Some(10)) else {
        panic!("capacity change migrates");
    };
    assert!(c.is_identity());

    let mut smaller = v1.clone();
    smaller.max_entries = 8;
    let err = decide(&v1, &smaller, Some(10)).expect_err("shrink below live");
    assert!(
        matches!(
            err,
            MigrateError::Shrink {
                live: 10,
                max_entries: 8,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("refusing to shrink"));
    assert!(matches!(
        decide(&v1, &smaller, Some(8)),
        Ok(Decision::Migrate(_))
    ));

    let mut array = bigger.clone();
    array.map_type = 2;
    assert!(matches!(
        decide(&v1, &array, None),
        Err(MigrateError::IncompatibleType { .. })
    ));

    let mut meta_old = v1.clone();
    meta_old.name = "meta".into();
    let mut meta_new = bigger.clone();
    meta_new.name = "meta".into();
    assert!(matches!(
        decide(&meta_old, &meta_new, None),
        Ok(Decision::RecreateEmpty)
    ));

    let mut other_old = v1.clone();
    other_old.name = "someone_elses".into();
    let mut other_new = bigger;
    other_new.name = "someone_elses".into();
    assert!(matches!(
        decide(&other_old, &other_new, None),
        Err(MigrateError::NeverReuse { .. })
    ));
    assert!(matches!(
        decide(&other_old, &other_old, None),
        Ok(Decision::Reuse)
    ));

    for m in ["frontend", "service", "endpoint", "backend", "counters"] {
        assert_eq!(policy(m), Policy::Migrate, "{m}");
    }
    assert_eq!(policy("meta"), Policy::RecreateEmpty);
}

#[test]
fn unions_convert_only_when_identical() {
    let un = |second: Shape| Shape::Struct {
        name: "u".into(),
        size: 8,
        members: vec![
            Member {
                name: "a".into(),
                offset: 0,
                size: 4,
                bitfield_size: 0,
                bit_offset: 0,
                shape: u(4),
            },
            Member {
                name: "b".into(),
                offset: 0,
                size: second.size(),
                bitfield_size: 0,
                bit_offset: 0,
                shape: second,
            },
        ],
    };
    let old = backend(st("v", &[("x", un(u(8)))]));
    let new = backend(st("v", &[("x", un(s(8)))]));
    assert!(matches!(
        decide(&old, &new, None),
        Err(MigrateError::Incompatible { .. })
    ));
}

#[test]
fn per_cpu_values_convert_per_cpu() {
    let counters = |value: Shape| MapLayout {
        name: "counters".into(),
        map_type: 6,
        key_size: 4,
        value_size: value.size(),
        max_entries: 16,
        map_flags: 0,
        key: u(4),
        value,
    };
    let old = counters(u(4));
    let new = counters(u(8));
    let c = conv(&old, &new);
    let cpus = crate::sys::possible_cpus();
    // Old stride is round_up(4, 8) = 8: the upper 4 bytes are padding.
    let mut src = vec![0u8; 8 * cpus];
    for cpu in 0..cpus {
        src[cpu * 8..cpu * 8 + 4].copy_from_slice(&(cpu as u32 + 100).to_ne_bytes());
    }
    let out = value_of(&c, &src).expect("converts");
    for cpu in 0..cpus {
        assert_eq!(out[cpu * 8..cpu * 8 + 8], (cpu as u64 + 100).to_ne_bytes());
    }
}

#[test]
fn build_layouts_serialize_and_match_the_specs() {
    let mut overrides = BTreeMap::new();
    overrides.insert("endpoint".to_string(), 4);
    let layouts = MapLayout::of_build(&overrides).expect("build layouts");
    assert_eq!(layouts.len(), baton_ebpf::MAPS.len());
    for (l, spec) in layouts.iter().zip(baton_ebpf::MAPS.iter()) {
        assert_eq!(
            (l.key.size(), l.value.size()),
            (spec.key_size, spec.value_size),
            "{}",
            l.name
        );
        let json = serde_json::to_string(l).expect("serializes");
        let back: MapLayout = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(&back, l);
        assert!(matches!(decide(l, &back, None), Ok(Decision::Reuse)));
    }
    let endpoint = layouts
        .iter()
        .find(|l| l.name == "endpoint")
        .expect("endpoint");
    assert_eq!(endpoint.max_entries, 4);
}
