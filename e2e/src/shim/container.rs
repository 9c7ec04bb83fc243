//! One container's life as the kubelet tracks it: waiting, running, exited;
//! restart count, last termination and crash-loop back-off.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::config::Backoff;
use super::process::{ExitInfo, Process};

/// A finished run of the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terminated {
    /// How it ended.
    pub exit: ExitInfo,
    /// When it started.
    pub started_at: Timestamp,
    /// `containerID` it had.
    pub container_id: String,
    /// Image it ran.
    pub image: String,
}

impl Terminated {
    fn state(&self) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: self.exit.code,
                signal: self.exit.signal,
                reason: Some(
                    if self.exit.code == 0 {
                        "Completed"
                    } else {
                        "Error"
                    }
                    .into(),
                ),
                started_at: Some(Time(self.started_at)),
                finished_at: Some(Time(self.exit.at)),
                container_id: Some(self.container_id.clone()),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        }
    }
}

/// Where a container is now.
#[derive(Debug)]
pub enum State {
    /// Not running: never started, or starting failed.
    Waiting {
        /// `ContainerCreating`, `ErrImagePull`, `CreateContainerConfigError`, `RunContainerError`.
        reason: String,
        /// Details.
        message: String,
        /// Image it is waiting to run.
        image: String,
        /// When to try again; `None` = at the next change.
        retry_at: Option<Instant>,
    },
    /// Its process runs.
    Running {
        /// The process.
        process: Process,
        /// Image it runs.
        image: String,
        /// `imageID` reported (what the image maps to).
        image_id: String,
        /// `containerID` reported.
        container_id: String,
        /// Wall-clock start.
        started_at: Timestamp,
        /// Monotonic start, for the back-off reset.
        since: Instant,
    },
    /// Its process ended.
    Exited {
        /// The run that ended.
        run: Terminated,
        /// When it restarts; `None` = never (restart policy).
        restart_at: Option<Instant>,
    },
}

/// What the pod worker should do with a container now.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing.
    Keep,
    /// Start it (it is not running).
    Start,
    /// Stop the running process, then start the new image.
    Replace,
}

/// One container of a pod.
#[derive(Debug)]
pub struct Runtime {
    /// Container name.
    pub name: String,
    /// Current state.
    pub state: State,
    /// Restarts so far (every start after the first).
    pub restart_count: i32,
    /// The termination before the current state, reported as `lastState`.
    pub last: Option<Terminated>,
    /// Bumped on every start, so late exit notices of older runs are ignored.
    pub generation: u64,
    started_once: bool,
    delay: Duration,
}

