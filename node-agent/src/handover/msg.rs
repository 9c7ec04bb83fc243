//! Handover messages (docs/handover.md). Every message is a JSON object with a
//! `type`; unknown types and unknown fields, at any depth, are errors, never
//! ignored. Compatibility across versions comes from the protocol version a
//! session agrees on, not from tolerance (docs/handover.md, "Compatibility").

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::wire::WireError;
use crate::migrate::MapLayout;

/// Protocol version this build proposes in its `Hello`. Golden fixtures of
/// every message at each version: `node-agent/tests/fixtures/handover/`.
pub const PROTO: u32 = 1;

/// Oldest protocol version this build still speaks, in both roles: an agent
/// takes over from, and hands back to, agents one version older (rollback
/// must work after any upgrade).
pub const MIN_PROTO: u32 = if PROTO > 1 { PROTO - 1 } else { 1 };

/// The protocol versions this build speaks.
pub fn versions() -> RangeInclusive<u32> {
    MIN_PROTO..=PROTO
}

/// What this build can do (sent in Hello/Welcome, for the logs and for
/// future negotiation).
pub const CAPABILITIES: [&str; 5] = ["maps", "links", "listeners", "journal", "migrate"];

/// Error classes sent in [`Msg::Error`].
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or fields of the wrong type.
    Malformed,
    /// A `type` this side does not know.
    UnknownMessage,
    /// A known message at the wrong step.
    UnexpectedMessage,
    /// Protocol versions differ.
    VersionMismatch,
    /// Descriptors on a message that carries none.
    UnexpectedFds,
    /// A descriptor does not match its manifest entry.
    BadFd,
    /// A map cannot be migrated.
    Migration,
    /// The new build's programs failed to load.
    Load,
    /// The peer is not allowed (uid) or another handover is running.
    Refused,
    /// A step timed out.
    Timeout,
    /// The sender gave up.
    Aborted,
    /// Anything else on the sender's side.
    Internal,
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

/// What a passed descriptor is.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A BPF map.
    Map,
    /// A loaded BPF program (the one the links run now).
    Program,
    /// A cgroup bpf_link.
    Link,
    /// A listening socket.
    Listener,
}

/// One entry of the manifest: describes the descriptor at the same index.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Role.
    pub role: Role,
    /// Map name, attach point (`connect4`/`connect6`) or listener name
    /// (`admin`, `metrics`, `handover`).
    pub name: String,
    /// Kernel object id (maps, programs, links); 0 for listeners.
    pub id: u32,
    /// Maps: kernel info and BTF layout of key and value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<MapLayout>,
    /// Links: the program they run and their cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkDesc>,
    /// Listeners: socket family and local address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<ListenerDesc>,
}

/// A link's attachment.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LinkDesc {
    /// Program id the link runs.
    pub prog_id: u32,
    /// cgroup id (inode) it is attached to.
    pub cgroup_id: u64,
}

/// A listening socket.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListenerDesc {
    /// `unix` or `tcp`.
    pub family: String,
    /// Path or `ip:port`.
    pub addr: String,
}

/// A key the old agent wrote after `Prepare` (hex of the old-layout bytes).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JournalKey {
    /// Map name.
    pub map: String,
    /// Key bytes, hex.
    pub key: String,
}

/// A program the new agent wants the links to run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CommitProgram {
    /// Attach point (`connect4`/`connect6`): the link to update.
    pub attach: String,
    /// Program id (checked against the descriptor).
    pub id: u32,
}

/// A migrated map the new agent pinned under its staging directory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CommitMap {
    /// Map name (its pin is `maps/<name>`).
    pub name: String,
    /// Kernel id of the pinned map (checked before renaming).
    pub id: u32,
}

/// Figures of a committed handover, as the old agent measured them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CommitFigures {
    /// Control-plane freeze: `Freeze` received → links swapped, microseconds.
    pub freeze_us: u64,
    /// Journal keys handed over under the freeze.
    pub journal_keys: u64,
}

