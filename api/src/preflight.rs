//! The report of `baton-agent preflight` (docs/operations.md, "Preflight"):
//! a new agent build checks itself against one node's kernel and live state
//! before its first handover there, changing nothing.
//!
//! `baton-agent preflight --json` prints one [`Report`] on stdout, as one
//! line starting with [`JSON_PREFIX`] (logs go to stderr; in a pod's merged
//! log the report is that line), and exits with [`EXIT_PASSED`],
//! [`EXIT_FAILED`] (the report says why) or [`EXIT_ERROR`] (no report:
//! preflight itself could not run, the reason is on stderr). Five checks,
//! each with an [`Outcome`] and a one-line `summary`:
//!
//! | check | passes when |
//! |---|---|
//! | [`Report::environment`] | `--bpffs` is (or would be created) on a bpffs, `--cgroup` is a cgroup v2 directory |
//! | [`Report::programs`] | the kernel's verifier accepts every program of the build (loaded, never attached or pinned) |
//! | [`Report::maps`] | every pinned map can be reused, migrated or recreated by this build, and every entry of a migrated map converts |
//! | [`Report::links`] | the pinned links are bpf_links on `--cgroup` (a takeover updates them in place) |
//! | [`Report::handover`] | no agent answers on `--run-dir`, or the one that does shares a handover protocol version with this build |
//!
//! Readers should accept fields they do not know (the report grows);
//! [`REPORT_VERSION`] changes when a field changes meaning or goes away.

use serde::{Deserialize, Serialize};

pub use crate::admin::ProtocolRange;

/// [`Report::report_version`] of this crate's report.
pub const REPORT_VERSION: u32 = 1;
/// How the report's line starts (`report_version` is its first field).
pub const JSON_PREFIX: &str = "{\"report_version\":";
/// Exit status: every check passed.
pub const EXIT_PASSED: u8 = 0;
/// Exit status: a check failed ([`Report::failures`] says which and why).
pub const EXIT_FAILED: u8 = 1;
/// Exit status: preflight could not run (bad arguments, or an internal
/// error); no report is printed, the reason is on stderr.
pub const EXIT_ERROR: u8 = 2;

/// The whole report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Version of this report's format ([`REPORT_VERSION`]).
    pub report_version: u32,
    /// The build that checked itself.
    pub build: Build,
    /// The node it checked itself against.
    pub node: Node,
    /// Every check passed.
    pub passed: bool,
    /// One line per failed check, `<check>: <why>`, in check order; empty
    /// when `passed`.
    pub failures: Vec<String>,
    /// The bpffs and cgroup directories.
    pub environment: EnvironmentCheck,
    /// The build's programs through this kernel's verifier.
    pub programs: ProgramsCheck,
    /// The migration a takeover would do, map by map.
    pub maps: MapsCheck,
    /// The pinned links a takeover would update.
    pub links: LinksCheck,
    /// The running agent a handover would take over from.
    pub handover: HandoverCheck,
    /// Wall time of the whole preflight, microseconds.
    pub duration_us: u64,
}

impl Report {
    /// The exit status for this report.
    pub fn exit_code(&self) -> u8 {
        if self.passed {
            EXIT_PASSED
        } else {
            EXIT_FAILED
        }
    }
}

/// The agent build that ran preflight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Build {
    /// The agent's crate version.
    pub version: String,
    /// Its map layout generation.
    pub layout_version: u32,
    /// The handover protocol versions it speaks.
    pub handover_protocol: ProtocolRange,
}

/// Where preflight looked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Kernel release (`/proc/sys/kernel/osrelease`).
    pub kernel: String,
    /// `--bpffs`.
    pub bpffs: String,
    /// `--run-dir`.
    pub run_dir: String,
    /// `--cgroup`.
    pub cgroup: String,
}

/// Result of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Nothing stands in the way of a takeover.
    Pass,
    /// A takeover by this build would fail here (`summary` says why).
    Fail,
}

/// The directories a takeover works in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentCheck {
    /// Pass or fail.
    pub outcome: Outcome,
    /// One line.
    pub summary: String,
    /// `--bpffs` exists on a bpffs (false on a fresh node: `run` creates it).
    pub bpffs_mounted: bool,
    /// `--cgroup` is a cgroup v2 directory.
    pub cgroup_v2: bool,
}

/// This build's programs, verified by this node's kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramsCheck {
    /// Pass or fail.
    pub outcome: Outcome,
    /// One line.
    pub summary: String,
    /// Per program, in load order; a program after a failed object load is
    /// absent.
    pub programs: Vec<ProgramCheck>,
    /// Why the object itself (maps, BTF, relocations) did not load, before
    /// any program reached the verifier.
    pub object_error: Option<String>,
}

