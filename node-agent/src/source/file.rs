//! The services file: read only as a bounded regular file, parsed from the
//! YAML event stream (see `reader.rs`), validated against the map
//! capacities, every error named by file, line and field. A rejected file
//! changes nothing, and a file being rewritten in place is not applied
//! until its content is stable (see `FileSource`).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::chunked::{self, Chunked};
use super::reader::{self, ParseError};
use crate::model::{Capacity, DesiredState, Validator};

/// Default `--max-services-bytes`: 64 MiB. 10 000 services of 10 endpoints
/// each (every field written out) take 8.3 MB in block style, so this is
/// about 8x the largest file the default maps can hold.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

/// How long a changed file's content must stay the same before it is
/// applied: long enough for a `truncate + write` of a normal file by an
/// editor or `cat >`, short enough not to be noticed.
pub const DEFAULT_SETTLE: Duration = Duration::from_millis(150);

/// At most this many validation problems are listed in an error.
pub const MAX_PROBLEMS: usize = 20;

/// One rule a services file breaks, at a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// Field path, e.g. `services[2].vips[0]`.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// Why a source's desired state was not applied (file or cluster).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file could not be opened or read.
    #[error("{file}: {source}")]
    Read {
        /// File.
        file: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The path (after symlinks) is a FIFO, a device, a directory…: only a
    /// regular file has an end that can be trusted to come.
    #[error("{file}: not a regular file ({kind})")]
    NotRegular {
        /// File.
        file: String,
        /// What it is.
        kind: &'static str,
    },
    /// Larger than `--max-services-bytes`.
    #[error(
        "{file}: {size} bytes or more, over the limit of {limit} bytes (--max-services-bytes)"
    )]
    TooLarge {
        /// File.
        file: String,
        /// Its size (or at least how much was there to read).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Not UTF-8.
    #[error("{file}:{line}: not UTF-8 text: {source}")]
    NotUtf8 {
        /// File.
        file: String,
        /// 1-based line of the first bad byte.
        line: usize,
        /// Cause.
        source: std::str::Utf8Error,
    },
    /// Not a services document (YAML syntax, shape, types, values).
    #[error("{file}:{line}: {source}")]
    Syntax {
        /// File.
        file: String,
        /// 1-based line.
        line: usize,
        /// Cause.
        source: ParseError,
    },
    /// Rules the content breaks (at most `MAX_PROBLEMS` listed).
    #[error("{}{}", .problems.iter().map(|p| format!("{}:{}: {}: {}", .file, p.line, p.path, p.reason)).collect::<Vec<_>>().join("\n"), if *.more > 0 { format!("\n... and {} more problems", .more) } else { String::new() })]
    Invalid {
        /// File.
        file: String,
        /// The first problems.
        problems: Vec<Problem>,
        /// How many more were found and not listed.
        more: usize,
    },
    /// The cluster's Services/EndpointSlices could not be watched, or their
    /// state breaks a rule or the map capacities (services named `ns/name`).
    #[error("kubernetes: {message}")]
    Cluster {
        /// What failed, e.g. `ns/web: endpoints[3].address: …`.
        message: String,
    },
}

/// Parses and validates a services file's text (the whole text at once;
/// [`FileSource`] reuses what did not change, see `chunked.rs`).
pub fn parse(file: &str, text: &str, cap: &Capacity) -> Result<DesiredState, SourceError> {
    let max = usize::try_from(cap.services).unwrap_or(usize::MAX);
    let (state, lines) = reader::read(text, max).map_err(|l| SourceError::Syntax {
        file: file.into(),
        line: l.line,
        source: l.error,
    })?;
    validated(file, state, cap, &mut Validator::once(), |path| {
        lines.of(path)
    })
}

