//! A real etcd + kube-apiserver on loopback, per test, torn down on drop.
//!
//! Shared by the agent's and the operator's Kubernetes tests (feature
//! `apiserver`). The binaries come from `e2e/cluster/k8s-bins.sh`. Missing
//! binaries fail the test (with the command to run) unless
//! `BATON_SKIP_APISERVER=1`. A test harness: it panics with the logs instead
//! of returning errors.

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};
use tempfile::TempDir;

use crate::kit::process::{Process, Spawn};

/// Kubernetes version `k8s-bins.sh` builds by default.
const DEFAULT_K8S_VERSION: &str = "v1.34.4";
/// Bearer token of the test's cluster-admin user (system:masters).
const ADMIN_TOKEN: &str = "baton-test-admin-token";

/// A running API server and its etcd (SIGKILLed on drop, the API server first).
pub struct ApiServer {
    apiserver: Process,
    etcd: Process,
    dir: TempDir,
    kubeconfig: PathBuf,
}

/// Where the binaries are expected.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BATON_K8S_BIN_DIR") {
        return dir.into();
    }
    let cache = std::env::var_os("BATON_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/baton")
        });
    let version =
        std::env::var("BATON_K8S_VERSION").unwrap_or_else(|_| DEFAULT_K8S_VERSION.to_owned());
    cache.join("k8s").join(version)
}

/// A free loopback port (bound then released; the race is acceptable in tests).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port")
}

