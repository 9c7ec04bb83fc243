//! Map migration on the real kernel: maps created by aya from both datapath
//! objects (layout 1 and 2) and by `create_map`, layouts read back from the
//! kernel's BTF, every entry compared after `copy_all` and `replay`, on the
//! batch and the per-element paths.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use baton_agent::migrate::{
    convert_all, copy_all, copy_all_with, copy_sample, create_map, decide, dump, live_entries,
    replay, BatchMode, CopyOptions, Decision, MapLayout, MigrateError,
};
use baton_agent::sys;
use baton_ebpf::btf::{Member, Shape};

type Entries = BTreeMap<Vec<u8>, Vec<u8>>;

fn w32(v: u32) -> [u8; 4] {
    v.to_ne_bytes()
}

fn w16(v: u16) -> [u8; 2] {
    v.to_ne_bytes()
}

fn r32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The six maps of one datapath object, created in the kernel by aya.
struct Loaded {
    fds: BTreeMap<&'static str, OwnedFd>,
    layouts: BTreeMap<&'static str, MapLayout>,
}

impl Loaded {
    fn fd(&self, name: &str) -> BorrowedFd<'_> {
        self.fds[name].as_fd()
    }
}

fn load(version: u32) -> Loaded {
    let object = baton_ebpf::object_of_layout(version).expect("both layouts are built");
    let ebpf = aya::EbpfLoader::new()
        .load(object)
        .expect("aya creates the maps");
    let mut fds = BTreeMap::new();
    let mut layouts = BTreeMap::new();
    for spec in baton_ebpf::MAPS.iter() {
        use aya::maps::Map;
        let data = match ebpf.map(spec.name).expect("map in object") {
            Map::HashMap(d) | Map::Array(d) | Map::PerCpuArray(d) => d,
            other => panic!("unexpected map kind {other:?}"),
        };
        // The dup keeps the map alive after the Ebpf is dropped.
        let fd = data.fd().as_fd().try_clone_to_owned().expect("dup");
        let layout = MapLayout::from_fd(fd.as_fd(), Some(spec.name)).expect("kernel BTF");
        fds.insert(spec.name, fd);
        layouts.insert(spec.name, layout);
    }
    Loaded { fds, layouts }
}

fn put(fd: BorrowedFd<'_>, k: &[u8], v: &[u8]) {
    sys::map_update(fd, k, v, sys::BPF_ANY).expect("update");
}

fn entries(fd: BorrowedFd<'_>, layout: &MapLayout) -> Entries {
    dump(fd, layout).expect("dump").into_iter().collect()
}

fn v1_endpoint(svc: u32, prio: u32, idx: u32) -> Vec<u8> {
    [w32(svc), w32(prio), w32(idx)].concat()
}

fn v1_backend_value(i: u32) -> Vec<u8> {
    [
        w32(10),
        w32(i),
        w32(0xffff),
        w32(i * 7),
        w32(1000 + i % 60_000),
    ]
    .concat()
}

/// Fills the layout-1 endpoint and backend maps.
fn fill_v1(m: &Loaded, endpoints: u32, backends: u32) {
    for i in 0..endpoints {
        let k = v1_endpoint(i / 100, i % 7, i % 100 + 1);
        put(m.fd("endpoint"), &k, &w32(i % backends));
    }
    for i in 0..backends {
        put(m.fd("backend"), &w32(i), &v1_backend_value(i));
    }
}

/// Independent (hand-written) layout 1 → 2 conversion of one entry.
fn to_v2(map: &str, k: &[u8], v: &[u8]) -> (Vec<u8>, Vec<u8>) {
    match map {
        // key {service_id, prio, backend_index} → {service_id, backend_index, prio};
        // value {backend_uid} → {backend_uid, weight = 0}.
        "endpoint" => (
            [w32(r32(k, 0)), w32(r32(k, 8)), w32(r32(k, 4))].concat(),
            [w32(r32(v, 0)), w32(0)].concat(),
        ),
        // value {addr[4], port u32} → {port u16, zone, addr[4], flags}.
        "backend" => (
            k.to_vec(),
            [&w16(r32(v, 16) as u16)[..], &w16(0), &v[0..16], &w32(0)].concat(),
        ),
        _ => (k.to_vec(), v.to_vec()),
    }
}

fn expected_v2(map: &str, old: &Entries) -> Entries {
    old.iter().map(|(k, v)| to_v2(map, k, v)).collect()
}

