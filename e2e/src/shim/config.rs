//! What the shim is told: its nodes, the image → command table, and how pod
//! volumes and environment map onto this host.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use baton_api::pairpod::{DEFAULT_RUN_DIR, ENV_CGROUP, ENV_RUN_DIR};

/// A command-line mapping that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{what} {input:?}: {reason}")]
pub struct ParseError {
    /// Which kind of mapping.
    pub what: &'static str,
    /// The text given.
    pub input: String,
    /// Why it was refused.
    pub reason: String,
}

fn parse_error(what: &'static str, input: &str, reason: impl Into<String>) -> ParseError {
    ParseError {
        what,
        input: input.to_owned(),
        reason: reason.into(),
    }
}

/// Splits `KEY=VALUE` at the first `=` (image references, variable names and
/// absolute paths in keys never hold one).
fn split_pair<'a>(what: &'static str, s: &'a str) -> Result<(&'a str, &'a str), ParseError> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k, v)),
        _ => Err(parse_error(what, s, "expected KEY=VALUE")),
    }
}

/// What a container image runs as on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entrypoint {
    /// The shim's own `idle` mode: waits for SIGTERM, exits 0 (the empty image).
    Idle,
    /// A program and its leading arguments; the container's `args` follow them.
    Command {
        /// Executable path (or a name looked up in the shim's PATH).
        program: PathBuf,
        /// Arguments before the container's own.
        args: Vec<String>,
    },
}

/// `IMAGE=idle` or `IMAGE=PROGRAM [ARG...]` (words split on whitespace, no quoting).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageMapping {
    /// The image reference exactly as pods name it.
    pub image: String,
    /// What runs for it.
    pub entrypoint: Entrypoint,
}

impl FromStr for ImageMapping {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const WHAT: &str = "--image";
        let (image, command) = split_pair(WHAT, s)?;
        let mut words = command.split_whitespace();
        let entrypoint = match words.next() {
            None => return Err(parse_error(WHAT, s, "no command after '='")),
            Some("idle") if command.trim() == "idle" => Entrypoint::Idle,
            Some(program) => Entrypoint::Command {
                program: program.into(),
                args: words.map(str::to_owned).collect(),
            },
        };
        Ok(Self {
            image: image.to_owned(),
            entrypoint,
        })
    }
}

/// `HOST_PATH=LOCAL`: a hostPath volume at or under `HOST_PATH` lives under
/// `LOCAL` here. `LOCAL` may use `{root}` and `{node}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPathRule {
    /// Absolute path as pods name it (e.g. `/sys/fs/bpf`).
    pub host_path: String,
    /// Local directory template.
    pub local: String,
}

impl FromStr for HostPathRule {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const WHAT: &str = "--host-path";
        let (host, local) = split_pair(WHAT, s)?;
        if !host.starts_with('/') || local.is_empty() {
            return Err(parse_error(WHAT, s, "expected /ABSOLUTE/PATH=LOCAL_DIR"));
        }
        Ok(Self {
            host_path: host.trim_end_matches('/').to_owned(),
            local: local.to_owned(),
        })
    }
}

/// `NAME=CONTAINER_PATH`: the process gets `NAME` set to the local directory
/// behind `CONTAINER_PATH` (or behind the pod's own absolute value of `NAME`),
/// since a process cannot see the container's mounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEnv {
    /// Environment variable.
    pub name: String,
    /// Path inside the container it stands for when the pod does not set it.
    pub container_path: String,
}

impl FromStr for MountEnv {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const WHAT: &str = "--mount-env";
        let (name, path) = split_pair(WHAT, s)?;
        if !path.starts_with('/') {
            return Err(parse_error(WHAT, s, "expected NAME=/CONTAINER/PATH"));
        }
        Ok(Self {
            name: name.to_owned(),
            container_path: path.to_owned(),
        })
    }
}

/// `NAME=VALUE`, set in every container process after the pod's own env.
/// `VALUE` may use `{root}`, `{node}`, `{host_ip}`, `{namespace}`, `{pod}`,
/// `{container}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvTemplate {
    /// Environment variable.
    pub name: String,
    /// Value template.
    pub template: String,
}

impl FromStr for EnvTemplate {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, template) = split_pair("--env", s)?;
        Ok(Self {
            name: name.to_owned(),
            template: template.to_owned(),
        })
    }
}

/// One fake node: `NAME[=IP][,LABEL=VALUE...]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// Node name.
    pub name: String,
    /// InternalIP, also reported as hostIP and podIP of its pods.
    pub ip: IpAddr,
    /// Labels besides the standard `kubernetes.io/*` ones.
    pub labels: BTreeMap<String, String>,
}