impl Runtime {
    /// A container that has not started, waiting for `image`.
    pub fn new(name: &str, image: &str) -> Self {
        Self {
            name: name.to_owned(),
            state: State::Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
                image: image.to_owned(),
                retry_at: None,
            },
            restart_count: 0,
            last: None,
            generation: 0,
            started_once: false,
            delay: Duration::ZERO,
        }
    }

    /// Image of the current (or waiting, or last) run.
    pub fn image(&self) -> &str {
        match &self.state {
            State::Waiting { image, .. } | State::Running { image, .. } => image,
            State::Exited { run, .. } => &run.image,
        }
    }

    /// Whether it ever ran.
    pub fn started_once(&self) -> bool {
        self.started_once
    }

    /// What to do given the spec's image at `now`.
    pub fn next(&self, spec_image: &str, now: Instant) -> Next {
        let changed = self.image() != spec_image;
        match &self.state {
            State::Running { .. } if changed => Next::Replace,
            State::Running { .. } => Next::Keep,
            // A new image starts at once: the back-off belongs to the old one.
            _ if changed => Next::Start,
            State::Waiting { retry_at, .. } => match retry_at {
                Some(at) if *at > now => Next::Keep,
                _ => Next::Start,
            },
            State::Exited { restart_at, .. } => match restart_at {
                Some(at) if *at <= now => Next::Start,
                _ => Next::Keep,
            },
        }
    }

    /// Earliest moment `next` may change its answer by itself.
    pub fn wake_at(&self) -> Option<Instant> {
        match &self.state {
            State::Waiting { retry_at, .. } => *retry_at,
            State::Exited { restart_at, .. } => *restart_at,
            State::Running { .. } => None,
        }
    }

    /// Records a started process.
    pub fn started(&mut self, process: Process, image: &str, image_id: String, node: &str) {
        if self.started_once {
            self.restart_count += 1;
        }
        if let State::Exited { run, .. } = &self.state {
            self.last = Some(run.clone());
        }
        self.started_once = true;
        self.generation += 1;
        self.state = State::Running {
            container_id: format!("baton-node-shim://{node}/{}", process.pid()),
            process,
            image: image.to_owned(),
            image_id,
            started_at: Timestamp::now(),
            since: Instant::now(),
        };
    }

    /// Records a start that failed; retried after the back-off.
    pub fn failed_to_start(
        &mut self,
        reason: &str,
        message: String,
        image: &str,
        backoff: &Backoff,
    ) {
        if self.image() != image {
            self.delay = Duration::ZERO;
        }
        // Like a crash: the first retry is immediate, then the back-off grows.
        let retry_at = Instant::now() + self.delay;
        self.bump(backoff);
        // An earlier run's termination stays visible as lastState.
        if let State::Exited { run, .. } = &self.state {
            self.last = Some(run.clone());
        }
        self.state = State::Waiting {
            reason: reason.to_owned(),
            message,
            image: image.to_owned(),
            retry_at: Some(retry_at),
        };
    }

    fn bump(&mut self, backoff: &Backoff) {
        self.delay = if self.delay.is_zero() {
            backoff.initial
        } else {
            (self.delay * 2).min(backoff.max)
        };
    }

    /// The running process ended with `exit`; `restart` = the restart policy allows another run.
    /// Returns the process so the caller can drop it.
    pub fn exited(&mut self, exit: ExitInfo, restart: bool, backoff: &Backoff) -> Option<Process> {
        let State::Running {
            since,
            started_at,
            container_id,
            image,
            ..
        } = &self.state
        else {
            return None;
        };
        // A container that ran long enough is forgiven its earlier crashes.
        if since.elapsed() >= backoff.max * 2 {
            self.delay = Duration::ZERO;
        }
        let run = Terminated {
            exit,
            started_at: *started_at,
            container_id: container_id.clone(),
            image: image.clone(),
        };
        let restart_at = restart.then(|| Instant::now() + self.delay);
        if restart {
            self.bump(backoff);
        }
        match std::mem::replace(&mut self.state, State::Exited { run, restart_at }) {
            State::Running { process, .. } => Some(process),
            _ => None,
        }
    }

    /// Stopped on purpose (image replaced, pod deleted): no back-off.
    pub fn stopped(&mut self, exit: ExitInfo) -> Option<Process> {
        let process = self.exited(exit, false, &Backoff::default());
        self.delay = Duration::ZERO;
        process
    }

    /// The running process, if any.
    pub fn process(&self) -> Option<&Process> {
        match &self.state {
            State::Running { process, .. } => Some(process),
            _ => None,
        }
    }

    /// Whether it ended for good (restart policy), with its exit code.
    pub fn finished(&self) -> Option<i32> {
        match &self.state {
            State::Exited {
                run,
                restart_at: None,
            } => Some(run.exit.code),
            _ => None,
        }
    }

    /// The `containerStatuses[]` entry.
    pub fn status(&self, pod_name: &str) -> ContainerStatus {
        let waiting = |reason: &str, message: &str| ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.to_owned()),
                message: (!message.is_empty()).then(|| message.to_owned()),
            }),
            ..ContainerState::default()
        };
        let (state, last, ready, image_id, container_id) = match &self.state {
            State::Waiting {
                reason, message, ..
            } => (
                waiting(reason, message),
                self.last.as_ref(),
                false,
                None,
                None,
            ),
            State::Running {
                image_id,
                container_id,
                started_at,
                ..
            } => (
                ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(Time(*started_at)),
                    }),
                    ..ContainerState::default()
                },
                self.last.as_ref(),
                true,
                Some(image_id.clone()),
                Some(container_id.clone()),
            ),
            State::Exited {
                run,
                restart_at: Some(_),
            } => {
                // No countdown in the text: an unchanged status is not re-sent.
                let message = format!(
                    "back-off restarting failed container={} pod={pod_name}",
                    self.name
                );
                (
                    waiting("CrashLoopBackOff", &message),
                    Some(run),
                    false,
                    None,
                    Some(run.container_id.clone()),
                )
            }
            State::Exited {
                run,
                restart_at: None,
            } => (
                run.state(),
                self.last.as_ref(),
                false,
                None,
                Some(run.container_id.clone()),
            ),
        };
        ContainerStatus {
            name: self.name.clone(),
            image: self.image().to_owned(),
            image_id: image_id.unwrap_or_default(),
            container_id,
            ready,
            started: Some(ready),
            restart_count: self.restart_count,
            state: Some(state),
            last_state: Some(last.map(Terminated::state).unwrap_or_default()),
            ..ContainerStatus::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: i32) -> ExitInfo {
        ExitInfo {
            code,
            signal: None,
            at: Timestamp::now(),
        }
    }

    fn fake_running(rt: &mut Runtime, image: &str) {
        rt.generation += 1;
        if rt.started_once {
            rt.restart_count += 1;
        }
        if let State::Exited { run, .. } = &rt.state {
            rt.last = Some(run.clone());
        }
        rt.started_once = true;
        rt.state = State::Running {
            process: Process::detached_for_tests(),
            image: image.into(),
            image_id: "id".into(),
            container_id: "cid".into(),
            started_at: Timestamp::now(),
            since: Instant::now(),
        };
    }

    #[test]
    fn crash_loop_restarts_at_once_then_backs_off_doubling() {
        let backoff = Backoff {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(40),
        };
        let mut rt = Runtime::new("c", "img");
        let now = Instant::now();
        assert_eq!(rt.next("img", now), Next::Start);
        fake_running(&mut rt, "img");
        assert_eq!(rt.next("img", now), Next::Keep);
        let mut delays = Vec::new();
        for _ in 0..4 {
            rt.exited(exit(3), true, &backoff);
            let at = rt.wake_at().expect("restart scheduled");
            delays.push(
                at.saturating_duration_since(Instant::now())
                    .as_secs()
                    .div_ceil(10)
                    * 10,
            );
            assert_eq!(rt.next("img", at), Next::Start);
            fake_running(&mut rt, "img");
        }
        assert_eq!(delays, [0, 10, 20, 40]);
        assert_eq!(rt.restart_count, 4);
        let s = rt.status("p");
        let last = s.last_state.and_then(|l| l.terminated).expect("lastState");
        assert_eq!((last.exit_code, last.reason.as_deref()), (3, Some("Error")));
    }

    #[test]
    fn a_new_image_replaces_a_running_one_and_skips_back_off() {
        let backoff = Backoff::default();
        let mut rt = Runtime::new("c", "v1");
        fake_running(&mut rt, "v1");
        assert_eq!(rt.next("v2", Instant::now()), Next::Replace);
        rt.exited(exit(1), true, &backoff);
        fake_running(&mut rt, "v1");
        rt.exited(exit(1), true, &backoff);
        // Crashed twice in a row: v1 waits, v2 starts at once.
        assert_eq!(rt.next("v1", Instant::now()), Next::Keep);
        assert_eq!(rt.next("v2", Instant::now()), Next::Start);
    }

    #[test]
    fn status_reports_waiting_running_and_terminated() {
        let mut rt = Runtime::new("c", "v1");
        let s = rt.status("p");
        assert_eq!(
            s.state
                .and_then(|st| st.waiting)
                .and_then(|w| w.reason)
                .as_deref(),
            Some("ContainerCreating")
        );
        assert!(!s.ready);
        fake_running(&mut rt, "v1");
        let s = rt.status("p");
        assert!(s.ready && s.started == Some(true));
        assert!(s.state.and_then(|st| st.running).is_some());
        rt.exited(exit(0), false, &Backoff::default());
        assert_eq!(rt.finished(), Some(0));
        let s = rt.status("p");
        let t = s.state.and_then(|st| st.terminated).expect("terminated");
        assert_eq!(t.reason.as_deref(), Some("Completed"));
    }
}
