//! One pod's worker: the kubelet's sync loop for a single pod. It sets up
//! volumes and credentials, starts, replaces and restarts container
//! processes, reports status, and on deletion stops everything and removes
//! the pod from the API.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use tokio::sync::{mpsc, watch};

use super::command::{self, StartError, StartInput};
use super::config::{NodeConfig, ShimConfig};
use super::container::{Next, Runtime};
use super::credentials::{fill_projected, write_kubeconfig};
use super::process::{Launch, Process};
use super::status::{patch_body, ConditionClock, Report};
use super::volumes::{self, PodVolumes};

/// How long to wait before retrying a failed setup step or API write.
const RETRY: Duration = Duration::from_secs(1);
/// Kubernetes' default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// What every worker of one node shares.
pub struct NodeCtx {
    /// API client.
    pub client: kube::Client,
    /// Shim configuration.
    pub cfg: Arc<ShimConfig>,
    /// This node.
    pub node: NodeConfig,
}

impl NodeCtx {
    /// The node's address (hostIP and podIP of its pods).
    pub fn host_ip(&self) -> String {
        self.node.ip.to_string()
    }
}

/// The latest pod from the node's watch; `None` once it left the API.
pub type PodFeed = watch::Receiver<Option<Arc<Pod>>>;

enum Wake {
    Pod(bool),
    Exit(String, u64),
    Timer,
    Shutdown,
}

/// The sync loop of one pod.
pub struct Worker {
    ctx: Arc<NodeCtx>,
    feed: PodFeed,
    shutdown: watch::Receiver<bool>,
    exits_tx: mpsc::UnboundedSender<(String, u64)>,
    exits_rx: mpsc::UnboundedReceiver<(String, u64)>,
    containers: Vec<Runtime>,
    volumes: Option<PodVolumes>,
    credentials_ready: bool,
    kubeconfig: Option<PathBuf>,
    setup_error: Option<String>,
    setup_retry: Option<Instant>,
    refresh_at: Option<Instant>,
    clock: ConditionClock,
    start_time: Timestamp,
    reported: Option<serde_json::Value>,
    report_retry: Option<Instant>,
    grace: Duration,
    pod_dir: PathBuf,
    ident: String,
}

