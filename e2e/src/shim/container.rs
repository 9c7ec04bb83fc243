//! One container's life as the kubelet tracks it: waiting, running, exited;
//! restart count, last termination and crash-loop back-off.
//!
//! The back-off follows the kubelet (v1.34 `kuberuntime_manager.go`
//! `doBackOff`, `flowcontrol.Backoff`): before starting a container that has
//! an exited instance (a crash, or a kill for an image swap: both count),
//! the key (container name, image; the kubelet hashes only those) is looked
//! up; if its back-off has not elapsed since that instance finished, the
//! start waits (`CrashLoopBackOff`, "back-off 20s restarting failed
//! container=..."), else the entry is created (initial) or doubled (capped).
//! An entry is forgotten 2 × max after its last update. So swapping a slot
//! back to an image it ran minutes ago waits, as on a real node.

use std::collections::HashMap;
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
    /// Crash-loop back-off of (container, image) holds the start until then.
    BackOff(Instant),
}

/// One back-off key's state (`flowcontrol.backoffEntry`).
#[derive(Clone, Copy, Debug)]
struct BackoffEntry {
    delay: Duration,
    last_update: Instant,
}

/// Go's `time.Duration.String()` for whole milliseconds: `300ms`, `10s`, `2m40s`.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (m, rest) = (ms / 60_000, ms % 60_000);
    let secs = if rest % 1000 == 0 {
        format!("{}s", rest / 1000)
    } else {
        format!("{}s", rest as f64 / 1000.0)
    };
    if m > 0 {
        format!("{m}m{secs}")
    } else {
        secs
    }
}

