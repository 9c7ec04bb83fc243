//! Helpers of the tests that run the node shim against a real API server.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use baton_e2e::shim::standin::record_file;
use k8s_openapi::api::core::v1::{ContainerStatus, Namespace, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// Field manager of the tests' writes.
pub const MANAGER: &str = "baton-e2e-tests";

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

/// Polls `check` every 100 ms until it returns `Some`; panics after `timeout`
/// with `what` and `logs()`.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    logs: impl Fn() -> String,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}\n{}", logs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates namespace `ns` and its `default` service account (no
/// kube-controller-manager here to create it, and pods need one).
pub async fn create_namespace(client: &kube::Client, ns: &str) {
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": ns}})).expect("namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {ns}: {e}"));
    create_service_account(client, ns, "default").await;
}

/// Creates service account `name` in `ns`.
pub async fn create_service_account(client: &kube::Client, ns: &str, name: &str) {
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("service account");
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap_or_else(|e| panic!("creating service account {ns}/{name}: {e}"));
}

/// Applies `crds/kmeshupgrade.yaml` and waits until it is Established.
pub async fn install_crd(client: &kube::Client) {
    let text = std::fs::read_to_string(repo_root().join("crds/kmeshupgrade.yaml"))
        .expect("reading crds/kmeshupgrade.yaml");
    let crd: CustomResourceDefinition = serde_yaml::from_str(&text).expect("parsing the CRD");
    let name = crd.metadata.name.clone().expect("CRD name");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
    eventually(
        "the CRD to be Established",
        Duration::from_secs(30),
        String::new,
        async || {
            let crd = api.get(&name).await.ok()?;
            let conditions = crd.status?.conditions?;
            conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        },
    )
    .await;
}

/// The status of container `name`, if reported.
pub fn container_status(pod: &Pod, name: &str) -> Option<ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == name)
        .cloned()
}

/// Status of pod condition `type_` ("True"/"False"), if present.
pub fn condition(pod: &Pod, type_: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

/// Whether the container runs (state running).
pub fn is_running(status: &ContainerStatus) -> bool {
    status.state.as_ref().is_some_and(|s| s.running.is_some())
}

/// Pid of a running container, from the shim's containerID (`.../<node>/<pid>`).
pub fn container_pid(status: &ContainerStatus) -> Option<i32> {
    status
        .container_id
        .as_deref()?
        .rsplit('/')
        .next()?
        .parse()
        .ok()
}

/// Whether process `pid` exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Field 3, after the parenthesised command name, is the state.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z")
}

/// The lines a `baton-node-shim record` container wrote, oldest first.
pub fn records(dir: &Path, ns: &str, pod: &str, container: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(record_file(dir, ns, pod, container))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("record line is JSON"))
        .collect()
}

/// The `start` records only.
pub fn starts(dir: &Path, ns: &str, pod: &str, container: &str) -> Vec<serde_json::Value> {
    records(dir, ns, pod, container)
        .into_iter()
        .filter(|r| r["event"] == "start")
        .collect()
}

/// A container of the agent pair pod, as the operator builds it (env through
/// the downward API, the bpffs and run-dir mounts).
pub fn slot_container(slot: &str, image: &str) -> serde_json::Value {
    let other = if slot == "a" { "b" } else { "a" };
    let field = |name: &str, path: String| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    json!({
        "name": format!("slot-{slot}"),
        "image": image,
        "env": [
            {"name": "BATON_SLOT", "value": slot},
            field("BATON_SLOT_VERSION", format!("metadata.annotations['baton.dev/slot-{slot}-version']")),
            field("BATON_SLOT_VERSION_ALT", format!("metadata.annotations['baton.dev/slot-{other}-version']")),
            field("BATON_ACTIVE_SLOT", "metadata.annotations['baton.dev/active-slot']".into()),
            {"name": "BATON_RUN_DIR", "value": "/run/baton"},
            field("NODE_NAME", "spec.nodeName".into()),
            field("POD_NAME", "metadata.name".into()),
            field("POD_NAMESPACE", "metadata.namespace".into()),
            {"name": "GREETING", "value": "hello-$(NODE_NAME)"},
        ],
        "volumeMounts": [
            {"name": "bpffs", "mountPath": "/sys/fs/bpf"},
            {"name": "run", "mountPath": "/run/baton"},
        ],
    })
}

/// `baton-operator`: `$BATON_OPERATOR_BIN`, else next to the test binary, as
/// `cargo build --workspace` leaves it.
pub fn operator_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BATON_OPERATOR_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("baton-operator"))
        .find(|p| p.is_file())
        .expect("baton-operator not built: run `cargo build --workspace --bins` first (or set BATON_OPERATOR_BIN)")
}

/// A running `baton-operator run`, killed on drop.
pub struct OperatorProcess {
    child: std::process::Child,
    log: PathBuf,
}

impl OperatorProcess {
    /// Starts the operator with the chart's arguments (metrics on a free
    /// loopback port), as `identity`, logging to `log`.
    pub fn start(kubeconfig: &Path, namespace: &str, identity: &str, log: &Path) -> Self {
        Self::start_with(kubeconfig, namespace, identity, log, &[])
    }

    /// [`OperatorProcess::start`] with `extra` arguments (e.g. a shorter
    /// `--lease-seconds`); the log is appended to, so a restarted operator
    /// keeps its predecessor's lines.
    pub fn start_with(
        kubeconfig: &Path,
        namespace: &str,
        identity: &str,
        log: &Path,
        extra: &[&str],
    ) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("operator log");
        let mut cmd = std::process::Command::new(operator_bin());
        // SAFETY: prctl is async-signal-safe; a test process killed without
        // unwinding takes the operator along.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(
                &mut cmd,
                baton_e2e::harness::set_parent_death_signal,
            );
        }
        let child = cmd
            .args([
                "run".to_owned(),
                format!("--metrics-addr=127.0.0.1:{port}"),
                "--agent-service-account=baton-agent".to_owned(),
            ])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", identity)
            .env("POD_NAMESPACE", namespace)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .expect("starting baton-operator");
        Self {
            child,
            log: log.to_owned(),
        }
    }

    /// SIGKILL (no clean shutdown, as a crashed or evicted operator) and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The tail of the operator's log.
    pub fn logs(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- {} ---\n{}",
            self.log.display(),
            lines[lines.len().saturating_sub(60)..].join("\n")
        )
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