impl NodeConfig {
    /// A node on 127.0.0.1 without extra labels.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            labels: BTreeMap::new(),
        }
    }
}

impl FromStr for NodeConfig {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const WHAT: &str = "--node";
        let mut parts = s.split(',');
        let head = parts.next().unwrap_or_default();
        let (name, ip) = match head.split_once('=') {
            Some((name, ip)) => (
                name,
                ip.parse()
                    .map_err(|e| parse_error(WHAT, s, format!("node IP {ip:?}: {e}")))?,
            ),
            None => (head, IpAddr::V4(Ipv4Addr::LOCALHOST)),
        };
        if name.is_empty() || name.contains('/') {
            return Err(parse_error(WHAT, s, "expected NAME[=IP][,LABEL=VALUE...]"));
        }
        let mut labels = BTreeMap::new();
        for label in parts {
            let (k, v) = split_pair(WHAT, label)?;
            labels.insert(k.to_owned(), v.to_owned());
        }
        Ok(Self {
            name: name.to_owned(),
            ip,
            labels,
        })
    }
}

/// Crash-loop back-off: the first restart is immediate, then `initial`,
/// doubling up to `max`, as the kubelet does (10 s .. 300 s there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay of the second restart.
    pub initial: Duration,
    /// Largest delay; a container that ran for twice this long starts over.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
        }
    }
}

/// How pod processes reach the API server: the shim writes a kubeconfig per
/// pod with these and the pod's service-account token file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodApiAccess {
    /// API server URL.
    pub server: String,
    /// CA bundle file, as in a kubeconfig's `certificate-authority`.
    pub certificate_authority: Option<String>,
    /// Base64 CA bundle, as in `certificate-authority-data`.
    pub certificate_authority_data: Option<String>,
    /// `insecure-skip-tls-verify`.
    pub insecure_skip_tls_verify: bool,
}

impl PodApiAccess {
    /// The server and CA of `kubeconfig`'s current context; `None` if it names no cluster.
    pub fn from_kubeconfig(kubeconfig: &kube::config::Kubeconfig) -> Option<Self> {
        let context_name = kubeconfig.current_context.as_deref()?;
        let context = kubeconfig
            .contexts
            .iter()
            .find(|c| c.name == context_name)?
            .context
            .as_ref()?;
        let cluster = kubeconfig
            .clusters
            .iter()
            .find(|c| c.name == context.cluster)?
            .cluster
            .as_ref()?;
        Some(Self {
            server: cluster.server.clone()?,
            certificate_authority: cluster.certificate_authority.clone(),
            certificate_authority_data: cluster.certificate_authority_data.clone(),
            insecure_skip_tls_verify: cluster.insecure_skip_tls_verify.unwrap_or(false),
        })
    }
}

/// Everything the shim needs besides an API client.
#[derive(Clone, Debug)]
pub struct ShimConfig {
    /// Root of every node's directories and of the container logs.
    pub root: PathBuf,
    /// The nodes this shim plays the kubelet for.
    pub nodes: Vec<NodeConfig>,
    /// Image → command; images not listed fail with `ErrImagePull`.
    pub images: Vec<ImageMapping>,
    /// hostPath rules, checked before the defaults (longest prefix wins).
    pub host_paths: Vec<HostPathRule>,
    /// Variables that carry a mount's local path to the process.
    pub mount_env: Vec<MountEnv>,
    /// Extra variables for every container process.
    pub env: Vec<EnvTemplate>,
    /// Variables copied from the shim's own environment.
    pub pass_env: Vec<String>,
    /// Crash-loop back-off.
    pub backoff: Backoff,
    /// Node heartbeat period (Lease renewal and Ready condition).
    pub heartbeat: Duration,
    /// Binary that provides `idle` (normally the shim's own executable).
    pub shim_exe: PathBuf,
    /// Per-pod kubeconfig target; `None` = processes get no `KUBECONFIG`.
    pub pod_api: Option<PodApiAccess>,
}

impl ShimConfig {
    /// Defaults for `nodes` under `root`; `shim_exe` provides `idle`.
    pub fn new(root: &Path, nodes: Vec<NodeConfig>, shim_exe: &Path) -> Self {
        Self {
            root: root.to_owned(),
            nodes,
            images: Vec::new(),
            host_paths: Vec::new(),
            mount_env: default_mount_env(),
            env: Vec::new(),
            pass_env: ["PATH", "RUST_LOG", "RUST_BACKTRACE"]
                .map(String::from)
                .to_vec(),
            backoff: Backoff::default(),
            heartbeat: Duration::from_secs(10),
            shim_exe: shim_exe.to_owned(),
            pod_api: None,
        }
    }