/// Every message `type` (the golden fixtures hold one of each per version).
pub const KINDS: [&str; 12] = [
    "hello",
    "welcome",
    "offer",
    "prepare",
    "prepared",
    "freeze",
    "frozen",
    "commit",
    "committed",
    "abort",
    "ack",
    "error",
];

/// One protocol message.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Msg {
    /// new → old: who I am.
    Hello {
        /// Protocol version.
        proto: u32,
        /// Agent version.
        agent_version: String,
        /// Map layout version of the build.
        layout_version: u32,
        /// Capabilities.
        capabilities: Vec<String>,
    },
    /// old → new: accepted; the offer follows in `parts` messages.
    Welcome {
        /// Protocol version.
        proto: u32,
        /// Agent version.
        agent_version: String,
        /// Map layout version of the build.
        layout_version: u32,
        /// Capabilities.
        capabilities: Vec<String>,
        /// Agent generation recorded in the meta map.
        generation: u64,
        /// Offer messages that follow.
        parts: u32,
    },
    /// old → new: manifest entries, one per attached descriptor.
    Offer {
        /// 0-based part.
        part: u32,
        /// Total parts.
        parts: u32,
        /// Entries for this part's descriptors, in order.
        entries: Vec<Entry>,
    },
    /// new → old: start journaling writes; I am about to copy.
    Prepare,
    /// old → new: journaling.
    Prepared,
    /// new → old: stop writing and send me the journal.
    Freeze,
    /// old → new: frozen; the journal in `parts` messages.
    Frozen {
        /// 0-based part.
        part: u32,
        /// Total parts.
        parts: u32,
        /// Keys written since `Prepare`.
        keys: Vec<JournalKey>,
    },
    /// new → old: swap the links to these programs (descriptors attached, in
    /// order) and promote these staged map pins.
    Commit {
        /// Programs, one per link.
        programs: Vec<CommitProgram>,
        /// Migrated maps pinned under the staging directory.
        maps: Vec<CommitMap>,
        /// Staging directory name under the pin directory.
        staging: String,
    },
    /// old → new: done; I will never write again.
    Committed {
        /// Figures.
        figures: CommitFigures,
    },
    /// new → old: giving up; keep serving.
    Abort {
        /// Why.
        reason: String,
    },
    /// Positive answer to a message that needs nothing more.
    Ack,
    /// Negative answer; the session ends.
    Error {
        /// Class.
        code: ErrorCode,
        /// Detail.
        message: String,
    },
}

impl Msg {
    /// The `type` tag, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Msg::Hello { .. } => "hello",
            Msg::Welcome { .. } => "welcome",
            Msg::Offer { .. } => "offer",
            Msg::Prepare => "prepare",
            Msg::Prepared => "prepared",
            Msg::Freeze => "freeze",
            Msg::Frozen { .. } => "frozen",
            Msg::Commit { .. } => "commit",
            Msg::Committed { .. } => "committed",
            Msg::Abort { .. } => "abort",
            Msg::Ack => "ack",
            Msg::Error { .. } => "error",
        }
    }

    /// Decodes one record: unknown types and malformed bodies are told apart
    /// so the peer learns which it was.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| WireError::Bad {
            code: ErrorCode::Malformed,
            detail: format!("not JSON: {e}"),
        })?;
        let Some(kind) = v.get("type").and_then(|t| t.as_str()) else {
            return Err(WireError::Bad {
                code: ErrorCode::Malformed,
                detail: "no \"type\" string".into(),
            });
        };
        if !KINDS.contains(&kind) {
            return Err(WireError::Bad {
                code: ErrorCode::UnknownMessage,
                detail: format!("unknown message type {kind:?}"),
            });
        }
        let kind = kind.to_string();
        let msg = Msg::deserialize(&v).map_err(|e| WireError::Bad {
            code: ErrorCode::Malformed,
            detail: format!("{kind}: {e}"),
        })?;
        // serde ignores extra fields on unit variants of tagged enums and in
        // the nested map layouts (`MapLayout`, BTF shapes): whatever the
        // message does not encode back was not understood.
        let known = serde_json::to_value(&msg).unwrap_or_default();
        if let Some(extra) = unknown_field(&v, &known, "") {
            return Err(WireError::Bad {
                code: ErrorCode::Malformed,
                detail: format!("{kind}: unknown field {extra:?}"),
            });
        }
        Ok(msg)
    }
}