/// `state` when `validator` finds it valid, else its first problems, each
/// at the line `line_of` gives for its field path.
pub(super) fn validated(
    file: &str,
    state: DesiredState,
    cap: &Capacity,
    validator: &mut Validator,
    line_of: impl Fn(&str) -> usize,
) -> Result<DesiredState, SourceError> {
    let invalid = validator.validate(&state, cap);
    if invalid.is_empty() {
        return Ok(state);
    }
    let more = invalid.len().saturating_sub(MAX_PROBLEMS);
    Err(SourceError::Invalid {
        file: file.into(),
        problems: invalid
            .into_iter()
            .take(MAX_PROBLEMS)
            .map(|i| Problem {
                line: line_of(&i.path),
                path: i.path,
                reason: i.reason,
            })
            .collect(),
        more,
    })
}

/// Parses and validates a services file's bytes (UTF-8 checked first).
pub fn parse_bytes(file: &str, bytes: &[u8], cap: &Capacity) -> Result<DesiredState, SourceError> {
    parse(file, utf8(file, bytes)?, cap)
}

/// The bytes as text, or the line of the first byte that is not UTF-8.
pub(super) fn utf8<'b>(file: &str, bytes: &'b [u8]) -> Result<&'b str, SourceError> {
    std::str::from_utf8(bytes).map_err(|source| SourceError::NotUtf8 {
        file: file.into(),
        line: 1 + bytes[..source.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
        source,
    })
}

fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// Reads a services file: a regular file (checked on the open fd, after
/// symlinks), opened non-blocking so a FIFO cannot stall the caller, of at
/// most `limit` bytes (checked on the fd, and the read stops at limit + 1
/// so a file that grows or lies about its size cannot make it read more).
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, SourceError> {
    read_bounded_identified(path, limit).map(|(bytes, _)| bytes)
}

/// A file's identity: (device, inode).
type FileId = (u64, u64);

/// [`read_bounded`], also returning the file's identity (device, inode): a
/// new identity means the path was replaced (rename), not rewritten in place.
fn read_bounded_identified(path: &Path, limit: u64) -> Result<(Vec<u8>, FileId), SourceError> {
    use std::os::unix::fs::MetadataExt;
    let file = path.display().to_string();
    let io = |source| SourceError::Read {
        file: file.clone(),
        source,
    };
    let f = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(SourceError::NotRegular {
            file,
            kind: kind_of(meta.file_type()),
        });
    }
    if meta.len() > limit {
        return Err(SourceError::TooLarge {
            file,
            size: meta.len(),
            limit,
        });
    }
    let mut buf = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0).saturating_add(1));
    f.take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(io)?;
    if buf.len() as u64 > limit {
        return Err(SourceError::TooLarge {
            file,
            size: buf.len() as u64,
            limit,
        });
    }
    Ok((buf, (meta.dev(), meta.ino())))
}

/// Loads a services file (bounded read, parse, validate): `baton-agent check`.
pub fn load(path: &Path, limit: u64, cap: &Capacity) -> Result<DesiredState, SourceError> {
    let bytes = read_bounded(path, limit)?;
    parse_bytes(&path.display().to_string(), &bytes, cap)
}

/// What one read of the file saw: its content's fingerprint, or the error
/// (errors are compared by text, so the same failure is reported once).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Content { len: u64, hash: u64 },
    Failed(String),
}

/// A services file watched by polling. A change made in place is applied only
/// once two reads at least `settle` apart saw the same content (and every
/// read in between too): a file rewritten in place (truncate, then write) is
/// read as empty or cut at any byte in the middle, and a cut at a line
/// boundary is valid YAML with fewer services. A file replaced by a rename
/// (another inode than the one last acted on) was complete before it
/// appeared, so it is acted on at once: atomic writers pay no settle time,
/// and a writer that changes the file faster than `settle` still gets
/// through.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    max_bytes: u64,
    settle: Duration,
    /// The last outcome acted on (applied or reported).
    done: Option<Seen>,
    /// Identity (device, inode) of the file last acted on.
    done_id: Option<FileId>,
    /// A new outcome and when it was first seen.
    pending: Option<(Seen, Instant, Option<FileId>)>,
    /// Parses what changed since the last parse only.
    parser: Chunked,
}