impl Worker {
    /// A worker for `pod` fed by `feed`.
    pub fn new(
        ctx: Arc<NodeCtx>,
        pod: &Pod,
        feed: PodFeed,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        let pod_dir = volumes::pod_dir(&ctx.cfg, &ctx.node.name, pod);
        let ident = format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default()
        );
        Self {
            ctx,
            feed,
            shutdown,
            exits_tx,
            exits_rx,
            containers: Vec::new(),
            volumes: None,
            credentials_ready: false,
            kubeconfig: None,
            setup_error: None,
            setup_retry: None,
            refresh_at: None,
            clock: ConditionClock::default(),
            start_time: Timestamp::now(),
            reported: None,
            report_retry: None,
            grace: DEFAULT_GRACE,
            pod_dir,
            ident,
        }
    }

    /// Runs until the pod is gone (finalized or deleted) or the shim stops.
    pub async fn run(mut self) {
        loop {
            let pod = self.feed.borrow_and_update().clone();
            match pod {
                None => {
                    tracing::info!(pod = %self.ident, "pod left the API; stopping its containers");
                    self.stop_all(self.grace).await;
                    self.remove_pod_dir();
                    return;
                }
                Some(pod) if pod.metadata.deletion_timestamp.is_some() => {
                    if self.terminate(&pod).await {
                        return;
                    }
                }
                Some(pod) => self.sync(&pod).await,
            }
            match self.wait().await {
                Wake::Pod(true) | Wake::Timer => {}
                Wake::Exit(name, generation) => self.on_exit(&name, generation),
                // The node's watch is gone or the shim stops: containers stop,
                // the API is left alone (a stopped kubelet writes nothing).
                Wake::Pod(false) | Wake::Shutdown => {
                    self.stop_all(self.grace).await;
                    return;
                }
            }
        }
    }

    async fn wait(&mut self) -> Wake {
        let wake = [self.setup_retry, self.refresh_at, self.report_retry]
            .into_iter()
            .chain(self.containers.iter().map(Runtime::wake_at))
            .flatten()
            .min();
        let timer = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = self.feed.changed() => Wake::Pod(changed.is_ok()),
            Some((name, generation)) = self.exits_rx.recv() => Wake::Exit(name, generation),
            () = timer => Wake::Timer,
            _ = self.shutdown.changed() => Wake::Shutdown,
        }
    }

    fn restart_policy(&self) -> String {
        let pod = self.feed.borrow();
        pod.as_ref()
            .and_then(|p| p.spec.as_ref()?.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn on_exit(&mut self, name: &str, generation: u64) {
        let policy = self.restart_policy();
        let backoff = self.ctx.cfg.backoff;
        let Some(rt) = self.containers.iter_mut().find(|c| c.name == name) else {
            return;
        };
        let exit = match rt.process().and_then(Process::exited) {
            Some(exit) if rt.generation == generation => exit,
            // An older run, already accounted for by whoever stopped it.
            _ => return,
        };
        let restart = match policy.as_str() {
            "Never" => false,
            "OnFailure" => exit.code != 0,
            _ => true,
        };
        tracing::info!(pod = %self.ident, container = name, code = exit.code, restart, "container exited");
        rt.exited(exit, restart, &backoff);
    }

    /// Volumes and credentials; false while the pod cannot start containers yet.
    async fn setup(&mut self, pod: &Pod) -> bool {
        let now = Instant::now();
        if self.setup_retry.is_some_and(|at| at > now) {
            return false;
        }
        self.setup_retry = None;
        if self.volumes.is_none() {
            let prepared = std::fs::create_dir_all(&self.pod_dir)
                .map_err(|e| format!("creating {}: {e}", self.pod_dir.display()))
                .and_then(|()| {
                    volumes::prepare(&self.ctx.cfg, &self.ctx.node.name, pod)
                        .map_err(|e| e.to_string())
                });
            match prepared {
                Ok(v) => self.volumes = Some(v),
                Err(e) => return self.setup_failed(e),
            }
        }
        let refresh_due = self.refresh_at.is_some_and(|at| at <= now);
        if !self.credentials_ready || refresh_due {
            match self.fill_credentials(pod).await {
                Ok(()) => self.credentials_ready = true,
                // A failed refresh keeps the old token; running containers keep running.
                Err(e) if self.credentials_ready => {
                    tracing::warn!(pod = %self.ident, error = %e, "refreshing credentials");
                    self.refresh_at = Some(now + RETRY);
                }
                Err(e) => return self.setup_failed(e),
            }
        }
        self.setup_error = None;
        true
    }

    fn setup_failed(&mut self, error: String) -> bool {
        if self.setup_error.as_ref() != Some(&error) {
            tracing::warn!(pod = %self.ident, %error, "pod setup failed; retrying");
        }
        self.setup_error = Some(error);
        self.setup_retry = Some(Instant::now() + RETRY);
        false
    }

    async fn fill_credentials(&mut self, pod: &Pod) -> Result<(), String> {
        let Some(vols) = &self.volumes else {
            return Ok(());
        };
        let mut refresh: Option<Duration> = None;
        let mut token_file = None;
        for (dir, source) in &vols.projected {
            let filled = fill_projected(
                &self.ctx.client,
                pod,
                dir,
                source,
                &self.ctx.host_ip(),
                self.ctx.cfg.pod_api.as_ref(),
            )
            .await
            .map_err(|e| e.to_string())?;
            token_file = token_file.or(filled.token_file);
            refresh = match (refresh, filled.refresh_after) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        self.refresh_at = refresh.map(|d| Instant::now() + d);
        if let (Some(token), Some(access)) = (token_file, &self.ctx.cfg.pod_api) {
            let path = self.pod_dir.join("kubeconfig");
            let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
            write_kubeconfig(&path, access, &token, namespace).map_err(|e| e.to_string())?;
            self.kubeconfig = Some(path);
        }
        Ok(())
    }

    async fn sync(&mut self, pod: &Pod) {
        let Some(spec) = pod.spec.as_ref() else {
            return;
        };
        self.grace = spec
            .termination_grace_period_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(DEFAULT_GRACE, Duration::from_secs);
        for c in &spec.containers {
            if !self.containers.iter().any(|r| r.name == c.name) {
                let image = c.image.as_deref().unwrap_or_default();
                self.containers.push(Runtime::new(&c.name, image));
            }
        }
        if !spec.init_containers.as_ref().is_none_or(Vec::is_empty) {
            self.setup_failed("init containers are not supported by the node shim".into());
        } else if self.setup(pod).await {
            for c in &spec.containers {
                self.sync_container(pod, c).await;
            }
        }
        if let Some(error) = self.setup_error.clone() {
            for rt in self.containers.iter_mut().filter(|r| !r.started_once()) {
                rt.state = super::container::State::Waiting {
                    reason: "ContainerCreating".into(),
                    message: error.clone(),
                    image: rt.image().to_owned(),
                    retry_at: None,
                };
            }
        }
        self.report(pod).await;
    }

    async fn sync_container(&mut self, pod: &Pod, spec: &Container) {
        let image = spec.image.as_deref().unwrap_or_default();
        let Some(i) = self.containers.iter().position(|r| r.name == spec.name) else {
            return;
        };
        let backoff = self.ctx.cfg.backoff;
        match self.containers[i].next(image, Instant::now(), &backoff) {
            Next::Keep => return,
            Next::BackOff(until) => {
                let pod_name = format!(
                    "{}_{}({})",
                    pod.metadata.name.as_deref().unwrap_or_default(),
                    pod.metadata.namespace.as_deref().unwrap_or_default(),
                    pod.metadata.uid.as_deref().unwrap_or_default()
                );
                let rt = &mut self.containers[i];
                if !matches!(&rt.state, super::container::State::Waiting { reason, image: w, .. }
                    if reason == "CrashLoopBackOff" && w == image)
                {
                    tracing::info!(pod = %self.ident, container = %spec.name, image,
                        message = %rt.backoff_message(image, &pod_name), "start held by back-off");
                }
                rt.hold(image, until, &pod_name);
                return;
            }
            Next::Start => {}
            Next::Replace => {
                let rt = &mut self.containers[i];
                let old = rt.image().to_owned();
                tracing::info!(pod = %self.ident, container = %spec.name, %old, new = image,
                    "image changed; stopping the container to start the new image");
                let exit = match rt.process() {
                    Some(p) => Some(p.stop(self.grace).await),
                    None => None,
                };
                if let Some(exit) = exit {
                    rt.stopped(exit);
                }
            }
        }
        match self.start(pod, spec, i) {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(pod = %self.ident, container = %spec.name, reason = e.reason,
                    message = %e.message, "container not started");
                let backoff = self.ctx.cfg.backoff;
                self.containers[i].failed_to_start(e.reason, e.message, image, &backoff);
            }
        }
    }

    /// Starts container `spec` (runtime `i`), reading `pod` as it is now.
    fn start(&mut self, pod: &Pod, spec: &Container, i: usize) -> Result<(), StartError> {
        let rt = &self.containers[i];
        let run = rt.restart_count + i32::from(rt.started_once());
        let empty = PodVolumes::default();
        let planned = command::plan(
            &StartInput {
                cfg: &self.ctx.cfg,
                node: &self.ctx.node,
                pod,
                container: spec,
                volumes: self.volumes.as_ref().unwrap_or(&empty),
                kubeconfig: self.kubeconfig.as_deref(),
                run,
            },
            |k| std::env::var(k).ok(),
        )?;
        let image = spec.image.as_deref().unwrap_or_default();
        let header = format!(
            "--- baton-node-shim: {} container {} run {run} image {image} at {}: {} {:?} ---",
            self.ident,
            spec.name,
            Timestamp::now(),
            planned.program.display(),
            planned.args,
        );
        let notify = self.exits_tx.clone();
        let generation = rt.generation + 1;
        let container = spec.name.clone();
        let process = Process::spawn(
            &Launch {
                program: &planned.program,
                args: &planned.args,
                env: &planned.env,
                cwd: &self.pod_dir,
                log: &planned.log,
                header,
            },
            move || {
                let _ = notify.send((container, generation));
            },
        )
        .map_err(|e| StartError {
            reason: "RunContainerError",
            message: e.to_string(),
        })?;
        tracing::info!(pod = %self.ident, container = %spec.name, image, pid = process.pid(), run, "container started");
        let image_id = format!("baton-node-shim://{}", planned.program.display());
        let backoff = self.ctx.cfg.backoff;
        self.containers[i].started(process, image, image_id, &self.ctx.node.name, &backoff);
        Ok(())
    }

    async fn report(&mut self, pod: &Pod) {
        let now = Instant::now();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let order = pod.spec.iter().flat_map(|s| s.containers.iter());
        let runtimes: Vec<&Runtime> = order
            .filter_map(|c| self.containers.iter().find(|r| r.name == c.name))
            .collect();
        let finished: Option<Vec<i32>> = runtimes.iter().map(|r| r.finished()).collect();
        let body = patch_body(
            Report {
                pod,
                containers: runtimes.iter().map(|r| r.status(name)).collect(),
                started_any: runtimes.iter().any(|r| r.started_once()),
                finished: finished.filter(|f| !f.is_empty()),
                host_ip: &self.ctx.host_ip(),
                start_time: self.start_time,
            },
            &mut self.clock,
        );
        let retry_due = self.report_retry.is_some_and(|at| at <= now);
        if self.reported.as_ref() == Some(&body) && !retry_due {
            return;
        }
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), namespace);
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(&body))
            .await
        {
            Ok(_) => {
                self.reported = Some(body);
                self.report_retry = None;
            }
            Err(e) => {
                tracing::warn!(pod = %self.ident, error = %e, "patching pod status failed; retrying");
                self.report_retry = Some(now + RETRY);
            }
        }
    }

    async fn stop_all(&mut self, grace: Duration) {
        let stops = self
            .containers
            .iter()
            .filter_map(|rt| rt.process())
            .map(|p| p.stop(grace));
        let exits = futures::future::join_all(stops).await;
        let mut exits = exits.into_iter();
        for rt in self.containers.iter_mut().filter(|r| r.process().is_some()) {
            if let Some(exit) = exits.next() {
                rt.stopped(exit);
            }
        }
    }

    /// Deletion: stop containers within the deletion grace, report, then
    /// remove the pod for good; false while that last step has to be retried.
    async fn terminate(&mut self, pod: &Pod) -> bool {
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.grace, Duration::from_secs);
        if self.containers.iter().any(|r| r.process().is_some()) {
            tracing::info!(pod = %self.ident, ?grace, "pod deleted; stopping its containers");
            self.stop_all(grace).await;
            self.report(pod).await;
        }
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => {
                tracing::warn!(pod = %self.ident, error = %e, "finalizing the deletion failed; retrying");
                self.report_retry = Some(Instant::now() + RETRY);
                return false;
            }
        }
        tracing::info!(pod = %self.ident, "pod removed");
        self.remove_pod_dir();
        true
    }

    fn remove_pod_dir(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.pod_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.pod_dir.display(), error = %e, "removing pod dir");
            }
        }
    }
}