/// Spawns `bin` with output to `log`, killed if the test thread dies first.
fn spawn(name: &str, bin: &Path, args: &[String], log: &Path) -> Process {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    Spawn::new(name, cmd, log)
        .start()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// What a caller may change about the API server (the defaults are the tests').
#[derive(Clone, Debug)]
pub struct ApiServerOptions {
    /// `--service-cluster-ip-range`. The tests' default (a /24 and a /112,
    /// dual-stack) is too small for the bench's 10 000 Services.
    pub service_cidr: String,
    /// More arguments, appended last (so they win over the defaults).
    pub extra_args: Vec<String>,
}

impl Default for ApiServerOptions {
    fn default() -> Self {
        Self {
            service_cidr: "10.96.0.0/24,fd00:10:96::/112".into(),
            extra_args: Vec::new(),
        }
    }
}

impl ApiServer {
    /// Starts etcd and kube-apiserver; `None` when skipped by `BATON_SKIP_APISERVER=1`.
    pub async fn start() -> Option<ApiServer> {
        Self::start_with(&ApiServerOptions::default()).await
    }

    /// [`ApiServer::start`] with `options`.
    pub async fn start_with(options: &ApiServerOptions) -> Option<ApiServer> {
        if std::env::var("BATON_SKIP_APISERVER").as_deref() == Ok("1") {
            eprintln!(
                "SKIPPED: real API server test (BATON_SKIP_APISERVER=1); \
                 nothing about the API server was checked"
            );
            return None;
        }
        let bins = bin_dir();
        let (etcd_bin, apiserver_bin) = (bins.join("etcd"), bins.join("kube-apiserver"));
        assert!(
            etcd_bin.is_file() && apiserver_bin.is_file(),
            "kube-apiserver/etcd not found in {}.\nBuild them once (about 7 min on 2 cores) with\n  \
             e2e/cluster/k8s-bins.sh\nor point BATON_K8S_BIN_DIR at a directory holding both, \
             or set BATON_SKIP_APISERVER=1 to skip these tests explicitly.",
            bins.display()
        );
        let keep = std::env::var_os("BATON_KEEP_APISERVER_DIR").is_some();
        let dir = tempfile::Builder::new()
            .prefix("baton-apiserver-")
            .disable_cleanup(keep)
            .tempdir()
            .expect("creating temp dir");
        if keep {
            eprintln!(
                "keeping {} (BATON_KEEP_APISERVER_DIR)",
                dir.path().display()
            );
        }
        let d = dir.path();
        let (client_port, peer_port, secure_port) = (free_port(), free_port(), free_port());

        let etcd = spawn(
            "etcd",
            &etcd_bin,
            &[
                format!("--data-dir={}", d.join("etcd").display()),
                "--name=default".into(),
                format!("--listen-client-urls=http://127.0.0.1:{client_port}"),
                format!("--advertise-client-urls=http://127.0.0.1:{client_port}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"),
                "--log-level=warn".into(),
                // Throwaway data: skip fsync so tests stay fast on small disks.
                "--unsafe-no-fsync".into(),
            ],
            &d.join("etcd.log"),
        );

        // Service-account tokens need a signing key pair (ECDSA P-256).
        let sa_key = rcgen::KeyPair::generate().expect("generating service-account key");
        fs::write(d.join("sa.key"), sa_key.serialize_pem()).expect("writing sa.key");
        fs::write(d.join("sa.pub"), sa_key.public_key_pem()).expect("writing sa.pub");
        fs::write(
            d.join("tokens.csv"),
            format!("{ADMIN_TOKEN},baton-admin,baton-admin-uid,\"system:masters\"\n"),
        )
        .expect("writing tokens.csv");
        let certs = d.join("certs");
        let mut args = vec![
            format!("--etcd-servers=http://127.0.0.1:{client_port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={secure_port}"),
            // Self-signed serving cert (with its CA) written here.
            format!("--cert-dir={}", certs.display()),
            format!("--token-auth-file={}", d.join("tokens.csv").display()),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", d.join("sa.pub").display()),
            format!(
                "--service-account-signing-key-file={}",
                d.join("sa.key").display()
            ),
            // Dual-stack by default, so Services may ask for both families.
            format!("--service-cluster-ip-range={}", options.service_cidr),
            "--allow-privileged=true".into(),
            // Stricter than the default: owner references with
            // blockOwnerDeletion need RBAC on the owner's finalizers.
            "--enable-admission-plugins=OwnerReferencesPermissionEnforcement".into(),
            "--enable-priority-and-fairness=false".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ];
        args.extend(options.extra_args.iter().cloned());
        let apiserver = spawn(
            "kube-apiserver",
            &apiserver_bin,
            &args,
            &d.join("kube-apiserver.log"),
        );
        let kubeconfig = d.join("kubeconfig");
        let server = ApiServer {
            apiserver,
            etcd,
            dir,
            kubeconfig,
        };
        server.wait_ready(&certs, secure_port).await;
        Some(server)
    }

    /// Polls `/readyz` until the server is ready; panics with the logs if it dies or hangs.
    async fn wait_ready(&self, certs: &Path, port: u16) {
        let timeout = Duration::from_secs(
            std::env::var("BATON_APISERVER_START_TIMEOUT")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(120),
        );
        let start = Instant::now();
        let cert = certs.join("apiserver.crt");
        let mut last_error = String::from("serving certificate not written yet");
        while start.elapsed() < timeout {
            let exited = [&self.etcd, &self.apiserver]
                .into_iter()
                .find_map(|p| Some((p.name(), p.exited()?)));
            if let Some((name, status)) = exited {
                panic!("{name} exited early ({status})\n{}", self.logs());
            }
            if cert.is_file() {
                self.write_kubeconfig(&cert, port);
                match self.readyz().await {
                    Ok(()) => {
                        eprintln!(
                            "kube-apiserver ready on 127.0.0.1:{port} after {:.1}s (kubeconfig {})",
                            start.elapsed().as_secs_f64(),
                            self.kubeconfig.display()
                        );
                        return;
                    }
                    Err(e) => last_error = e,
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!(
            "kube-apiserver not ready within {timeout:?}: {last_error}\n{}",
            self.logs()
        );
    }

    async fn readyz(&self) -> Result<(), String> {
        let client = self.client().await;
        let req = http::Request::get("/readyz")
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        match client.request_text(req).await {
            Ok(body) if body.trim() == "ok" => Ok(()),
            Ok(body) => Err(body),
            Err(e) => Err(e.to_string()),
        }
    }

    fn write_kubeconfig(&self, ca: &Path, port: u16) {
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    \
             server: https://127.0.0.1:{port}\n    certificate-authority: {}\n\
             users:\n- name: admin\n  user:\n    token: {ADMIN_TOKEN}\n\
             contexts:\n- name: test\n  context: {{cluster: test, user: admin, namespace: default}}\n\
             current-context: test\n",
            ca.display()
        );
        fs::write(&self.kubeconfig, yaml).expect("writing kubeconfig");
    }

    /// A cluster-admin client.
    pub async fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config().await).expect("building client")
    }

    /// A client acting as `user` (impersonated by the admin), e.g. a service
    /// account, to check that its RBAC really suffices.
    pub async fn client_as(&self, user: &str) -> kube::Client {
        kube::Client::try_from(self.config_as(user).await).expect("building impersonating client")
    }

    /// The configuration of [`ApiServer::client_as`], for code that builds
    /// its own client (e.g. on its own runtime).
    pub async fn config_as(&self, user: &str) -> kube::Config {
        let mut config = self.config().await;
        config.auth_info.impersonate = Some(user.to_owned());
        config
    }

    /// The cluster-admin configuration.
    pub async fn config(&self) -> kube::Config {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("reading kubeconfig");
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("loading kubeconfig")
    }

    /// A kubeconfig that impersonates `user` (for processes such as the
    /// operator binary), next to the admin one.
    pub fn kubeconfig_as(&self, user: &str) -> PathBuf {
        let admin = fs::read_to_string(&self.kubeconfig).expect("reading kubeconfig");
        let token_line = format!("    token: {ADMIN_TOKEN}\n");
        assert!(admin.contains(&token_line), "kubeconfig layout changed");
        let text = admin.replace(&token_line, &format!("{token_line}    as: \"{user}\"\n"));
        let path = self
            .dir
            .path()
            .join(format!("kubeconfig-{}", user.replace(':', "_")));
        fs::write(&path, text).expect("writing impersonating kubeconfig");
        path
    }

    /// The directory holding this server's logs, kubeconfigs and data.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of a kubeconfig for this server (handy with kubectl when debugging).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The last lines of both logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["etcd.log", "kube-apiserver.log"] {
            let mut text = String::new();
            if let Ok(mut f) = fs::File::open(self.dir.path().join(name)) {
                let _ = f.read_to_string(&mut text);
            }
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("--- {name} (last {} lines) ---\n", tail.len()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// Installs the agent's RBAC exactly as `charts/baton/templates/agent-rbac.yaml`
/// has it, into namespace `ns` (which must exist). The template uses only the
/// `baton.agentName` helper and the release namespace; they are substituted as
/// the chart's defaults render them, so a change to the chart shows up in the
/// tests that run as the agent. Panics (test harness) on anything unexpected.
pub async fn install_agent_rbac(client: &kube::Client, ns: &str) {
    use kube::api::{Api, ApiResource, DynamicObject, PostParams};

    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/baton/templates/agent-rbac.yaml");
    let template = fs::read_to_string(&path).expect("reading the chart's agent RBAC");
    let text: String = template
        .lines()
        .filter(|l| !l.trim_start().starts_with("{{-"))
        .map(|l| {
            l.replace("{{ include \"baton.agentName\" . }}", "baton-agent")
                .replace("{{ .Release.Namespace }}", ns)
                + "\n"
        })
        .collect();
    assert!(
        !text.contains("{{"),
        "agent-rbac.yaml uses template syntax this test does not know:\n{text}"
    );
    let pp = PostParams::default();
    for doc in text.split("\n---\n") {
        let obj: DynamicObject = serde_yaml::from_str(doc).expect("agent RBAC document parses");
        let types = obj
            .types
            .clone()
            .expect("agent RBAC document has apiVersion and kind");
        let (plural, namespaced) = match types.kind.as_str() {
            "ServiceAccount" => ("serviceaccounts", true),
            "Role" => ("roles", true),
            "RoleBinding" => ("rolebindings", true),
            "ClusterRole" => ("clusterroles", false),
            "ClusterRoleBinding" => ("clusterrolebindings", false),
            other => panic!("unexpected kind {other:?} in agent-rbac.yaml"),
        };
        let (group, version) = types
            .api_version
            .split_once('/')
            .unwrap_or(("", types.api_version.as_str()));
        let resource = ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: types.api_version.clone(),
            kind: types.kind.clone(),
            plural: plural.into(),
        };
        let api: Api<DynamicObject> = if namespaced {
            Api::namespaced_with(client.clone(), ns, &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        };
        api.create(&pp, &obj)
            .await
            .unwrap_or_else(|e| panic!("creating the agent's {}: {e}", types.kind));
    }
}