impl FileSource {
    /// Watches `path` with the default size limit and settle time.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            max_bytes: DEFAULT_MAX_BYTES,
            settle: DEFAULT_SETTLE,
            done: None,
            done_id: None,
            pending: None,
            parser: Chunked::new(),
        }
    }

    /// Sets the size limit (`--max-services-bytes`).
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Sets how long a change must be stable before it is acted on.
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// The watched file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the last parse did (how many items it parsed, or why it parsed
    /// the whole file).
    pub fn parse_stats(&self) -> chunked::Stats {
        self.parser.stats()
    }

    /// Forgets the outcome last acted on: the next stable read is parsed
    /// and returned again even if the file did not change.
    pub fn forget(&mut self) {
        self.done = None;
    }

    /// The new desired state (or why the file is rejected) once a change is
    /// stable; `None` when nothing new is stable yet.
    pub fn poll(&mut self, cap: &Capacity) -> Option<Result<DesiredState, SourceError>> {
        let read = read_bounded_identified(&self.path, self.max_bytes);
        let id = read.as_ref().ok().map(|(_, id)| *id);
        let read = read.map(|(b, _)| b);
        let seen = match &read {
            Ok(b) => Seen::Content {
                len: b.len() as u64,
                hash: content_hash(b),
            },
            Err(e) => Seen::Failed(e.to_string()),
        };
        if self.done.as_ref() == Some(&seen) {
            self.pending = None;
            return None;
        }
        let now = Instant::now();
        // A new inode since the last applied read, or since the pending one
        // (a fresh agent has applied nothing yet), was put there by a
        // rename: complete when it appeared, so it needs no settling.
        let new_inode = |before: Option<FileId>| id.is_some() && before.is_some() && id != before;
        let replaced =
            new_inode(self.done_id) || new_inode(self.pending.as_ref().and_then(|p| p.2));
        match &self.pending {
            _ if replaced => {}
            Some((p, since, _)) if *p == seen => {
                if now.duration_since(*since) < self.settle {
                    return None;
                }
            }
            _ => {
                tracing::debug!(file = %self.path.display(), "services file changed; waiting for it to settle");
                self.pending = Some((seen, now, id));
                return None;
            }
        }
        self.pending = None;
        self.done = Some(seen);
        if id.is_some() {
            self.done_id = id;
        }
        let file = self.path.display().to_string();
        Some(read.and_then(|b| {
            let parsed = self.parser.parse_bytes(&file, &b, cap);
            let s = self.parser.stats();
            tracing::debug!(file, items = s.items, parsed = s.parsed, full = ?s.full,
                "services file parsed");
            parsed
        }))
    }
}

