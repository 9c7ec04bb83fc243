//! What one container start runs: the image's mapped entrypoint followed by
//! the container's args, and the environment, built in precedence order.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};

use super::config::{fill, Entrypoint, NodeConfig, ShimConfig};
use super::env::{container_env, expand, get, set};
use super::volumes::{self, Mounts, PodVolumes};

/// A container that cannot start: its `waiting` reason and message.
#[derive(Debug, PartialEq, Eq)]
pub struct StartError {
    /// `ErrImagePull`, `CreateContainerConfigError` or `RunContainerError`.
    pub reason: &'static str,
    /// Details.
    pub message: String,
}

fn start_error(reason: &'static str, message: impl ToString) -> StartError {
    StartError {
        reason,
        message: message.to_string(),
    }
}

/// The process for one container start.
#[derive(Debug)]
pub struct Planned {
    /// Executable.
    pub program: PathBuf,
    /// Arguments: the mapping's, then the container's (with `$(VAR)` expanded).
    pub args: Vec<String>,
    /// The complete environment.
    pub env: Vec<(String, String)>,
    /// Log file of the container.
    pub log: PathBuf,
}

/// Everything a start depends on.
pub struct StartInput<'a> {
    /// Shim configuration.
    pub cfg: &'a ShimConfig,
    /// The node.
    pub node: &'a NodeConfig,
    /// The pod as it is now (the downward API reads it).
    pub pod: &'a Pod,
    /// The container.
    pub container: &'a Container,
    /// The pod's prepared volumes.
    pub volumes: &'a PodVolumes,
    /// The pod's kubeconfig, when it mounts a service-account token.
    pub kubeconfig: Option<&'a Path>,
    /// Which run this is (0 = first; the restart count it will have).
    pub run: i32,
}