/// Path of the first key of `got` (the message as received) that `known`
/// (its decoded form, encoded again) lacks. A `null` given for an optional
/// field counts too: no agent sends one (absent fields are omitted).
fn unknown_field(got: &Value, known: &Value, at: &str) -> Option<String> {
    match (got, known) {
        (Value::Object(g), Value::Object(k)) => g.iter().find_map(|(key, gv)| {
            let path = if at.is_empty() {
                key.clone()
            } else {
                format!("{at}.{key}")
            };
            match k.get(key) {
                None => Some(path),
                Some(kv) => unknown_field(gv, kv, &path),
            }
        }),
        (Value::Array(g), Value::Array(k)) => g
            .iter()
            .zip(k)
            .enumerate()
            .find_map(|(i, (gv, kv))| unknown_field(gv, kv, &format!("{at}[{i}]"))),
        _ => None,
    }
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// Parses lower- or upper-case hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_classifies() {
        let m = Msg::Hello {
            proto: PROTO,
            agent_version: "1".into(),
            layout_version: 2,
            capabilities: vec!["maps".into()],
        };
        let b = serde_json::to_vec(&m).expect("encodes");
        assert_eq!(Msg::decode(&b).expect("decodes"), m);
        let code = |b: &[u8]| match Msg::decode(b) {
            Err(WireError::Bad { code, .. }) => Some(code),
            _ => None,
        };
        assert_eq!(code(b"\x00\xffgarbage"), Some(ErrorCode::Malformed));
        assert_eq!(code(br#"{"no":"type"}"#), Some(ErrorCode::Malformed));
        assert_eq!(
            code(br#"{"type":"launch"}"#),
            Some(ErrorCode::UnknownMessage)
        );
        assert_eq!(
            code(br#"{"type":"hello","proto":"x"}"#),
            Some(ErrorCode::Malformed)
        );
        assert_eq!(
            code(br#"{"type":"ack","extra":1}"#),
            Some(ErrorCode::Malformed)
        );
        assert_eq!(ErrorCode::VersionMismatch.to_string(), "version_mismatch");
    }

    /// The fuzz target's seed corpus (`fuzz/corpus/handover_msg/`).
    fn corpus_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/handover_msg")
    }

    /// One message of every type, with real payloads: this build's map
    /// layouts in the offer, journal keys of real key sizes.
    fn every_message() -> Vec<(&'static str, Msg)> {
        let layouts = crate::migrate::MapLayout::of_build(&Default::default()).expect("layouts");
        let entries: Vec<Entry> = layouts
            .into_iter()
            .enumerate()
            .map(|(i, l)| Entry {
                role: Role::Map,
                name: l.name.clone(),
                id: 100 + i as u32,
                map: Some(l),
                link: None,
                listener: None,
            })
            .chain([
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
                    name: "metrics".into(),
                    id: 0,
                    map: None,
                    link: None,
                    listener: Some(ListenerDesc {
                        family: "tcp".into(),
                        addr: "127.0.0.1:9095".into(),
                    }),
                },
            ])
            .collect();
        let caps: Vec<String> = CAPABILITIES.iter().map(|c| c.to_string()).collect();
        vec![
            (
                "hello",
                Msg::Hello {
                    proto: PROTO,
                    agent_version: "0.1.0".into(),
                    layout_version: 2,
                    capabilities: caps.clone(),
                },
            ),
            (
                "welcome",
                Msg::Welcome {
                    proto: PROTO,
                    agent_version: "0.1.0".into(),
                    layout_version: 1,
                    capabilities: caps,
                    generation: 3,
                    parts: 1,
                },
            ),
            (
                "offer",
                Msg::Offer {
                    part: 0,
                    parts: 1,
                    entries,
                },
            ),
            ("prepare", Msg::Prepare),
            ("prepared", Msg::Prepared),
            ("freeze", Msg::Freeze),
            (
                "frozen",
                Msg::Frozen {
                    part: 0,
                    parts: 1,
                    keys: vec![JournalKey {
                        map: "endpoint".into(),
                        key: hex(&[1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]),
                    }],
                },
            ),
            (
                "commit",
                Msg::Commit {
                    programs: vec![CommitProgram {
                        attach: "connect4".into(),
                        id: 9,
                    }],
                    maps: vec![CommitMap {
                        name: "backend".into(),
                        id: 120,
                    }],
                    staging: "staging-4321".into(),
                },
            ),
            (
                "committed",
                Msg::Committed {
                    figures: CommitFigures {
                        freeze_us: 1234,
                        journal_keys: 1,
                    },
                },
            ),
            (
                "abort",
                Msg::Abort {
                    reason: "load: verifier".into(),
                },
            ),
            ("ack", Msg::Ack),
            (
                "error",
                Msg::Error {
                    code: ErrorCode::Refused,
                    message: "peer uid 65534 is not 0".into(),
                },
            ),
        ]
    }

    /// Writes the seed corpus: `cargo test -p baton-agent --lib
    /// write_fuzz_seed_corpus -- --ignored`.
    #[test]
    #[ignore = "writes fuzz/corpus/handover_msg"]
    fn write_fuzz_seed_corpus() {
        let dir = corpus_dir();
        std::fs::create_dir_all(&dir).expect("mkdir corpus");
        for (name, m) in every_message() {
            let b = serde_json::to_vec(&m).expect("encodes");
            std::fs::write(dir.join(format!("seed-{name}.json")), b).expect("write seed");
        }
    }

    /// Every corpus file goes through the fuzz target's path without a
    /// panic, and what decodes round-trips; the seeds all decode.
    #[test]
    fn fuzz_corpus_decodes_and_round_trips() {
        let mut seeds = 0;
        for e in std::fs::read_dir(corpus_dir())
            .expect("fuzz corpus")
            .flatten()
        {
            let bytes = std::fs::read(e.path()).expect("read corpus file");
            let name = e.file_name().to_string_lossy().to_string();
            let decoded = crate::handover::wire::decode_record(&bytes, 0, false, false);
            if name.starts_with("seed-") {
                seeds += 1;
                assert!(decoded.is_ok(), "{name}: {decoded:?}");
            }
            if let Ok(m) = decoded {
                let again = serde_json::to_vec(&m).expect("encodes");
                assert_eq!(Msg::decode(&again).expect("decodes"), m, "{name}");
            }
        }
        assert_eq!(seeds, every_message().len(), "one seed per message type");
    }

    /// Inputs the fuzzer (or review) found; each must be refused cleanly.
    #[test]
    fn fuzz_regressions_decode_without_panicking() {
        let cases: &[&[u8]] = &[
            b"",
            b"null",
            b"[]",
            br#"{"type":null}"#,
            br#"{"type":"ack","type":"ack"}"#,
            br#"{"type":"frozen","part":0,"parts":1,"keys":[{"map":"x","key":"zz"}],"keys":[]}"#,
            br#"{"type":"offer","part":0,"parts":1,"entries":[{"role":"map","name":"x","id":1,"map":null}]}"#,
            &[b'['; 4096],
        ];
        for c in cases {
            if let Ok(m) = crate::handover::wire::decode_record(c, 0, false, false) {
                let again = serde_json::to_vec(&m).expect("encodes");
                assert_eq!(Msg::decode(&again).expect("decodes"), m);
            }
        }
        // The record-level checks come first, whatever the bytes.
        assert!(matches!(
            crate::handover::wire::decode_record(b"", 0, false, false),
            Err(WireError::Closed)
        ));
        assert!(matches!(
            crate::handover::wire::decode_record(br#"{"type":"ack"}"#, 0, true, false),
            Err(WireError::Truncated)
        ));
        assert!(matches!(
            crate::handover::wire::decode_record(br#"{"type":"ack"}"#, 1, false, true),
            Err(WireError::FdsTruncated)
        ));
    }

    #[test]
    fn hex_round_trips() {
        let b = [0u8, 1, 0xab, 0xff];
        assert_eq!(unhex(&hex(&b)).as_deref(), Some(&b[..]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