/// The content's fingerprint, taken on every poll (every 10 ms in the
/// handover benchmark): foldhash reads 8-16 bytes a step where FNV-1a took
/// one, ~0.2 ms instead of ~5 ms for a 4 MB file (`benches/parse.rs`).
fn content_hash(b: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0).hash_one(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PortSpec;
    use baton_ebpf::LbPolicy;

    const GOOD: &str = "\
services:
  - name: web
    vips: [10.96.0.10]
    ports:
      - port: 80
        targetPort: 8080
    policy: failover
    endpoints:
      - address: 127.0.0.10
      - address: 127.0.0.11
        priority: 1
  - name: api6
    vips: [\"fd00::10\"]
    ports: [{port: 443}]
    endpoints:
      - {address: \"::1\", port: 9443}
";

    fn err(text: &str) -> String {
        parse("svc.yaml", text, &Capacity::default())
            .expect_err("must be rejected")
            .to_string()
    }

    #[test]
    fn parses_a_good_file() {
        let s = parse("svc.yaml", GOOD, &Capacity::default()).expect("valid");
        assert_eq!(s.services.len(), 2);
        assert_eq!(
            s.services[0].ports[0],
            PortSpec {
                port: 80,
                target_port: 8080
            }
        );
        assert_eq!(s.services[0].policy, LbPolicy::Failover);
        assert_eq!(s.services[0].endpoints[1].priority, 1);
        assert_eq!(s.services[1].ports[0].target_port, 443);
        assert_eq!(s.services[1].endpoints[0].port, 9443);
    }

    #[test]
    fn bad_address_names_file_line_and_field() {
        let e = err(&GOOD.replace("127.0.0.11", "127.0.0.300"));
        assert!(e.starts_with("svc.yaml:10:"), "{e}");
        assert!(e.contains("services[0].endpoints[1].address"), "{e}");
    }

    #[test]
    fn unknown_policy_is_rejected() {
        let e = err(&GOOD.replace("failover", "roundrobin"));
        assert!(
            e.starts_with("svc.yaml:7:") && e.contains("unknown variant `roundrobin`"),
            "{e}"
        );
    }

    #[test]
    fn port_out_of_range_is_rejected() {
        let e = err(&GOOD.replace("targetPort: 8080", "targetPort: 70000"));
        assert!(
            e.starts_with("svc.yaml:6:") && e.contains("targetPort"),
            "{e}"
        );
        let e = err(&GOOD.replace("port: 80\n", "port: 0\n"));
        assert!(
            e.starts_with("svc.yaml:5:") && e.contains("services[0].ports[0].port"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_vip_points_at_the_second_use() {
        let e = err(&GOOD.replace("\"fd00::10\"", "10.96.0.10"));
        assert!(
            e.starts_with("svc.yaml:13:") && e.contains("duplicate VIP 10.96.0.10"),
            "{e}"
        );
    }

    #[test]
    fn mixed_families_and_bad_priority_are_rejected() {
        let e = err(&GOOD.replace("\"::1\"", "127.0.0.1"));
        assert!(
            e.contains("svc.yaml:16: services[1].endpoints[0].address"),
            "{e}"
        );
        let e = err(&GOOD.replace("priority: 1", "priority: 9"));
        assert!(
            e.contains("svc.yaml:11: services[0].endpoints[1].priority"),
            "{e}"
        );
    }

    /// Parsing stops at the first service past the service map's capacity,
    /// with that service's line: memory follows the capacity, not the file.
    #[test]
    fn parsing_stops_past_the_service_capacity() {
        let cap = Capacity {
            services: 3,
            ..Capacity::default()
        };
        let text = many(5, false, false);
        let e = parse("svc.yaml", &text, &cap)
            .expect_err("over capacity")
            .to_string();
        // many(): 4 lines per service after `services:`, the 4th starts on line 14.
        assert_eq!(
            e, "svc.yaml:14: services: more than 3 services (the service map's capacity)",
            "{e}"
        );
        assert!(parse("svc.yaml", &many(3, false, false), &cap).is_ok());
    }

    #[test]
    fn too_many_endpoints_for_the_maps() {
        let cap = Capacity {
            endpoints: 2,
            ..Capacity::default()
        };
        let e = parse("svc.yaml", GOOD, &cap)
            .expect_err("over capacity")
            .to_string();
        assert!(
            e.contains("3 endpoints exceed the map capacity of 2"),
            "{e}"
        );
    }

    #[test]
    fn unknown_fields_and_garbage_are_rejected() {
        assert!(err(&GOOD.replace("policy:", "polcy:")).contains("unknown field `polcy`"));
        assert!(err("services: [").starts_with("svc.yaml:"));
    }

    #[test]
    fn only_a_complete_document_is_accepted() {
        for text in [
            "",
            "\n\n",
            "# only a comment\n",
            "---\n",
            "services:\n",
            "services: ~\n",
            "{}\n",
        ] {
            let e = err(text);
            assert!(e.starts_with("svc.yaml:"), "{text:?}: {e}");
        }
        assert!(err("").contains("write `services: []`"));
        assert!(err("services:\n").contains("services: no value"));
        assert!(err("{}\n").contains("missing field `services`"));
        let s = parse(
            "svc.yaml",
            "# nothing\nservices: []\n",
            &Capacity::default(),
        )
        .expect("explicit empty");
        assert!(s.services.is_empty());
        // Every field that is a list must be a list, not a null.
        let e = err(&GOOD.replace(
            "    endpoints:\n      - {address",
            "    endpoints:\n    x: 1\n      - {address",
        ));
        assert!(e.starts_with("svc.yaml:"), "{e}");
        let e = err(&GOOD.replace("ports: [{port: 443}]", "ports:"));
        assert!(
            e.contains("svc.yaml:14: services[1].ports: no value"),
            "{e}"
        );
    }

    #[test]
    fn second_document_and_top_level_keys_are_rejected() {
        assert!(err(&format!("{GOOD}---\nservices: []\n")).contains("more than one YAML document"));
        let line = GOOD.lines().count() + 1;
        let e = err(&format!("{GOOD}other: 1\n"));
        assert!(
            e.starts_with(&format!(
                "svc.yaml:{line}: (top level): unknown field `other`"
            )),
            "{e}"
        );
    }

    #[test]
    fn duplicate_key_is_reported_at_the_duplicate() {
        let e = err(&GOOD.replace(
            "    policy: failover\n",
            "    policy: failover\n    name: again\n",
        ));
        assert!(
            e.starts_with("svc.yaml:8: services[0]: duplicate key `name`"),
            "{e}"
        );
        let e =
            err("services: [{name: a, vips: [10.0.0.1],\n  ports: [{port: 1,\n    port: 2}]}]\n");
        assert!(
            e.starts_with("svc.yaml:3: services[0].ports[0]: duplicate key `port`"),
            "{e}"
        );
        let e = err("services: []\nservices: []\n");
        assert!(
            e.starts_with("svc.yaml:2: (top level): duplicate key `services`"),
            "{e}"
        );
    }

    #[test]
    fn anchors_aliases_and_tags_are_refused() {
        let e = err("services:\n  - &a {name: a, vips: [10.0.0.1], ports: [{port: 1}]}\n  - *a\n");
        assert!(
            e.starts_with("svc.yaml:2: services[0]: anchors, aliases"),
            "{e}"
        );
        let e = err("services:\n  - {name: !!str a, vips: [10.0.0.1], ports: [{port: 1}]}\n");
        assert!(
            e.starts_with("svc.yaml:2: services[0].name: anchors"),
            "{e}"
        );
    }

    /// `n` services, one per line in flow style or in block style; the
    /// services named in `dup` reuse service 0's name and VIP.
    fn many(n: usize, flow: bool, dup: bool) -> String {
        let mut t = String::from(if flow {
            "{services: [\n"
        } else {
            "services:\n"
        });
        for i in 0..n {
            let k = if dup && i > 0 { 0 } else { i };
            let (a, b) = (k / 250, k % 250);
            if flow {
                t.push_str(&format!("{{name: s{k}, vips: [10.96.{a}.{b}], ports: [{{port: 80}}], endpoints: [{{address: 10.1.{a}.{b}}}]}},\n"));
            } else {
                t.push_str(&format!("  - name: s{k}\n    vips: [10.96.{a}.{b}]\n    ports: [{{port: 80}}]\n    endpoints: [{{address: 10.1.{a}.{b}}}]\n"));
            }
        }
        t.push_str(if flow { "]}\n" } else { "" });
        t
    }

    #[test]
    fn errors_in_a_large_flow_style_file_name_their_line() {
        let text = many(5000, true, false).replace("address: 10.1.15.17}", "address: 10.1.15.300}");
        let e = err(&text);
        // Service 3767 is on line 3768 (the first line opens the mapping).
        assert!(
            e.starts_with("svc.yaml:3769: services[3767].endpoints[0].address: invalid IP"),
            "{e}"
        );
        let text = many(5000, true, false).replace("{name: s4000,", "{name: s4000, name: x,");
        assert!(err(&text).starts_with("svc.yaml:4002: services[4000]: duplicate key `name`"));
    }

    #[test]
    fn many_errors_are_capped_and_each_has_its_line() {
        let started = std::time::Instant::now();
        let e = parse("svc.yaml", &many(16_000, false, true), &Capacity::default())
            .expect_err("duplicates");
        // A hang guard, not a benchmark (this takes milliseconds).
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        let SourceError::Invalid { problems, more, .. } = &e else {
            panic!("{e}");
        };
        assert_eq!(problems.len(), MAX_PROBLEMS);
        // Two problems (name, VIP) per duplicate service.
        assert_eq!(problems.len() + more, 2 * 15_999);
        assert_eq!(problems[0].path, "services[1].name");
        assert_eq!(problems[0].line, 6);
        assert_eq!(problems[1].path, "services[1].vips[0]");
        assert_eq!(problems[1].line, 7);
        assert_eq!(
            (problems[19].path.as_str(), problems[19].line),
            ("services[10].vips[0]", 43)
        );
        assert!(
            e.to_string().ends_with("... and 31978 more problems"),
            "{e}"
        );
    }

    #[test]
    fn deep_nesting_and_alias_bombs_are_rejected_at_once() {
        let started = std::time::Instant::now();
        let n = 100_000;
        let flow = format!("services: {}{}\n", "[".repeat(n), "]".repeat(n));
        assert!(err(&flow).contains("services[0]: expected a mapping, found a sequence"));
        let block = format!("services:\n{}x\n", "- ".repeat(n));
        assert!(err(&block).contains("services[0]: expected a mapping, found a sequence"));
        let in_field = format!("services: [{{name: {}}}]\n", "{".repeat(n));
        assert!(err(&in_field).contains("services[0].name: expected a string, found a mapping"));
        let mut bomb =
            String::from("services:\n  - &s {name: a, vips: [10.0.0.1], ports: [{port: 1}]}\n");
        for _ in 0..50_000 {
            bomb.push_str("  - *s\n");
        }
        assert!(err(&bomb).contains("anchors, aliases"));
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    #[test]
    fn non_utf8_names_its_line() {
        let e = parse_bytes(
            "svc.yaml",
            b"services:\n  - name: \xff\n",
            &Capacity::default(),
        )
        .expect_err("not utf-8")
        .to_string();
        assert!(e.starts_with("svc.yaml:2: not UTF-8"), "{e}");
    }

    #[test]
    fn only_bounded_regular_files_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let zero = dir.path().join("zero.yaml");
        std::os::unix::fs::symlink("/dev/zero", &zero).expect("symlink");
        let e = read_bounded(&zero, DEFAULT_MAX_BYTES).expect_err("device");
        assert!(
            matches!(
                e,
                SourceError::NotRegular {
                    kind: "a character device",
                    ..
                }
            ),
            "{e}"
        );

        let fifo = dir.path().join("fifo.yaml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        // Opening a FIFO with no writer would block without O_NONBLOCK.
        let e = read_bounded(&fifo, DEFAULT_MAX_BYTES).expect_err("fifo");
        assert!(
            matches!(e, SourceError::NotRegular { kind: "a FIFO", .. }),
            "{e}"
        );

        let e = read_bounded(dir.path(), DEFAULT_MAX_BYTES).expect_err("dir");
        assert!(
            matches!(e, SourceError::NotRegular { .. } | SourceError::Read { .. }),
            "{e}"
        );

        let big = dir.path().join("big.yaml");
        std::fs::write(&big, GOOD).expect("write");
        let limit = GOOD.len() as u64 - 1;
        let e = read_bounded(&big, limit).expect_err("too large");
        assert!(matches!(e, SourceError::TooLarge { .. }), "{e}");
        assert_eq!(
            read_bounded(&big, GOOD.len() as u64).expect("at the limit"),
            GOOD.as_bytes()
        );
    }

    fn poll_until(src: &mut FileSource, secs: u64) -> Option<Result<DesiredState, SourceError>> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Some(r) = src.poll(&Capacity::default()) {
                return Some(r);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    #[test]
    fn a_change_is_acted_on_once_and_only_when_stable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("svc.yaml");
        std::fs::write(&path, GOOD).expect("write");
        let mut src = FileSource::new(path.clone()).with_settle(Duration::from_millis(100));
        let t0 = Instant::now();
        assert!(
            src.poll(&Capacity::default()).is_none(),
            "not before it settled"
        );
        let first = poll_until(&mut src, 10).expect("applied").expect("valid");
        assert!(t0.elapsed() >= Duration::from_millis(100));
        assert_eq!(first.services.len(), 2);
        std::thread::sleep(Duration::from_millis(150));
        assert!(src.poll(&Capacity::default()).is_none(), "unchanged");
        std::fs::write(&path, "").expect("truncate");
        let e = poll_until(&mut src, 10)
            .expect("reported")
            .expect_err("empty");
        assert!(e.to_string().contains("no document"), "{e}");
        std::thread::sleep(Duration::from_millis(150));
        assert!(src.poll(&Capacity::default()).is_none(), "reported once");
    }

    /// A file replaced by a rename is complete when it appears: acted on at
    /// the first poll, even while the writer replaces it faster than the
    /// settle time (an in-place writer that fast would never settle).
    #[test]
    fn a_renamed_file_is_acted_on_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("svc.yaml");
        std::fs::write(&path, GOOD).expect("write");
        // The first read has nothing to compare with: it settles like any.
        let mut src = FileSource::new(path.clone()).with_settle(Duration::ZERO);
        poll_until(&mut src, 10).expect("applied").expect("valid");
        src.settle = Duration::from_secs(3600);
        for n in [3, 5, 7] {
            let tmp = dir.path().join("svc.yaml.tmp");
            std::fs::write(&tmp, many(n, false, false)).expect("write tmp");
            std::fs::rename(&tmp, &path).expect("rename");
            let got = src
                .poll(&Capacity::default())
                .expect("acted on at once")
                .expect("valid");
            assert_eq!(got.services.len(), n);
        }
        // The same inode rewritten in place waits for the (here endless)
        // settle. (Were the inode number reused from the one last acted on,
        // the change would settle too: never applied early.)
        std::fs::write(&path, GOOD).expect("in place");
        assert!(
            src.poll(&Capacity::default()).is_none(),
            "in place: settles"
        );
    }

    /// A fresh source (nothing applied yet, as a successor right after a
    /// handover) whose file is replaced by renames faster than the settle
    /// time applies the second read at once: the inode changed since the
    /// pending read. Before, it waited for two equal reads, which such a
    /// writer never gives.
    #[test]
    fn a_fresh_source_applies_a_renamed_file_without_settling() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("svc.yaml");
        std::fs::write(&path, many(2, false, false)).expect("write");
        let mut src = FileSource::new(path.clone()).with_settle(Duration::from_secs(3600));
        assert!(
            src.poll(&Capacity::default()).is_none(),
            "first read settles"
        );
        let tmp = dir.path().join("svc.yaml.tmp");
        std::fs::write(&tmp, many(4, false, false)).expect("write tmp");
        std::fs::rename(&tmp, &path).expect("rename");
        let got = src
            .poll(&Capacity::default())
            .expect("acted on at once")
            .expect("valid");
        assert_eq!(got.services.len(), 4);
    }

    /// An in-place rewrite (truncate, then the new text a line every 20 ms,
    /// as a slow writer would) is never applied half-written: every prefix
    /// cut at a line boundary is valid YAML with fewer endpoints.
    #[test]
    fn a_slow_in_place_rewrite_is_applied_only_when_complete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("svc.yaml");
        std::fs::write(&path, GOOD).expect("write");
        let mut src = FileSource::new(path.clone()).with_settle(DEFAULT_SETTLE);
        poll_until(&mut src, 10).expect("applied").expect("valid");
        let new = many(40, false, false);
        let writer = {
            let (path, new) = (path.clone(), new.clone());
            std::thread::spawn(move || {
                use std::io::Write;
                let mut f = std::fs::File::create(&path).expect("truncate");
                for line in new.split_inclusive('\n') {
                    f.write_all(line.as_bytes()).expect("write");
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        let mut applied = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !writer.is_finished() || applied.is_empty() {
            assert!(
                Instant::now() < deadline,
                "the complete file was never applied"
            );
            if let Some(r) = src.poll(&Capacity::default()) {
                applied.push(r.map(|s| s.services.len()).map_err(|e| e.to_string()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        writer.join().expect("writer");
        assert_eq!(applied, [Ok(40)], "only the complete file is acted on");
    }
}