/// One program through the verifier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramCheck {
    /// Program (function) name, e.g. `baton_connect4`.
    pub name: String,
    /// Attach point: `connect4` or `connect6`.
    pub attach: String,
    /// The kernel accepted it.
    pub loaded: bool,
    /// Instructions the verifier processed (kernel ≥ 5.16), when loaded.
    pub verified_insns: Option<u32>,
    /// Size of the translated program in bytes, when loaded.
    pub xlated_bytes: Option<u32>,
    /// Time of the `BPF_PROG_LOAD` (the verifier's run), microseconds.
    pub load_us: u64,
    /// Why it did not load.
    pub error: Option<String>,
    /// The kernel's verifier log when it rejected the program: its last
    /// lines, the reason last.
    pub verifier_log: Option<String>,
}

/// What a takeover would do with each map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MapAction {
    /// Nothing pinned: created empty.
    Create,
    /// Same layout: the pinned map is used as it is.
    Reuse,
    /// Layout changed: a new map, every entry converted and copied.
    Migrate,
    /// Layout changed, policy recreate-empty: the new build's empty map.
    RecreateEmpty,
    /// The map cannot be carried over (`error` says why): the takeover
    /// would fail.
    Refused,
}

/// The plan for one map of the build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapPlan {
    /// Map name (pin file name).
    pub name: String,
    /// What a takeover would do.
    pub action: MapAction,
    /// Entries in the pinned map (arrays: every slot); `None` when nothing is
    /// pinned or the map could not be read.
    pub entries: Option<u64>,
    /// Entries the takeover would copy (migrated maps; 0 otherwise).
    pub entries_to_copy: u64,
    /// What differs between the pinned map and this build's, e.g.
    /// `max_entries 131072 → 262144`, `+value.weight (zero)`; empty when
    /// reused or created.
    pub changes: Vec<String>,
    /// The measured sample copy of this map (migrated maps with entries).
    pub sample: Option<CopySample>,
    /// Estimated time of the copy, microseconds.
    pub estimated_copy_us: u64,
    /// Why the map cannot be carried over, or its entries do not convert.
    pub error: Option<String>,
}

/// A copy of the first entries of a live map into a scratch map of the new
/// layout, through the real converter and copy path; the scratch map is
/// never pinned and is dropped at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopySample {
    /// Entries copied.
    pub entries: u64,
    /// Time taken, microseconds.
    pub micros: u64,
    /// The batch syscalls were used (else per element).
    pub batch: bool,
}

/// The migration a takeover by this build would do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapsCheck {
    /// Pass or fail.
    pub outcome: Outcome,
    /// One line.
    pub summary: String,
    /// Any map is pinned under `--bpffs` (false on a fresh node).
    pub pins_found: bool,
    /// Layout generation recorded in the pinned meta map, if readable.
    pub pinned_layout: Option<u32>,
    /// Generation recorded in the pinned meta map, if readable.
    pub pinned_generation: Option<u64>,
    /// Per map of this build, in build order.
    pub maps: Vec<MapPlan>,
    /// Maps reused as they are.
    pub reused: u32,
    /// Maps migrated.
    pub migrated: u32,
    /// Maps recreated empty.
    pub recreated: u32,
    /// Maps created (nothing pinned).
    pub created: u32,
    /// Entries to copy, all maps.
    pub entries_to_copy: u64,
    /// Estimated copy time, all maps, microseconds.
    pub estimated_copy_us: u64,
    /// How the estimate was made.
    pub estimate_method: String,
}

/// One pinned link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkCheck {
    /// Attach point: `connect4` or `connect6`.
    pub attach: String,
    /// Pin path.
    pub pin: String,
    /// Kernel link id.
    pub link_id: u32,
    /// Program the link runs now.
    pub prog_id: u32,
    /// cgroup id (inode) the link is attached to.
    pub cgroup_id: u64,
    /// That cgroup is `--cgroup`.
    pub on_cgroup: bool,
}

/// The links a takeover would update in place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinksCheck {
    /// Pass or fail.
    pub outcome: Outcome,
    /// One line.
    pub summary: String,
    /// Pinned links (none on a fresh node: a takeover creates them).
    pub links: Vec<LinkCheck>,
}

/// The agent a handover would take over from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverCheck {
    /// Pass or fail.
    pub outcome: Outcome,
    /// One line.
    pub summary: String,
    /// The agent answering on `--run-dir`'s admin socket, if one does.
    pub agent: Option<RunningAgent>,
    /// Why no agent answered (a fresh node, or a dead agent: the takeover
    /// would start from the pins); `None` when one answered.
    pub no_agent: Option<String>,
    /// `<run-dir>/handover.sock` exists.
    pub socket_present: bool,
    /// The protocol version a handover would run at, when an agent answered
    /// and shares one with this build.
    pub session_protocol: Option<u32>,
}

