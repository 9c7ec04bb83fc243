//! Pod volumes on this host. A process cannot get the container's mounts, so
//! hostPath and emptyDir volumes become directories under the shim root and
//! the process learns where they are through environment variables.
//!
//! Layout: hostPath `/sys/fs/bpf` → `<root>/<node>/bpffs` and `/sys/fs/cgroup`
//! → `<root>/<node>/cgroup` (unless `--host-path` says otherwise), any other
//! hostPath `P` → `<root>/<node>/host/P`; emptyDir and projected volumes →
//! `<root>/<node>/<pod>-<uid prefix>/<volume>`, shared by the pod's containers.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, ProjectedVolumeSource};

use super::config::{fill, HostPathRule, MountEnv, ShimConfig};

/// A volume the shim cannot provide; the pod waits in `ContainerCreating`.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A volume type the shim does not map.
    #[error("volume {volume}: {what} volumes are not supported by the node shim")]
    Unsupported {
        /// Volume name.
        volume: String,
        /// Its type.
        what: &'static str,
    },
    /// hostPath of type Directory/File/... that does not exist locally.
    #[error("volume {volume}: hostPath type {kind} but {} does not exist", path.display())]
    Missing {
        /// Volume name.
        volume: String,
        /// hostPath type.
        kind: String,
        /// Local path.
        path: PathBuf,
    },
    /// A mount names no volume of the pod.
    #[error("volumeMount {mount}: no volume {volume} in the pod")]
    UnknownVolume {
        /// Mount path.
        mount: String,
        /// Volume name.
        volume: String,
    },
    /// A subPath that leaves its volume.
    #[error(
        "volumeMount {mount}: subPath {sub_path:?} must be relative and stay inside the volume"
    )]
    BadSubPath {
        /// Mount path.
        mount: String,
        /// The subPath.
        sub_path: String,
    },
    /// Creating a directory failed.
    #[error("creating {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The per-pod directory (emptyDir and projected volumes, kubeconfig).
pub fn pod_dir(cfg: &ShimConfig, node: &str, pod: &Pod) -> PathBuf {
    let name = pod.metadata.name.as_deref().unwrap_or("pod");
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    // The uid keeps a re-created pod of the same name apart; a short prefix
    // keeps socket paths well under the 108-byte limit.
    let uid: String = uid.chars().take(8).collect();
    cfg.node_dir(node).join(format!("{name}-{uid}"))
}

/// Local directory of hostPath `host_path` on `node`: the longest matching rule.
pub fn host_path_local(
    rules: &[HostPathRule],
    root: &Path,
    node: &str,
    host_path: &str,
) -> PathBuf {
    let values = [("root", &*root.to_string_lossy()), ("node", node)];
    let host = host_path.trim_end_matches('/');
    // Longest prefix wins; among equally long ones the first (configured
    // rules come before the defaults, so `--host-path /sys/fs/cgroup=...`
    // overrides the default for the same path).
    let best = rules
        .iter()
        .filter(|r| host == r.host_path || host.starts_with(&format!("{}/", r.host_path)))
        .min_by_key(|r| std::cmp::Reverse(r.host_path.len()));
    match best {
        Some(rule) => {
            let rest = host[rule.host_path.len()..].trim_start_matches('/');
            let base = PathBuf::from(fill(&rule.local, &values));
            if rest.is_empty() {
                base
            } else {
                base.join(rest)
            }
        }
        None => root
            .join(node)
            .join("host")
            .join(host.trim_start_matches('/')),
    }
}

/// A pod's volumes, by name, as local directories.
#[derive(Debug, Default)]
pub struct PodVolumes {
    /// Volume name → local path.
    pub dirs: BTreeMap<String, PathBuf>,
    /// Projected volumes whose files the worker writes (token, CA, namespace).
    pub projected: Vec<(PathBuf, ProjectedVolumeSource)>,
}

