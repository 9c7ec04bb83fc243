//! The services file: parsed strictly, validated against the map capacities,
//! every error named by file, line and field. A rejected file changes nothing.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use baton_ebpf::LbPolicy;
use serde::Deserialize;

use super::locate::line_of;
use crate::model::{Capacity, DesiredState, EndpointSpec, PortSpec, ServiceSpec};

/// Why a source's desired state was not applied (file or cluster).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Read {
        /// File.
        file: String,
        /// Cause.
        source: std::io::Error,
    },
    /// YAML syntax or type error.
    #[error("{file}:{line}: {message}")]
    Syntax {
        /// File.
        file: String,
        /// Line (1-based, 0 when unknown).
        line: usize,
        /// serde_yaml's message (includes the field path).
        message: String,
    },
    /// Rules the content breaks.
    #[error("{}", .problems.iter().map(|p| format!("{}:{}: {}: {}", .file, p.0, p.1, p.2)).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// File.
        file: String,
        /// (line, field path, reason).
        problems: Vec<(usize, String, String)>,
    },
    /// The cluster's Services/EndpointSlices could not be watched, or their
    /// state breaks a rule or the map capacities (services named `ns/name`).
    #[error("kubernetes: {message}")]
    Cluster {
        /// What failed, e.g. `ns/web: endpoints[3].address: …`.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    services: Vec<FileService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileService {
    name: String,
    vips: Vec<IpAddr>,
    ports: Vec<FilePort>,
    #[serde(default = "default_policy")]
    policy: FilePolicy,
    #[serde(default)]
    endpoints: Vec<FileEndpoint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FilePort {
    port: u16,
    target_port: Option<u16>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum FilePolicy {
    Random,
    Strict,
    Failover,
}

fn default_policy() -> FilePolicy {
    FilePolicy::Random
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileEndpoint {
    address: IpAddr,
    #[serde(default)]
    port: u16,
    #[serde(default)]
    priority: u8,
}

/// Parses and validates a services file's text.
pub fn parse(file: &str, text: &str, cap: &Capacity) -> Result<DesiredState, SourceError> {
    let doc = match super::items::parse_items::<FileService>(text) {
        Some(services) => FileDoc { services },
        None => serde_yaml::from_str(text).map_err(|e| SourceError::Syntax {
            file: file.into(),
            line: e.location().map_or(0, |l| l.line()),
            message: e.to_string(),
        })?,
    };
    let services = doc
        .services
        .into_iter()
        .map(|s| ServiceSpec {
            name: s.name,
            vips: s.vips,
            ports: s
                .ports
                .iter()
                .map(|p| PortSpec {
                    port: p.port,
                    target_port: p.target_port.unwrap_or(p.port),
                })
                .collect(),
            policy: match s.policy {
                FilePolicy::Random => LbPolicy::Random,
                FilePolicy::Strict => LbPolicy::Strict,
                FilePolicy::Failover => LbPolicy::Failover,
            },
            endpoints: s
                .endpoints
                .iter()
                .map(|e| EndpointSpec {
                    address: e.address,
                    port: e.port,
                    priority: e.priority,
                })
                .collect(),
        })
        .collect();
    let state = DesiredState { services };
    let invalid = state.validate(cap);
    if invalid.is_empty() {
        return Ok(state);
    }
    Err(SourceError::Invalid {
        file: file.into(),
        problems: invalid
            .into_iter()
            .map(|i| (line_of(text, &i.path), i.path, i.reason))
            .collect(),
    })
}

/// Loads a services file.
pub fn load(path: &Path, cap: &Capacity) -> Result<DesiredState, SourceError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SourceError::Read {
        file: file.clone(),
        source,
    })?;
    parse(&file, &text, cap)
}

/// A services file watched by polling its metadata and content.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    seen: Option<(Option<SystemTime>, u64, u64)>,
}

impl FileSource {
    /// Watches `path`.
    pub fn new(path: PathBuf) -> Self {
        Self { path, seen: None }
    }

    /// The watched file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The new desired state when the file changed since the last call
    /// (always on the first call); `None` when unchanged.
    pub fn poll(&mut self, cap: &Capacity) -> Option<Result<DesiredState, SourceError>> {
        let meta = std::fs::metadata(&self.path);
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(source) => {
                let key = (None, u64::MAX, 0);
                if self.seen == Some(key) {
                    return None;
                }
                self.seen = Some(key);
                return Some(Err(SourceError::Read {
                    file: self.path.display().to_string(),
                    source,
                }));
            }
        };
        let key = (
            meta.ok().and_then(|m| m.modified().ok()),
            text.len() as u64,
            fnv1a(&text),
        );
        if self.seen == Some(key) {
            return None;
        }
        self.seen = Some(key);
        let file = self.path.display().to_string();
        Some(match String::from_utf8(text) {
            Ok(t) => parse(&file, &t, cap),
            Err(_) => Err(SourceError::Syntax {
                file,
                line: 0,
                message: "not UTF-8 text".into(),
            }),
        })
    }
}

fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, &c| {
        (h ^ u64::from(c)).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
