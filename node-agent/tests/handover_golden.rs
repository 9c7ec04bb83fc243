//! Golden fixtures of every handover message, per protocol version:
//! `tests/fixtures/handover/v<N>/<type>.json` is what an agent speaking
//! protocol `N` sends (pretty-printed; the wire carries the same JSON
//! compact). Checked both ways for every version this build speaks
//! (`MIN_PROTO..=PROTO`): the fixture decodes, through the receive path, to
//! the expected message, and the message encodes to the fixture (as JSON:
//! same objects, keys in any order).
//!
//! Regenerate the current version's fixtures, deliberately:
//!
//! ```text
//! BATON_BLESS=1 cargo test -p baton-agent --test handover_golden
//! ```
//!
//! It writes only `v<PROTO>/`. Fixtures of older versions are never written
//! here: they are what released agents send and accept. A change to the
//! fixtures of a released version breaks handover with those agents; bump
//! `PROTO` instead (docs/handover.md, "Compatibility").
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use baton_agent::handover::msg::{
    versions, CommitFigures, CommitMap, CommitProgram, Entry, JournalKey, LinkDesc, ListenerDesc,
    Role, KINDS, MIN_PROTO,
};
use baton_agent::handover::wire::{decode_record, MAX_MESSAGE};
use baton_agent::handover::{ErrorCode, Msg, WireError, PROTO};
use baton_agent::migrate::MapLayout;
use baton_ebpf::btf::{Member, Shape};
use serde_json::Value;

/// Set to write the current version's fixtures.
const BLESS: &str = "BATON_BLESS";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/handover")
}

/// Every message of protocol `proto`, as its fixtures hold them. A version
/// keeps its entry here for as long as `MIN_PROTO` reaches it; when a later
/// version adds a field, the older versions' messages get its default (the
/// value under which the new agent sends exactly the old message).
fn messages(proto: u32) -> Option<Vec<(&'static str, Msg)>> {
    match proto {
        1 => Some(v1()),
        _ => None,
    }
}

fn u32_shape() -> Shape {
    Shape::Int {
        size: 4,
        signed: false,
    }
}

fn member(name: &str, offset: u32, shape: Shape) -> Member {
    Member {
        name: name.into(),
        offset,
        size: shape.size(),
        bitfield_size: 0,
        bit_offset: offset * 8,
        shape,
    }
}

fn map_entry(id: u32, layout: MapLayout) -> Entry {
    Entry {
        role: Role::Map,
        name: layout.name.clone(),
        id,
        map: Some(layout),
        link: None,
        listener: None,
    }
}