/// Migrates every map of `from` into `to` as the handover would; returns
/// the converters of the migrated maps.
fn migrate_all(
    from: &Loaded,
    to: &Loaded,
    opts: &CopyOptions,
) -> BTreeMap<&'static str, baton_agent::migrate::Converter> {
    let mut convs = BTreeMap::new();
    for (name, old) in &from.layouts {
        let live = live_entries(from.fd(name), old).expect("live entries");
        match decide(old, &to.layouts[name], Some(live)).expect("decide") {
            Decision::Migrate(conv) => {
                let stats = copy_all_with(from.fd(name), to.fd(name), &conv, opts).expect("copy");
                assert_eq!(stats.entries, live, "{name}");
                assert_eq!(stats.batch, opts.batch == BatchMode::Auto, "{name}");
                convs.insert(*name, *conv);
            }
            Decision::Reuse => {}
            Decision::RecreateEmpty => panic!("{name}: layouts 1 and 2 share the meta layout"),
        }
    }
    convs
}

#[test]
fn aya_creates_the_maps_with_kernel_btf_matching_the_build() {
    let v1 = load(1);
    let overrides = BTreeMap::new();
    let build = MapLayout::known(1).expect("BTF").expect("layout 1 known");
    for want in &build {
        let got = &v1.layouts[want.name.as_str()];
        assert_eq!(got.key, want.key, "{}", want.name);
        assert_eq!(got.value, want.value, "{}", want.name);
        assert_eq!(
            (got.map_type, got.key_size, got.value_size),
            (want.map_type, want.key_size, want.value_size)
        );
    }
    if baton_ebpf::LAYOUT_VERSION == 1 {
        for want in MapLayout::of_build(&overrides).expect("build layouts") {
            assert!(
                v1.layouts[want.name.as_str()].same_as(&want),
                "{}",
                want.name
            );
        }
    }
    let v2 = load(2);
    assert_eq!(v2.layouts["endpoint"].max_entries, 262_144);
    assert_ne!(v1.layouts["backend"].value, v2.layouts["backend"].value);
}

#[test]
fn created_maps_read_back_their_layout() {
    let mut layouts = MapLayout::known(2).expect("BTF").expect("layout 2 known");
    // Nested struct, signed ints, enum and bitfields as well.
    let bf = |name: &str, bit: u32, width: u32| Member {
        name: name.into(),
        offset: bit / 8,
        size: width.div_ceil(8),
        bitfield_size: width,
        bit_offset: bit,
        shape: Shape::Int {
            size: 4,
            signed: false,
        },
    };
    let member = |name: &str, off: u32, shape: Shape| Member {
        name: name.into(),
        offset: off,
        size: shape.size(),
        bitfield_size: 0,
        bit_offset: off * 8,
        shape,
    };
    let inner = Shape::Struct {
        name: "inner".into(),
        size: 4,
        members: vec![bf("lo", 0, 3), bf("hi", 3, 13)],
    };
    let value = Shape::Struct {
        name: "odd_value".into(),
        size: 16,
        members: vec![
            member("in", 0, inner),
            member(
                "delta",
                4,
                Shape::Int {
                    size: 2,
                    signed: true,
                },
            ),
            member("kind", 8, Shape::Enum { size: 4 }),
            member(
                "pad",
                12,
                Shape::Int {
                    size: 4,
                    signed: false,
                },
            ),
        ],
    };
    layouts.push(MapLayout {
        name: "odd".into(),
        map_type: 1,
        key_size: 4,
        value_size: 16,
        max_entries: 8,
        map_flags: 1, // BPF_F_NO_PREALLOC
        key: Shape::Int {
            size: 4,
            signed: true,
        },
        value,
    });
    for want in &layouts {
        let fd = create_map(want).expect("create");
        let got = MapLayout::from_fd(fd.as_fd(), Some(&want.name)).expect("kernel BTF");
        assert_eq!(&got, want);
        // Without a name the kernel's map name is used.
        let named = MapLayout::from_fd(fd.as_fd(), None).expect("kernel BTF");
        assert_eq!(named.name, want.name);
    }
}