/// Creates the local side of every volume of `pod` (kubelet's volume setup).
pub fn prepare(cfg: &ShimConfig, node: &str, pod: &Pod) -> Result<PodVolumes, VolumeError> {
    let pod_dir = pod_dir(cfg, node, pod);
    let rules = cfg.host_path_rules();
    let mut out = PodVolumes::default();
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    for volume in volumes.into_iter().flatten() {
        let name = &volume.name;
        let unsupported = |what| VolumeError::Unsupported {
            volume: name.clone(),
            what,
        };
        let local = if let Some(host) = &volume.host_path {
            let local = host_path_local(&rules, &cfg.root, node, &host.path);
            let kind = host.type_.clone().unwrap_or_default();
            match kind.as_str() {
                "DirectoryOrCreate" => fs::create_dir_all(&local).map_err(io(&local))?,
                "FileOrCreate" => {
                    if let Some(parent) = local.parent() {
                        fs::create_dir_all(parent).map_err(io(parent))?;
                    }
                    fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&local)
                        .map_err(io(&local))?;
                }
                "" => {}
                _ if local.exists() => {}
                _ => {
                    return Err(VolumeError::Missing {
                        volume: name.clone(),
                        kind,
                        path: local,
                    })
                }
            }
            local
        } else if volume.empty_dir.is_some() {
            let local = pod_dir.join(name);
            fs::create_dir_all(&local).map_err(io(&local))?;
            local
        } else if let Some(projected) = &volume.projected {
            let local = pod_dir.join(name);
            fs::create_dir_all(&local).map_err(io(&local))?;
            out.projected.push((local.clone(), projected.clone()));
            local
        } else if volume.config_map.is_some() {
            return Err(unsupported("configMap"));
        } else if volume.secret.is_some() {
            return Err(unsupported("secret"));
        } else if volume.downward_api.is_some() {
            return Err(unsupported("downwardAPI"));
        } else {
            return Err(unsupported("this kind of"));
        };
        out.dirs.insert(name.clone(), local);
    }
    Ok(out)
}

/// One container's mounts: container path → local path.
#[derive(Debug, Default, Clone)]
pub struct Mounts(Vec<(String, PathBuf)>);

impl Mounts {
    /// The mounts of `container` over the pod's prepared volumes.
    pub fn of(container: &Container, volumes: &PodVolumes) -> Result<Self, VolumeError> {
        let mut out = Vec::new();
        for m in container.volume_mounts.iter().flatten() {
            let dir = volumes
                .dirs
                .get(&m.name)
                .ok_or_else(|| VolumeError::UnknownVolume {
                    mount: m.mount_path.clone(),
                    volume: m.name.clone(),
                })?;
            let local = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                None => dir.clone(),
                Some(sub) => {
                    let sub_path = Path::new(sub);
                    if !sub_path
                        .components()
                        .all(|c| matches!(c, Component::Normal(_)))
                    {
                        return Err(VolumeError::BadSubPath {
                            mount: m.mount_path.clone(),
                            sub_path: sub.to_owned(),
                        });
                    }
                    dir.join(sub_path)
                }
            };
            out.push((m.mount_path.trim_end_matches('/').to_owned(), local));
        }
        Ok(Self(out))
    }

    /// Where container path `path` is locally, if it lies on a mount (longest mount wins).
    pub fn translate(&self, path: &str) -> Option<PathBuf> {
        let path = path.trim_end_matches('/');
        self.0
            .iter()
            .filter(|(mount, _)| path == mount || path.starts_with(&format!("{mount}/")))
            .max_by_key(|(mount, _)| mount.len())
            .map(|(mount, local)| {
                let rest = path[mount.len()..].trim_start_matches('/');
                if rest.is_empty() {
                    local.clone()
                } else {
                    local.join(rest)
                }
            })
    }

    /// Local path of the mount at exactly `mount_path`.
    pub fn at(&self, mount_path: &str) -> Option<&Path> {
        self.0
            .iter()
            .find(|(m, _)| m == mount_path)
            .map(|(_, local)| local.as_path())
    }
}