    /// hostPath rules in the order they are tried: the configured ones, then
    /// `/sys/fs/bpf` → `{root}/{node}/bpffs` and `/sys/fs/cgroup` → `{root}/{node}/cgroup`.
    pub fn host_path_rules(&self) -> Vec<HostPathRule> {
        let mut rules = self.host_paths.clone();
        rules.extend(DEFAULT_HOST_PATHS.iter().map(|(host, local)| HostPathRule {
            host_path: (*host).to_owned(),
            local: (*local).to_owned(),
        }));
        rules
    }

    /// Directory of one node.
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.root.join(node)
    }

    /// Directory of the container logs of one node (kept after pods go).
    pub fn log_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("logs")
    }

    /// The entrypoint of `image`, if mapped.
    pub fn entrypoint(&self, image: &str) -> Option<&Entrypoint> {
        self.images
            .iter()
            .find(|m| m.image == image)
            .map(|m| &m.entrypoint)
    }
}

/// hostPath defaults: the two host directories the agent pod mounts.
pub const DEFAULT_HOST_PATHS: [(&str, &str); 2] = [
    ("/sys/fs/bpf", "{root}/{node}/bpffs"),
    ("/sys/fs/cgroup", "{root}/{node}/cgroup"),
];

/// The agent's path variables and the in-container paths they default to
/// (node-agent's `--bpffs`, `--cgroup`, `--run-dir`).
pub fn default_mount_env() -> Vec<MountEnv> {
    [
        ("BATON_BPFFS", "/sys/fs/bpf/baton"),
        (ENV_CGROUP, "/sys/fs/cgroup"),
        (ENV_RUN_DIR, DEFAULT_RUN_DIR),
    ]
    .map(|(name, path)| MountEnv {
        name: name.to_owned(),
        container_path: path.to_owned(),
    })
    .to_vec()
}

/// Replaces `{key}` placeholders.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    values.iter().fold(template.to_owned(), |acc, (k, v)| {
        acc.replace(&format!("{{{k}}}"), v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_mappings_parse_idle_and_commands() {
        let m: ImageMapping = "ghcr.io/x/empty:1=idle".parse().expect("idle");
        assert_eq!(m.image, "ghcr.io/x/empty:1");
        assert_eq!(m.entrypoint, Entrypoint::Idle);
        let m: ImageMapping = "agent:v1=/bin/agent run --x".parse().expect("command");
        assert_eq!(
            m.entrypoint,
            Entrypoint::Command {
                program: "/bin/agent".into(),
                args: vec!["run".into(), "--x".into()]
            }
        );
        assert!("agent:v1=".parse::<ImageMapping>().is_err());
        assert!("=idle".parse::<ImageMapping>().is_err());
    }

    #[test]
    fn nodes_parse_name_ip_and_labels() {
        let n: NodeConfig = "w1=127.0.1.1,baton.dev/mesh=on,zone=a"
            .parse()
            .expect("node");
        assert_eq!(n.name, "w1");
        assert_eq!(n.ip.to_string(), "127.0.1.1");
        assert_eq!(n.labels["baton.dev/mesh"], "on");
        assert_eq!(n.labels.len(), 2);
        let n: NodeConfig = "w2".parse().expect("bare node");
        assert_eq!(n.ip.to_string(), "127.0.0.1");
        assert!("w3=not-an-ip".parse::<NodeConfig>().is_err());
        assert!("w4,label".parse::<NodeConfig>().is_err());
    }

    #[test]
    fn host_path_rules_come_before_defaults_and_templates_fill() {
        let mut cfg = ShimConfig::new(Path::new("/r"), vec![], Path::new("/shim"));
        cfg.host_paths.push(
            "/sys/fs/cgroup=/sys/fs/cgroup/t-{node}"
                .parse()
                .expect("rule"),
        );
        let rules = cfg.host_path_rules();
        assert_eq!(rules[0].local, "/sys/fs/cgroup/t-{node}");
        assert_eq!(rules.len(), 3);
        assert_eq!(
            fill("{root}/{node}/x", &[("root", "/r"), ("node", "n")]),
            "/r/n/x"
        );
        assert!("relative=/x".parse::<HostPathRule>().is_err());
    }
}