/// What the running agent said about itself (its `status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningAgent {
    /// Its version.
    pub version: String,
    /// Its map layout.
    pub layout_version: u32,
    /// Its process id.
    pub pid: u32,
    /// Generation in the meta map.
    pub generation: u64,
    /// Its pin directory (a handover stages next to it: it must be `--bpffs`).
    pub pin_dir: String,
    /// The protocol versions it speaks.
    pub handover_protocol: ProtocolRange,
    /// It did not say (an agent from before the field): protocol 1 assumed.
    pub protocol_assumed: bool,
    /// A handover is freezing it right now.
    pub frozen: bool,
    /// Syncs it has done.
    pub syncs: u64,
}

/// Most bytes of a [`Summary`] as [`Summary::to_bounded_json`] writes it:
/// the kubelet keeps at most 4096 bytes of a container's termination
/// message, where the operator reads it.
pub const SUMMARY_MAX_BYTES: usize = 4096;
/// Most failure lines a [`Summary`] keeps.
const SUMMARY_MAX_FAILURES: usize = 4;
/// Most characters of one failure line in a [`Summary`].
const SUMMARY_MAX_FAILURE_CHARS: usize = 600;

/// The report in a few hundred bytes, for a pod's termination message
/// (`baton-agent preflight --summary-file /dev/termination-log`): what the
/// operator's preflight phase reads from each node's check pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// [`REPORT_VERSION`] of the report it sums up.
    pub report_version: u32,
    /// Every check passed.
    pub passed: bool,
    /// The first failure lines, each cut to a few hundred characters.
    pub failures: Vec<String>,
    /// The build that checked itself.
    pub build: Build,
    /// Kernel release of the node.
    pub kernel: String,
    /// Programs the verifier accepted, of `programs_total`.
    pub programs_loaded: u32,
    /// Programs of the build.
    pub programs_total: u32,
    /// Maps a takeover would reuse.
    pub maps_reused: u32,
    /// Maps it would migrate.
    pub maps_migrated: u32,
    /// Maps it would recreate empty.
    pub maps_recreated: u32,
    /// Maps it would create (nothing pinned).
    pub maps_created: u32,
    /// Entries it would copy.
    pub entries_to_copy: u64,
    /// Estimated copy time, microseconds.
    pub estimated_copy_us: u64,
    /// Protocol version the handover would run at, when an agent answered.
    pub session_protocol: Option<u32>,
    /// Wall time of the preflight, microseconds.
    pub duration_us: u64,
}

impl Report {
    /// The compact form of this report.
    pub fn summary(&self) -> Summary {
        let loaded = self.programs.programs.iter().filter(|p| p.loaded).count();
        Summary {
            report_version: self.report_version,
            passed: self.passed,
            failures: self
                .failures
                .iter()
                .take(SUMMARY_MAX_FAILURES)
                .map(|f| cut(f, SUMMARY_MAX_FAILURE_CHARS))
                .collect(),
            build: self.build.clone(),
            kernel: cut(&self.node.kernel, 128),
            programs_loaded: u32::try_from(loaded).unwrap_or(u32::MAX),
            programs_total: u32::try_from(self.programs.programs.len()).unwrap_or(u32::MAX),
            maps_reused: self.maps.reused,
            maps_migrated: self.maps.migrated,
            maps_recreated: self.maps.recreated,
            maps_created: self.maps.created,
            entries_to_copy: self.maps.entries_to_copy,
            estimated_copy_us: self.maps.estimated_copy_us,
            session_protocol: self.handover.session_protocol,
            duration_us: self.duration_us,
        }
    }
}

impl Summary {
    /// One JSON line of at most [`SUMMARY_MAX_BYTES`]: failure lines are
    /// dropped from the end until it fits (the verdict always stays).
    pub fn to_bounded_json(&self) -> Result<String, serde_json::Error> {
        let mut s = self.clone();
        loop {
            let json = serde_json::to_string(&s)?;
            if json.len() <= SUMMARY_MAX_BYTES || s.failures.is_empty() {
                return Ok(json);
            }
            s.failures.pop();
        }
    }
}