/// Protocol 1: the messages of baton-agent 0.1.0 (the pinned revision of
/// e2e/pinned-revision speaks it). Values are literals, not this build's
/// layouts, so the fixtures do not depend on the `layout-v2` feature.
fn v1() -> Vec<(&'static str, Msg)> {
    let caps: Vec<String> = ["maps", "links", "listeners", "journal", "migrate"]
        .map(String::from)
        .to_vec();
    let frontend = MapLayout {
        name: "frontend".into(),
        map_type: 1,
        key_size: 16,
        value_size: 4,
        max_entries: 131_072,
        map_flags: 0,
        key: Shape::Struct {
            name: "frontend_key".into(),
            size: 16,
            members: vec![member(
                "addr",
                0,
                Shape::Array {
                    elem: Box::new(u32_shape()),
                    len: 4,
                },
            )],
        },
        value: Shape::Struct {
            name: "frontend_value".into(),
            size: 4,
            members: vec![member("service_id", 0, u32_shape())],
        },
    };
    let endpoint = MapLayout {
        name: "endpoint".into(),
        map_type: 1,
        key_size: 12,
        value_size: 4,
        max_entries: 131_072,
        map_flags: 0,
        key: Shape::Struct {
            name: "endpoint_key".into(),
            size: 12,
            members: vec![
                member("service_id", 0, u32_shape()),
                member("prio", 4, u32_shape()),
                member("backend_index", 8, u32_shape()),
            ],
        },
        value: Shape::Struct {
            name: "endpoint_value".into(),
            size: 4,
            members: vec![member("backend_uid", 0, u32_shape())],
        },
    };
    // The datapath's maps hold only integers, arrays and structs; this one
    // also carries the other shapes a BTF type reads as (enum, opaque) and
    // a bitfield, so their encoding is pinned too.
    let meta = MapLayout {
        name: "meta".into(),
        map_type: 2,
        key_size: 4,
        value_size: 16,
        max_entries: 1,
        map_flags: 0,
        key: u32_shape(),
        value: Shape::Struct {
            name: "meta_value".into(),
            size: 16,
            members: vec![
                member("layout_version", 0, Shape::Enum { size: 4 }),
                Member {
                    name: "flags".into(),
                    offset: 4,
                    size: 4,
                    bitfield_size: 3,
                    bit_offset: 32,
                    shape: u32_shape(),
                },
                member("generation", 8, Shape::Opaque { size: 8 }),
            ],
        },
    };
    let counters = MapLayout {
        name: "counters".into(),
        map_type: 6,
        key_size: 4,
        value_size: 8,
        max_entries: 16,
        map_flags: 0,
        key: u32_shape(),
        value: Shape::Int {
            size: 8,
            signed: true,
        },
    };
    let entries = vec![
        map_entry(100, frontend),
        map_entry(102, endpoint),
        map_entry(104, counters),
        map_entry(105, meta),
        Entry {
            role: Role::Program,
            name: "connect4".into(),
            id: 7,
            map: None,
            link: None,
            listener: None,
        },
        Entry {
            role: Role::Link,
            name: "connect6".into(),
            id: 3,
            map: None,
            link: Some(LinkDesc {
                prog_id: 8,
                cgroup_id: 4242,
            }),
            listener: None,
        },
        Entry {
            role: Role::Listener,
            name: "admin".into(),
            id: 0,
            map: None,
            link: None,
            listener: Some(ListenerDesc {
                family: "unix".into(),
                addr: "/run/baton/admin.sock".into(),
            }),
        },
        Entry {
            role: Role::Listener,
            name: "metrics".into(),
            id: 0,
            map: None,
            link: None,
            listener: Some(ListenerDesc {
                family: "tcp".into(),
                addr: "127.0.0.1:9095".into(),
            }),
        },
    ];
    vec![
        (
            "hello",
            Msg::Hello {
                proto: 1,
                agent_version: "0.1.0".into(),
                layout_version: 2,
                capabilities: caps.clone(),
            },
        ),
        (
            "welcome",
            Msg::Welcome {
                proto: 1,
                agent_version: "0.1.0".into(),
                layout_version: 1,
                capabilities: caps,
                generation: 3,
                parts: 2,
            },
        ),
        (
            "offer",
            Msg::Offer {
                part: 0,
                parts: 2,
                entries,
            },
        ),
        ("prepare", Msg::Prepare),
        ("prepared", Msg::Prepared),
        ("freeze", Msg::Freeze),
        (
            "frozen",
            Msg::Frozen {
                part: 1,
                parts: 2,
                keys: vec![
                    JournalKey {
                        map: "endpoint".into(),
                        key: "010000000000000002000000".into(),
                    },
                    JournalKey {
                        map: "backend".into(),
                        key: "2a000000".into(),
                    },
                ],
            },
        ),
        (
            "commit",
            Msg::Commit {
                programs: vec![
                    CommitProgram {
                        attach: "connect4".into(),
                        id: 9,
                    },
                    CommitProgram {
                        attach: "connect6".into(),
                        id: 10,
                    },
                ],
                maps: vec![
                    CommitMap {
                        name: "endpoint".into(),
                        id: 120,
                    },
                    CommitMap {
                        name: "backend".into(),
                        id: 121,
                    },
                ],
                staging: "staging-4321".into(),
            },
        ),
        (
            "committed",
            Msg::Committed {
                figures: CommitFigures {
                    freeze_us: 1234,
                    journal_keys: 2,
                },
            },
        ),
        (
            "abort",
            Msg::Abort {
                reason: "load: verifier rejected connect4".into(),
            },
        ),
        ("ack", Msg::Ack),
        (
            "error",
            Msg::Error {
                code: ErrorCode::VersionMismatch,
                message: "protocol 2 is not one this agent speaks (1..=1)".into(),
            },
        ),
    ]
}

fn fixture_path(proto: u32, kind: &str) -> PathBuf {
    fixtures()
        .join(format!("v{proto}"))
        .join(format!("{kind}.json"))
}

/// The fixture as written: the message pretty-printed, fields in wire order.
fn render(m: &Msg) -> String {
    serde_json::to_string_pretty(m).expect("encodes") + "\n"
}

/// With `BATON_BLESS=1`, writes the current version's fixtures, once,
/// before any test of this file reads them.
fn bless_if_asked() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os(BLESS).is_none_or(|v| v != "1") {
            return;
        }
        let dir = fixtures().join(format!("v{PROTO}"));
        std::fs::create_dir_all(&dir).expect("mkdir fixtures");
        for (kind, m) in messages(PROTO).expect("messages of the current version") {
            std::fs::write(fixture_path(PROTO, kind), render(&m)).expect("write fixture");
        }
        eprintln!("{BLESS}: wrote {}", dir.display());
    });
}

/// A fixture's text.
fn read_fixture(proto: u32, kind: &str) -> String {
    bless_if_asked();
    let path = fixture_path(proto, kind);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `v<N>` directories present.
fn fixture_versions() -> BTreeSet<u32> {
    std::fs::read_dir(fixtures())
        .expect("fixtures directory")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix('v')?.parse().ok())
        .collect()
}