#[test]
fn layout_1_to_2_and_back_with_journal_replay() {
    for batch in [BatchMode::Auto, BatchMode::Off] {
        let opts = CopyOptions {
            batch,
            ..CopyOptions::default()
        };
        let v1 = load(1);
        let v2 = load(2);
        fill_v1(&v1, 3_000, 2_000);
        put(v1.fd("service"), &w32(7), &[1u8; 4 * 28]);
        put(v1.fd("frontend"), &[9u8; 16], &w32(7));

        let convs = migrate_all(&v1, &v2, &opts);
        assert_eq!(
            convs.keys().copied().collect::<Vec<_>>(),
            ["backend", "endpoint"]
        );
        for name in convs.keys() {
            let old = entries(v1.fd(name), &v1.layouts[name]);
            assert_eq!(
                entries(v2.fd(name), &v2.layouts[name]),
                expected_v2(name, &old),
                "{name} {batch:?}"
            );
        }

        // The old agent keeps writing during the pre-copy; its journal holds
        // the keys it touched: updates, deletes, inserts, and a key that came
        // and went.
        let mut journal: BTreeMap<&str, Vec<Vec<u8>>> = BTreeMap::new();
        for i in 0..30u32 {
            let k = v1_endpoint(i / 100, i % 7, i % 100 + 1);
            match i % 3 {
                0 => put(v1.fd("endpoint"), &k, &w32(99_999)),
                1 => assert!(sys::map_delete(v1.fd("endpoint"), &k).expect("delete")),
                _ => put(v1.fd("endpoint"), &v1_endpoint(5_000 + i, 0, 1), &w32(i)),
            }
            let key = if i % 3 == 2 {
                v1_endpoint(5_000 + i, 0, 1)
            } else {
                k
            };
            journal.entry("endpoint").or_default().push(key);
        }
        journal
            .entry("endpoint")
            .or_default()
            .push(v1_endpoint(1, 2, 3_000));
        for uid in [3u32, 4, 2_500] {
            put(v1.fd("backend"), &w32(uid), &v1_backend_value(uid + 1));
            journal
                .entry("backend")
                .or_default()
                .push(w32(uid).to_vec());
        }
        assert!(sys::map_delete(v1.fd("backend"), &w32(5)).expect("delete"));
        journal.entry("backend").or_default().push(w32(5).to_vec());
        for (name, conv) in &convs {
            let keys = &journal[name];
            let stats = replay(v1.fd(name), v2.fd(name), conv, keys).expect("replay");
            assert_eq!(stats.entries, keys.len());
            let old = entries(v1.fd(name), &v1.layouts[name]);
            assert_eq!(
                entries(v2.fd(name), &v2.layouts[name]),
                expected_v2(name, &old),
                "{name} after replay {batch:?}"
            );
        }

        // Back to layout 1 (a rollback): weights and zones are dropped, ports
        // widen again, and the result is exactly the layout-1 contents.
        // v1 key (0, prio 1, index 51) is (0, index 51, prio 1) in layout 2.
        let weighted = [w32(0), w32(51), w32(1)].concat();
        let mut v = vec![0u8; 8];
        assert!(sys::map_lookup(v2.fd("endpoint"), &weighted, &mut v).expect("lookup"));
        v[4..8].copy_from_slice(&w32(42));
        put(v2.fd("endpoint"), &weighted, &v);
        let back = load(1);
        migrate_all(&v2, &back, &opts);
        for name in ["endpoint", "backend"] {
            assert_eq!(
                entries(back.fd(name), &back.layouts[name]),
                entries(v1.fd(name), &v1.layouts[name]),
                "{name} round trip {batch:?}"
            );
        }
    }
}

fn counters_layout(slots: u32) -> MapLayout {
    let mut l = MapLayout::of_build(&BTreeMap::new())
        .expect("build layouts")
        .into_iter()
        .find(|l| l.name == "counters")
        .expect("counters");
    l.max_entries = slots;
    l
}

#[test]
fn per_cpu_counters_carry_over() {
    let cpus = sys::possible_cpus();
    let old_layout = counters_layout(16);
    assert!(old_layout.is_percpu());
    let old = create_map(&old_layout).expect("create");
    let per_cpu = |slot: u32| -> Vec<u8> {
        (0..cpus)
            .flat_map(|cpu| (u64::from(slot) * 1_000 + cpu as u64 + 1).to_ne_bytes())
            .collect()
    };
    for slot in 0..12 {
        put(old.as_fd(), &w32(slot), &per_cpu(slot));
    }
    assert_eq!(live_entries(old.as_fd(), &old_layout).expect("live"), 12);

    for (slots, batch) in [
        (32, BatchMode::Auto),
        (32, BatchMode::Off),
        (12, BatchMode::Auto),
    ] {
        let new_layout = counters_layout(slots);
        let Decision::Migrate(conv) = decide(&old_layout, &new_layout, Some(12)).expect("decide")
        else {
            panic!("capacity change migrates");
        };
        let new = create_map(&new_layout).expect("create");
        let opts = CopyOptions {
            batch,
            ..CopyOptions::default()
        };
        let stats = copy_all_with(old.as_fd(), new.as_fd(), &conv, &opts).expect("copy");
        // All 16 old slots exist; the 4 zero slots past a 12-slot map are skipped.
        assert_eq!(stats.entries, slots.min(16) as usize);
        for slot in 0..slots {
            let mut got = vec![0u8; 8 * cpus];
            assert!(sys::map_lookup(new.as_fd(), &w32(slot), &mut got).expect("lookup"));
            let want = if slot < 12 {
                per_cpu(slot)
            } else {
                vec![0u8; 8 * cpus]
            };
            assert_eq!(got, want, "slot {slot} {batch:?}");
        }
    }

    // A non-zero slot past a smaller capacity is refused.
    let err = decide(&old_layout, &counters_layout(8), Some(12)).expect_err("shrink");
    assert!(
        matches!(err, MigrateError::Shrink { live: 12, .. }),
        "{err}"
    );
}