/// `s` cut to `max` characters, with an ellipsis when cut.
fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code

    use super::*;
    use serde_json::json;

    fn report(passed: bool) -> Report {
        let pass = Outcome::Pass;
        Report {
            report_version: REPORT_VERSION,
            build: Build {
                version: "0.1.0".into(),
                layout_version: 2,
                handover_protocol: ProtocolRange { min: 1, max: 1 },
            },
            node: Node {
                kernel: "6.18.0".into(),
                bpffs: "/sys/fs/bpf/baton".into(),
                run_dir: "/run/baton".into(),
                cgroup: "/sys/fs/cgroup".into(),
            },
            passed,
            failures: if passed {
                vec![]
            } else {
                vec!["programs: baton_connect4: rejected".into()]
            },
            environment: EnvironmentCheck {
                outcome: pass,
                summary: "ok".into(),
                bpffs_mounted: true,
                cgroup_v2: true,
            },
            programs: ProgramsCheck {
                outcome: if passed { pass } else { Outcome::Fail },
                summary: "2 programs verified".into(),
                programs: vec![ProgramCheck {
                    name: "baton_connect4".into(),
                    attach: "connect4".into(),
                    loaded: passed,
                    verified_insns: Some(120),
                    xlated_bytes: Some(960),
                    load_us: 800,
                    error: None,
                    verifier_log: None,
                }],
                object_error: None,
            },
            maps: MapsCheck {
                outcome: pass,
                summary: "1 migrated".into(),
                pins_found: true,
                pinned_layout: Some(1),
                pinned_generation: Some(3),
                maps: vec![MapPlan {
                    name: "endpoint".into(),
                    action: MapAction::Migrate,
                    entries: Some(10),
                    entries_to_copy: 10,
                    changes: vec!["+value.weight (zero)".into()],
                    sample: Some(CopySample {
                        entries: 10,
                        micros: 50,
                        batch: true,
                    }),
                    estimated_copy_us: 50,
                    error: None,
                }],
                reused: 0,
                migrated: 1,
                recreated: 0,
                created: 0,
                entries_to_copy: 10,
                estimated_copy_us: 50,
                estimate_method: "sample".into(),
            },
            links: LinksCheck {
                outcome: pass,
                summary: "ok".into(),
                links: vec![],
            },
            handover: HandoverCheck {
                outcome: pass,
                summary: "no agent".into(),
                agent: None,
                no_agent: Some("connection refused".into()),
                socket_present: false,
                session_protocol: None,
            },
            duration_us: 1000,
        }
    }

    #[test]
    fn the_summary_fits_a_termination_message_and_keeps_the_verdict() {
        let mut r = report(false);
        r.failures = (0..50)
            .map(|i| format!("programs: {i} {}", "x".repeat(5000)))
            .collect();
        let s = r.summary();
        assert!(!s.passed);
        assert_eq!(s.failures.len(), SUMMARY_MAX_FAILURES);
        assert!(s.failures[0].chars().count() <= SUMMARY_MAX_FAILURE_CHARS + 1);
        let json = s.to_bounded_json().unwrap();
        assert!(json.len() <= SUMMARY_MAX_BYTES, "{}", json.len());
        let back: Summary = serde_json::from_str(&json).unwrap();
        assert!(!back.passed);
        assert!(!back.failures.is_empty());
        assert_eq!(back.build, r.build);
        let ok = report(true).summary();
        assert_eq!(ok.programs_loaded, ok.programs_total);
        assert_eq!(
            serde_json::from_str::<Summary>(&ok.to_bounded_json().unwrap()).unwrap(),
            ok
        );
    }

    #[test]
    fn a_report_reads_back_as_written() {
        for passed in [true, false] {
            let r = report(passed);
            let v = serde_json::to_value(&r).unwrap();
            assert_eq!(serde_json::from_value::<Report>(v).unwrap(), r);
            assert_eq!(r.exit_code(), if passed { 0 } else { 1 });
        }
    }

    #[test]
    fn the_report_line_starts_with_its_version() {
        let line = serde_json::to_string(&report(true)).unwrap();
        assert!(line.starts_with(JSON_PREFIX), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn enums_are_snake_case_on_the_wire() {
        let v = serde_json::to_value(report(true)).unwrap();
        assert_eq!(v["maps"]["maps"][0]["action"], json!("migrate"));
        assert_eq!(v["programs"]["outcome"], json!("pass"));
        assert_eq!(
            serde_json::to_value(MapAction::RecreateEmpty).unwrap(),
            json!("recreate_empty")
        );
        assert_eq!(v["build"]["handover_protocol"], json!({"min": 1, "max": 1}));
    }

    #[test]
    fn unknown_fields_are_accepted_so_the_report_can_grow() {
        let mut v = serde_json::to_value(report(true)).unwrap();
        v["from_a_newer_agent"] = json!(1);
        v["maps"]["maps"][0]["also_new"] = json!("x");
        assert_eq!(serde_json::from_value::<Report>(v).unwrap(), report(true));
    }
}