/// The `--mount-env` variables for a container: each names the local path of
/// the pod's own absolute value of that variable if set, else of the rule's
/// default container path; skipped when that path is on no mount.
pub fn mount_env(
    rules: &[MountEnv],
    pod_env: &[(String, String)],
    mounts: &Mounts,
) -> Vec<(String, String)> {
    rules
        .iter()
        .filter_map(|rule| {
            let container_path = super::env::get(pod_env, &rule.name)
                .filter(|v| v.starts_with('/'))
                .unwrap_or(&rule.container_path);
            let local = mounts.translate(container_path)?;
            Some((rule.name.clone(), local.to_string_lossy().into_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shim::config::default_mount_env;
    use baton_api::pairpod::{Slot, DEFAULT_RUN_DIR, ENV_CGROUP, ENV_RUN_DIR};
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "baton-w1", "namespace": "ns", "uid": "0123456789abcdef"},
            "spec": {"nodeName": "w1", "containers": [{"name": Slot::A.container(), "volumeMounts": [
                {"name": "bpffs", "mountPath": "/sys/fs/bpf"},
                {"name": "cgroup", "mountPath": "/sys/fs/cgroup", "readOnly": true},
                {"name": "run", "mountPath": DEFAULT_RUN_DIR},
                {"name": "other", "mountPath": "/var/lib/x", "subPath": "sub"}
            ]}], "volumes": [
                {"name": "bpffs", "hostPath": {"path": "/sys/fs/bpf", "type": "DirectoryOrCreate"}},
                {"name": "cgroup", "hostPath": {"path": "/sys/fs/cgroup", "type": "Directory"}},
                {"name": "run", "emptyDir": {"medium": "Memory"}},
                {"name": "other", "hostPath": {"path": "/opt/data/"}}
            ]}
        }))
        .expect("pod parses")
    }

    #[test]
    fn volumes_map_under_the_root_and_env_carries_them() {
        let root = tempfile::tempdir().expect("tempdir");
        let cfg = ShimConfig::new(root.path(), vec![], Path::new("/shim"));
        let pod = pod();
        // Type Directory must exist, as on a real host.
        let err = prepare(&cfg, "w1", &pod).expect_err("cgroup dir missing");
        assert!(matches!(err, VolumeError::Missing { .. }), "{err}");
        fs::create_dir_all(root.path().join("w1/cgroup")).expect("mkdir");
        let vols = prepare(&cfg, "w1", &pod).expect("volumes");
        let r = root.path();
        assert_eq!(vols.dirs["bpffs"], r.join("w1/bpffs"));
        assert!(r.join("w1/bpffs").is_dir(), "DirectoryOrCreate creates");
        assert_eq!(vols.dirs["run"], r.join("w1/baton-w1-01234567/run"));
        assert_eq!(vols.dirs["other"], r.join("w1/host/opt/data"));

        let c = &pod.spec.as_ref().expect("spec").containers[0];
        let mounts = Mounts::of(c, &vols).expect("mounts");
        assert_eq!(
            mounts.translate("/var/lib/x/y"),
            Some(r.join("w1/host/opt/data/sub/y"))
        );
        assert_eq!(mounts.translate(&format!("{DEFAULT_RUN_DIR}x")), None);
        let pod_env = vec![(ENV_RUN_DIR.to_owned(), format!("{DEFAULT_RUN_DIR}/slot"))];
        let env = mount_env(&default_mount_env(), &pod_env, &mounts);
        let get = |n| crate::shim::env::get(&env, n).map(PathBuf::from);
        assert_eq!(get("BATON_BPFFS"), Some(r.join("w1/bpffs/baton")));
        assert_eq!(get(ENV_CGROUP), Some(r.join("w1/cgroup")));
        assert_eq!(
            get(ENV_RUN_DIR),
            Some(r.join("w1/baton-w1-01234567/run/slot")),
            "the pod's own value is translated"
        );
    }

    #[test]
    fn longest_host_path_rule_wins() {
        let rules: Vec<HostPathRule> = ["/sys=/a/{node}", "/sys/fs/bpf=/b/{node}"]
            .iter()
            .map(|r| r.parse().expect("rule"))
            .collect();
        let root = Path::new("/r");
        assert_eq!(
            host_path_local(&rules, root, "n", "/sys/fs/bpf/x"),
            Path::new("/b/n/x")
        );
        assert_eq!(
            host_path_local(&rules, root, "n", "/sys/kernel"),
            Path::new("/a/n/kernel")
        );
        assert_eq!(
            host_path_local(&rules, root, "n", "/sysfoo"),
            Path::new("/r/n/host/sysfoo")
        );
    }

    #[test]
    fn a_configured_rule_overrides_the_default_for_the_same_path() {
        let mut cfg = ShimConfig::new(Path::new("/r"), vec![], Path::new("/shim"));
        cfg.host_paths
            .push("/sys/fs/cgroup=/cg/{node}".parse().expect("rule"));
        let rules = cfg.host_path_rules();
        assert_eq!(
            host_path_local(&rules, &cfg.root, "n", "/sys/fs/cgroup"),
            Path::new("/cg/n")
        );
        assert_eq!(
            host_path_local(&rules, &cfg.root, "n", "/sys/fs/bpf"),
            Path::new("/r/n/bpffs"),
            "the other default still applies"
        );
    }
}