/// Plans a start. Env precedence, lowest first: `pass_env` from the shim
/// (`inherited`), `HOSTNAME`, the container's env, the mount variables,
/// `KUBECONFIG`, `--env` templates, `BATON_SHIM_*`.
pub fn plan(
    input: &StartInput<'_>,
    inherited: impl Fn(&str) -> Option<String>,
) -> Result<Planned, StartError> {
    let StartInput {
        cfg,
        node,
        pod,
        container,
        ..
    } = input;
    let image = container.image.as_deref().unwrap_or_default();
    let entrypoint = cfg.entrypoint(image).ok_or_else(|| {
        start_error(
            "ErrImagePull",
            format!("image {image:?} is not mapped by the node shim (--image {image}=COMMAND)"),
        )
    })?;
    if container.command.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err(start_error(
            "CreateContainerConfigError",
            "container command is not supported by the node shim: the image mapping is the entrypoint",
        ));
    }
    let host_ip = node.ip.to_string();
    let pod_env = container_env(pod, container, &host_ip)
        .map_err(|e| start_error("CreateContainerConfigError", e))?;
    let mounts = Mounts::of(container, input.volumes)
        .map_err(|e| start_error("CreateContainerConfigError", e))?;
    let (program, mut args) = match entrypoint {
        Entrypoint::Idle => (cfg.shim_exe.clone(), vec!["idle".to_owned()]),
        Entrypoint::Command { program, args } => (program.clone(), args.clone()),
    };
    let lookup = |name: &str| get(&pod_env, name).map(str::to_owned);
    args.extend(container.args.iter().flatten().map(|a| expand(a, lookup)));

    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let mut env: Vec<(String, String)> = cfg
        .pass_env
        .iter()
        .filter_map(|k| Some((k.clone(), inherited(k)?)))
        .collect();
    set(&mut env, "HOSTNAME", name.to_owned());
    for (k, v) in &pod_env {
        set(&mut env, k, v.clone());
    }
    for (k, v) in volumes::mount_env(&cfg.mount_env, &pod_env, &mounts) {
        set(&mut env, &k, v);
    }
    if let Some(kubeconfig) = input.kubeconfig {
        set(
            &mut env,
            "KUBECONFIG",
            kubeconfig.to_string_lossy().into_owned(),
        );
    }
    let root = cfg.root.to_string_lossy();
    let values = [
        ("root", &*root),
        ("node", node.name.as_str()),
        ("host_ip", host_ip.as_str()),
        ("namespace", namespace),
        ("pod", name),
        ("container", container.name.as_str()),
    ];
    for t in &cfg.env {
        set(&mut env, &t.name, fill(&t.template, &values));
    }
    for (k, v) in [
        ("BATON_SHIM_NODE", node.name.clone()),
        ("BATON_SHIM_NAMESPACE", namespace.to_owned()),
        ("BATON_SHIM_POD", name.to_owned()),
        ("BATON_SHIM_CONTAINER", container.name.clone()),
        ("BATON_SHIM_RESTART", input.run.to_string()),
    ] {
        set(&mut env, k, v);
    }
    let log = cfg
        .log_dir(&node.name)
        .join(format!("{namespace}_{name}_{}.log", container.name));
    Ok(Planned {
        program,
        args,
        env,
        log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_api::pairpod::{DEFAULT_RUN_DIR, ENV_RUN_DIR};
    use serde_json::json;

    fn pod(container: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "abcdef0123"},
            "spec": {"nodeName": "w1", "containers": [container],
                     "volumes": [{"name": "run", "emptyDir": {}}]}
        }))
        .expect("pod")
    }

    fn cfg(root: &Path) -> ShimConfig {
        let mut cfg = ShimConfig::new(root, vec![], Path::new("/bin/shim"));
        cfg.images = vec![
            "agent:v1=/bin/agent run".parse().expect("mapping"),
            "empty:1=idle".parse().expect("mapping"),
        ];
        cfg.env = vec!["BATON_METRICS_ADDR={host_ip}:9095".parse().expect("env")];
        cfg
    }

    fn planned(cfg: &ShimConfig, pod: &Pod) -> Result<Planned, StartError> {
        let volumes = volumes::prepare(cfg, "w1", pod).expect("volumes");
        let node: NodeConfig = "w1=127.0.1.1".parse().expect("node");
        let input = StartInput {
            cfg,
            node: &node,
            pod,
            container: &pod.spec.as_ref().expect("spec").containers[0],
            volumes: &volumes,
            kubeconfig: Some(Path::new("/k")),
            run: 2,
        };
        plan(&input, |k| (k == "PATH").then(|| "/usr/bin".to_owned()))
    }

    #[test]
    fn the_mapping_is_the_entrypoint_and_env_layers_in_order() {
        let root = tempfile::tempdir().expect("tempdir");
        let cfg = cfg(root.path());
        let pod = pod(
            json!({"name": "c", "image": "agent:v1", "args": ["--x=$(A)"],
            "env": [{"name": "A", "value": "1"}, {"name": ENV_RUN_DIR, "value": DEFAULT_RUN_DIR},
                    {"name": "BATON_METRICS_ADDR", "value": "0.0.0.0:1"},
                    {"name": "KUBECONFIG", "value": "/ignored"}],
            "volumeMounts": [{"name": "run", "mountPath": DEFAULT_RUN_DIR}]}),
        );
        let p = planned(&cfg, &pod).expect("plan");
        assert_eq!(p.program, Path::new("/bin/agent"));
        assert_eq!(p.args, ["run", "--x=1"]);
        let env = |k| get(&p.env, k).map(str::to_owned);
        assert_eq!(env("PATH").as_deref(), Some("/usr/bin"));
        assert_eq!(env("HOSTNAME").as_deref(), Some("p"));
        let run_dir = root.path().join("w1/p-abcdef01/run");
        assert_eq!(env(ENV_RUN_DIR), Some(run_dir.display().to_string()));
        assert_eq!(env("KUBECONFIG").as_deref(), Some("/k"));
        assert_eq!(env("BATON_METRICS_ADDR").as_deref(), Some("127.0.1.1:9095"));
        assert_eq!(env("BATON_SHIM_RESTART").as_deref(), Some("2"));
        assert_eq!(p.log, root.path().join("w1/logs/ns_p_c.log"));
    }

    #[test]
    fn idle_unmapped_and_command_containers() {
        let root = tempfile::tempdir().expect("tempdir");
        let cfg = cfg(root.path());
        let p = planned(
            &cfg,
            &pod(json!({"name": "c", "image": "empty:1", "args": ["--log=info"]})),
        )
        .expect("plan");
        assert_eq!(
            (p.program.as_path(), p.args.as_slice()),
            (
                Path::new("/bin/shim"),
                &["idle".to_owned(), "--log=info".to_owned()][..]
            )
        );
        let err =
            planned(&cfg, &pod(json!({"name": "c", "image": "nope:1"}))).expect_err("unmapped");
        assert_eq!(err.reason, "ErrImagePull");
        let err = planned(
            &cfg,
            &pod(json!({"name": "c", "image": "agent:v1", "command": ["sh"]})),
        )
        .expect_err("command");
        assert_eq!(err.reason, "CreateContainerConfigError");
    }
}