#[test]
fn every_version_this_build_speaks_has_fixtures_that_match_both_ways() {
    bless_if_asked();
    let present = fixture_versions();
    assert!(
        present.iter().all(|&v| v <= PROTO),
        "fixtures of versions newer than PROTO {PROTO}: {present:?}"
    );
    for proto in versions() {
        assert!(
            present.contains(&proto),
            "no fixtures of protocol {proto}, which this build speaks ({MIN_PROTO}..={PROTO}); \
             for the current version run `{BLESS}=1 cargo test -p baton-agent --test handover_golden`"
        );
        let expected = messages(proto)
            .unwrap_or_else(|| panic!("no expected messages of protocol {proto} in this test"));
        // One fixture per message type, no more.
        let kinds: BTreeSet<&str> = expected.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            KINDS.iter().copied().collect::<BTreeSet<_>>(),
            "v{proto}: every message type has exactly one expected value"
        );
        let files: BTreeSet<String> = std::fs::read_dir(fixtures().join(format!("v{proto}")))
            .expect("version directory")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let want: BTreeSet<String> = kinds.iter().map(|k| format!("{k}.json")).collect();
        assert_eq!(files, want, "v{proto}: fixture files");

        for (kind, m) in expected {
            let path = fixture_path(proto, kind);
            let text = read_fixture(proto, kind);
            let how = if proto == PROTO {
                format!(
                    "if this change is deliberate and no agent speaking protocol {proto} was \
                     released, regenerate with `{BLESS}=1 cargo test -p baton-agent --test \
                     handover_golden`; otherwise it breaks handover with released agents: bump \
                     PROTO (docs/handover.md, \"Compatibility\")"
                )
            } else {
                "fixtures of an older version are never regenerated: the new code must still \
                 speak them (docs/handover.md, \"Compatibility\")"
                    .to_string()
            };
            // Decode: the fixture, compact as on the wire, through the
            // receive path.
            let wire: Value = serde_json::from_str(&text).expect("fixture is JSON");
            let bytes = serde_json::to_vec(&wire).expect("compact");
            assert!(bytes.len() <= MAX_MESSAGE, "{}: too large", path.display());
            let decoded = decode_record(&bytes, 0, false, false)
                .unwrap_or_else(|e| panic!("{}: does not decode: {e}; {how}", path.display()));
            assert_eq!(
                decoded,
                m,
                "{}: decodes to another message; {how}",
                path.display()
            );
            // Encode: the same JSON (keys in any order).
            let encoded = serde_json::to_value(&m).expect("encodes");
            assert_eq!(
                encoded,
                wire,
                "{}: this build encodes the message differently:\n{}\n{how}",
                path.display(),
                render(&m)
            );
            assert_eq!(decoded.kind(), kind, "{}", path.display());
        }
    }
}

/// Every object in `v` (paths as JSON pointers).
fn object_pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            out.push(at.clone());
            for (k, x) in o {
                object_pointers(x, format!("{at}/{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                object_pointers(x, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// The policy's other half: a field this build does not know, from a newer
/// agent that did not negotiate an older version, anywhere in any message,
/// is refused as `malformed` (the incumbent answers `Error` and keeps
/// serving), never ignored.
#[test]
fn an_unknown_field_anywhere_in_any_message_is_refused() {
    let mut cases = 0;
    for (kind, _) in messages(PROTO).expect("current messages") {
        let text = read_fixture(PROTO, kind);
        let wire: Value = serde_json::from_str(&text).expect("fixture is JSON");
        let mut objects = Vec::new();
        object_pointers(&wire, String::new(), &mut objects);
        for at in objects {
            let mut v = wire.clone();
            let Some(Value::Object(o)) = v.pointer_mut(&at) else {
                panic!("{kind}: {at} is not an object");
            };
            o.insert("from_a_newer_agent".into(), Value::Bool(true));
            let bytes = serde_json::to_vec(&v).expect("compact");
            match decode_record(&bytes, 0, false, false) {
                Err(WireError::Bad {
                    code: ErrorCode::Malformed,
                    ..
                }) => cases += 1,
                other => panic!("{kind}: unknown field at {at:?}: {other:?}"),
            }
        }
    }
    // Nested objects of every message were reached (offer entries, map
    // layouts and shapes, journal keys, commit programs, figures).
    assert!(cases > 50, "only {cases} objects tried");
}

/// A `null` for an optional field is not how any agent omits it.
#[test]
fn a_null_optional_field_is_refused() {
    let text = read_fixture(PROTO, "offer");
    let mut v: Value = serde_json::from_str(&text).expect("fixture is JSON");
    v["entries"][4]["map"] = Value::Null;
    let bytes = serde_json::to_vec(&v).expect("compact");
    match decode_record(&bytes, 0, false, false) {
        Err(WireError::Bad {
            code: ErrorCode::Malformed,
            detail,
        }) => assert!(detail.contains("entries[4].map"), "{detail}"),
        other => panic!("{other:?}"),
    }
}