/// `flowcontrol.hasExpired`: an entry not updated for 2 × max is forgotten.
fn expired(event: Instant, last_update: Instant, cfg: &Backoff) -> bool {
    event.saturating_duration_since(last_update) > cfg.max * 2
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
    /// Retry delay of failed starts (image errors), not crash-loop back-off.
    delay: Duration,
    /// Crash-loop back-off per image (the key's other parts are fixed here).
    backoff: HashMap<String, BackoffEntry>,
    /// When the most recent exited instance finished.
    last_finished: Option<Instant>,
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
            backoff: HashMap::new(),
            last_finished: None,
        }
    }

    /// Until when the back-off of `image` holds a start at `now`, if it does.
    fn backoff_until(&self, image: &str, now: Instant, cfg: &Backoff) -> Option<Instant> {
        let finished = self.last_finished?;
        let entry = self.backoff.get(image)?;
        if expired(finished, entry.last_update, cfg) {
            return None;
        }
        let until = finished + entry.delay;
        (now < until).then_some(until)
    }

    /// The kubelet's `backOff.Next(key, finishedAt)` when a container starts
    /// after an exited instance.
    fn note_start(&mut self, image: &str, cfg: &Backoff) {
        let Some(finished) = self.last_finished else {
            return;
        };
        let now = Instant::now();
        let entry = self
            .backoff
            .entry(image.to_owned())
            .or_insert(BackoffEntry {
                delay: Duration::ZERO,
                last_update: now,
            });
        entry.delay = if entry.delay.is_zero() || expired(finished, entry.last_update, cfg) {
            cfg.initial
        } else {
            (entry.delay * 2).min(cfg.max)
        };
        entry.last_update = now;
    }

    /// The CrashLoopBackOff message the kubelet writes for a held start.
    pub fn backoff_message(&self, image: &str, pod_name: &str) -> String {
        let delay = self.backoff.get(image).map(|e| e.delay).unwrap_or_default();
        format!(
            "back-off {} restarting failed container={} pod={pod_name}",
            go_duration(delay),
            self.name
        )
    }

    /// Holds the start of `image` until `until` (crash-loop back-off).
    pub fn hold(&mut self, image: &str, until: Instant, pod_name: &str) {
        if let State::Exited { run, .. } = &self.state {
            self.last = Some(run.clone());
        }
        self.state = State::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: self.backoff_message(image, pod_name),
            image: image.to_owned(),
            retry_at: Some(until),
        };
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
    pub fn next(&self, spec_image: &str, now: Instant, cfg: &Backoff) -> Next {
        let changed = self.image() != spec_image;
        match &self.state {
            State::Running { .. } if changed => return Next::Replace,
            State::Running { .. } => return Next::Keep,
            State::Waiting {
                retry_at: Some(at), ..
            } if !changed && *at > now => return Next::Keep,
            State::Exited {
                restart_at: None, ..
            } if !changed => return Next::Keep,
            State::Exited {
                restart_at: Some(at),
                ..
            } if !changed && *at > now => return Next::Keep,
            _ => {}
        }
        // Another image has its own key, but the exited instance is the
        // same: a swap back to a recently run image waits too.
        match self.backoff_until(spec_image, now, cfg) {
            Some(until) => Next::BackOff(until),
            None => Next::Start,
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
    pub fn started(
        &mut self,
        process: Process,
        image: &str,
        image_id: String,
        node: &str,
        cfg: &Backoff,
    ) {
        self.note_start(image, cfg);
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
        let _ = since;
        let run = Terminated {
            exit,
            started_at: *started_at,
            container_id: container_id.clone(),
            image: image.clone(),
        };
        let now = Instant::now();
        self.last_finished = Some(now);
        let restart_at =
            restart.then(|| self.backoff_until(&run.image, now, backoff).unwrap_or(now));
        match std::mem::replace(&mut self.state, State::Exited { run, restart_at }) {
            State::Running { process, .. } => Some(process),
            _ => None,
        }
    }

    /// Stopped on purpose (image replaced, pod deleted). Still an exited
    /// instance to the kubelet: the next start of this container meets the
    /// back-off of its image.
    pub fn stopped(&mut self, exit: ExitInfo) -> Option<Process> {
        self.exited(exit, false, &Backoff::default())
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
                let message = self.backoff_message(&run.image, pod_name);
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
    use baton_api::pairpod::Slot;

    fn exit(code: i32) -> ExitInfo {
        ExitInfo {
            code,
            signal: None,
            at: Timestamp::now(),
        }
    }

    fn fake_running(rt: &mut Runtime, image: &str, cfg: &Backoff) {
        rt.note_start(image, cfg);
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

    fn secs(at: Instant) -> u64 {
        at.saturating_duration_since(Instant::now())
            .as_secs()
            .div_ceil(10)
            * 10
    }

    #[test]
    fn crash_loop_restarts_at_once_then_backs_off_doubling() {
        let backoff = Backoff {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(40),
        };
        let mut rt = Runtime::new("c", "img");
        let now = Instant::now();
        assert_eq!(rt.next("img", now, &backoff), Next::Start);
        fake_running(&mut rt, "img", &backoff);
        assert_eq!(rt.next("img", now, &backoff), Next::Keep);
        let mut delays = Vec::new();
        for _ in 0..4 {
            rt.exited(exit(3), true, &backoff);
            let at = rt.wake_at().expect("restart scheduled");
            delays.push(secs(at));
            assert_eq!(rt.next("img", at, &backoff), Next::Start);
            fake_running(&mut rt, "img", &backoff);
        }
        assert_eq!(delays, [0, 10, 20, 40]);
        assert_eq!(rt.restart_count, 4);
        let s = rt.status("p");
        let last = s.last_state.and_then(|l| l.terminated).expect("lastState");
        assert_eq!((last.exit_code, last.reason.as_deref()), (3, Some("Error")));
    }

    #[test]
    fn an_image_swap_counts_and_a_swap_back_waits_like_the_kubelets() {
        let backoff = Backoff {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
        };
        // Created with v1: no exited instance, no back-off.
        let mut rt = Runtime::new(Slot::B.container(), "v1");
        assert_eq!(rt.next("v1", Instant::now(), &backoff), Next::Start);
        fake_running(&mut rt, "v1", &backoff);
        // Swap to v2: the kill leaves an exited instance; v2's key is new,
        // so it starts at once (and its entry is created).
        assert_eq!(rt.next("v2", Instant::now(), &backoff), Next::Replace);
        rt.stopped(exit(0));
        assert_eq!(rt.next("v2", Instant::now(), &backoff), Next::Start);
        fake_running(&mut rt, "v2", &backoff);
        // Swap back to v1: v1 never started after an exited instance, so it
        // has no entry either: starts at once, entry created.
        rt.stopped(exit(0));
        assert_eq!(rt.next("v1", Instant::now(), &backoff), Next::Start);
        fake_running(&mut rt, "v1", &backoff);
        // Back to v2 within minutes: v2's entry (10 s) holds the start.
        rt.stopped(exit(0));
        let Next::BackOff(until) = rt.next("v2", Instant::now(), &backoff) else {
            panic!("a swap back to v2 must wait");
        };
        assert_eq!(secs(until), 10);
        rt.hold("v2", until, "p_ns(uid)");
        let s = rt.status("p_ns(uid)");
        let w = s.state.and_then(|st| st.waiting).expect("waiting");
        assert_eq!(w.reason.as_deref(), Some("CrashLoopBackOff"));
        assert_eq!(
            w.message,
            Some(format!(
                "back-off 10s restarting failed container={} pod=p_ns(uid)",
                Slot::B.container()
            ))
        );
        assert!(s.last_state.and_then(|l| l.terminated).is_some());
        // Once started, the next swap back doubles: 20 s.
        assert_eq!(rt.next("v2", until, &backoff), Next::Start);
        fake_running(&mut rt, "v2", &backoff);
        rt.stopped(exit(0));
        fake_running(&mut rt, "v1", &backoff);
        rt.stopped(exit(0));
        let Next::BackOff(until) = rt.next("v2", Instant::now(), &backoff) else {
            panic!("must wait");
        };
        assert_eq!(secs(until), 20);
        // A third image has no entry: it starts at once.
        assert_eq!(rt.next("v3", Instant::now(), &backoff), Next::Start);
    }

    #[test]
    fn go_durations_read_like_the_kubelets() {
        assert_eq!(go_duration(Duration::from_millis(300)), "300ms");
        assert_eq!(go_duration(Duration::from_secs(20)), "20s");
        assert_eq!(go_duration(Duration::from_secs(160)), "2m40s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
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
        fake_running(&mut rt, "v1", &Backoff::default());
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