#[test]
fn shrinking_below_the_live_entries_is_refused() {
    let v1 = load(1);
    fill_v1(&v1, 300, 100);
    let old = &v1.layouts["endpoint"];
    let mut small = old.clone();
    small.max_entries = 200;
    let live = live_entries(v1.fd("endpoint"), old).expect("live");
    assert_eq!(live, 300);
    let err = decide(old, &small, Some(live)).expect_err("refused");
    assert_eq!(
        err.to_string(),
        "map endpoint: max_entries 200 is below the 300 live entries; refusing to shrink"
    );
    // Without the count, the copy stops cleanly when the new map is full.
    let Decision::Migrate(conv) = decide(old, &small, None).expect("decide") else {
        panic!("migrates");
    };
    let new = create_map(&small).expect("create");
    let err = copy_all(v1.fd("endpoint"), new.as_fd(), &conv).expect_err("full");
    assert!(
        matches!(
            err,
            MigrateError::Full {
                max_entries: 200,
                ..
            }
        ),
        "{err}"
    );
    // Shrinking above the count is fine.
    small.max_entries = 300;
    let Decision::Migrate(conv) = decide(old, &small, Some(live)).expect("decide") else {
        panic!("migrates");
    };
    let new = create_map(&small).expect("create");
    assert_eq!(
        copy_all(v1.fd("endpoint"), new.as_fd(), &conv)
            .expect("copy")
            .entries,
        300
    );
}

#[test]
fn a_port_that_does_not_fit_names_map_member_and_value() {
    let v1 = load(1);
    let v2 = load(2);
    put(v1.fd("backend"), &w32(1), &v1_backend_value(1));
    let mut bad = v1_backend_value(2);
    bad[16..20].copy_from_slice(&w32(70_000));
    put(v1.fd("backend"), &w32(2), &bad);
    let Decision::Migrate(conv) =
        decide(&v1.layouts["backend"], &v2.layouts["backend"], None).expect("decide")
    else {
        panic!("migrates");
    };
    for batch in [BatchMode::Auto, BatchMode::Off] {
        let opts = CopyOptions {
            batch,
            ..CopyOptions::default()
        };
        let err = copy_all_with(v1.fd("backend"), v2.fd("backend"), &conv, &opts)
            .expect_err("port 70000 does not fit in u16");
        assert_eq!(
            err.to_string(),
            "map backend: value member value.port: value 70000 does not fit in u16"
        );
    }
}

#[test]
fn dropped_key_members_that_collide_are_refused() {
    let v1 = load(1);
    fill_v1(&v1, 50, 10);
    let old = &v1.layouts["endpoint"];
    let mut new = old.clone();
    // Drop backend_index from the key: many old keys become one.
    if let Shape::Struct { members, size, .. } = &mut new.key {
        members.retain(|m| m.name != "backend_index");
        *size = 8;
    }
    new.key_size = 8;
    let Decision::Migrate(conv) = decide(old, &new, None).expect("decide") else {
        panic!("migrates");
    };
    assert!(conv.lossy_key());
    let fd = create_map(&new).expect("create");
    let err = copy_all(v1.fd("endpoint"), fd.as_fd(), &conv).expect_err("collision");
    assert!(matches!(err, MigrateError::KeyCollision { .. }), "{err}");
}

#[test]
fn tiny_batches_grow_past_full_hash_buckets() {
    let v1 = load(1);
    let v2 = load(2);
    fill_v1(&v1, 2_000, 10);
    let Decision::Migrate(conv) =
        decide(&v1.layouts["endpoint"], &v2.layouts["endpoint"], None).expect("decide")
    else {
        panic!("migrates");
    };
    // A one-entry batch meets buckets holding two or more entries (ENOSPC).
    let opts = CopyOptions {
        batch: BatchMode::Auto,
        chunk: 1,
    };
    let stats = copy_all_with(v1.fd("endpoint"), v2.fd("endpoint"), &conv, &opts).expect("copy");
    assert_eq!(stats.entries, 2_000);
    assert!(stats.batch);
    let old = entries(v1.fd("endpoint"), &v1.layouts["endpoint"]);
    assert_eq!(
        entries(v2.fd("endpoint"), &v2.layouts["endpoint"]),
        expected_v2("endpoint", &old)
    );
}

#[test]
fn maps_without_btf_fall_back_to_the_known_layout() {
    let known = MapLayout::known(1).expect("BTF").expect("layout 1 known");
    let backend = known.iter().find(|l| l.name == "backend").expect("backend");
    let fd = sys::map_create(&sys::MapCreate {
        name: "backend",
        map_type: backend.map_type,
        key_size: backend.key_size,
        value_size: backend.value_size,
        max_entries: 77,
        map_flags: 0,
        btf: None,
    })
    .expect("create");
    assert!(matches!(
        MapLayout::from_fd(fd.as_fd(), None),
        Err(MigrateError::NoBtf { .. })
    ));
    let got = MapLayout::from_fd_or_known(fd.as_fd(), "backend", &known).expect("known");
    assert_eq!(got.value, backend.value);
    assert_eq!(got.max_entries, 77);
    // Layout 2's backend value is 24 bytes, not 20: the sizes give it away.
    let v2 = MapLayout::known(2).expect("BTF").expect("layout 2 known");
    assert!(matches!(
        MapLayout::from_fd_or_known(fd.as_fd(), "backend", &v2),
        Err(MigrateError::SizeMismatch { .. })
    ));
    assert!(MapLayout::known(3).expect("no error").is_none());
}

/// The converter of `map` from layout 1 to layout 2.
fn conv_1_to_2(v1: &Loaded, v2: &Loaded, map: &str) -> baton_agent::migrate::Converter {
    match decide(&v1.layouts[map], &v2.layouts[map], None).expect("decide") {
        Decision::Migrate(conv) => *conv,
        other => panic!("{map}: expected a migration, got {}", other.kind()),
    }
}

#[test]
fn convert_all_converts_every_entry_and_writes_nothing() {
    let v1 = load(1);
    let v2 = load(2);
    fill_v1(&v1, 500, 100);
    let conv = conv_1_to_2(&v1, &v2, "backend");
    let before = entries(v1.fd("backend"), &v1.layouts["backend"]);
    let st = convert_all(v1.fd("backend"), &conv).expect("every entry converts");
    assert_eq!(st.entries, 100);
    assert_eq!(entries(v1.fd("backend"), &v1.layouts["backend"]), before);
    assert!(entries(v2.fd("backend"), &v2.layouts["backend"]).is_empty());

    // One value that a copy would refuse is found without a copy.
    let mut bad = v1_backend_value(7);
    bad[16..20].copy_from_slice(&w32(70_000));
    put(v1.fd("backend"), &w32(7), &bad);
    let err = convert_all(v1.fd("backend"), &conv).expect_err("port 70000");
    assert!(matches!(err, MigrateError::DoesNotFit { .. }), "{err}");
}

#[test]
fn a_sample_copies_the_first_entries_only() {
    let v1 = load(1);
    let v2 = load(2);
    fill_v1(&v1, 1000, 300);
    let conv = conv_1_to_2(&v1, &v2, "endpoint");
    let old = entries(v1.fd("endpoint"), &v1.layouts["endpoint"]);
    let expected = expected_v2("endpoint", &old);

    let mut small = v2.layouts["endpoint"].clone();
    small.max_entries = 100;
    let scratch = create_map(&small).expect("scratch map");
    let st = copy_sample(v1.fd("endpoint"), scratch.as_fd(), &conv, 100).expect("sample");
    assert_eq!(st.entries, 100);
    let got = entries(scratch.as_fd(), &small);
    assert_eq!(got.len(), 100);
    for (k, v) in &got {
        assert_eq!(
            expected.get(k),
            Some(v),
            "a sampled entry is a converted old one"
        );
    }

    // A limit past the end copies everything.
    let st = copy_sample(v1.fd("endpoint"), v2.fd("endpoint"), &conv, 5000).expect("sample");
    assert_eq!(st.entries, 1000);
    assert_eq!(
        entries(v2.fd("endpoint"), &v2.layouts["endpoint"]),
        expected
    );
    assert_eq!(entries(v1.fd("endpoint"), &v1.layouts["endpoint"]), old);
}
