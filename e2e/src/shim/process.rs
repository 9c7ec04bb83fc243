//! Container processes: started in their own process group with output to a
//! log file, stopped like the kubelet stops a container (SIGTERM, then
//! SIGKILL after the grace period).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code; 128 + N when killed by signal N (as container runtimes report).
    pub code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// When the shim saw it end.
    pub at: Timestamp,
}

impl ExitInfo {
    fn from_status(status: std::process::ExitStatus) -> Self {
        let signal = status.signal();
        Self {
            code: status
                .code()
                .unwrap_or_else(|| 128 + signal.unwrap_or_default()),
            signal,
            at: Timestamp::now(),
        }
    }
}

/// What to run.
pub struct Launch<'a> {
    /// Executable.
    pub program: &'a Path,
    /// Arguments.
    pub args: &'a [String],
    /// The complete environment (nothing is inherited).
    pub env: &'a [(String, String)],
    /// Working directory.
    pub cwd: &'a Path,
    /// Log file for stdout and stderr (appended to).
    pub log: &'a Path,
    /// Line written to the log before the process starts.
    pub header: String,
}

/// A running (or just ended) container process.
#[derive(Debug)]
pub struct Process {
    pid: i32,
    exit: watch::Receiver<Option<ExitInfo>>,
    log: PathBuf,
}

/// Starting failed.
#[derive(Debug, thiserror::Error)]
#[error("starting {}: {source}", program.display())]
pub struct SpawnError {
    /// The program.
    pub program: PathBuf,
    /// The error.
    #[source]
    pub source: std::io::Error,
}

fn open_log(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

impl Process {
    /// Starts `launch`; `on_exit` runs once the process has ended.
    pub fn spawn(
        launch: &Launch<'_>,
        on_exit: impl FnOnce() + Send + 'static,
    ) -> Result<Self, SpawnError> {
        let err = |source| SpawnError {
            program: launch.program.to_owned(),
            source,
        };
        let mut log = open_log(launch.log).map_err(err)?;
        writeln!(log, "{}", launch.header).map_err(err)?;
        let mut cmd = tokio::process::Command::new(launch.program);
        cmd.args(launch.args)
            .env_clear()
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .current_dir(launch.cwd)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(err)?)
            .stderr(log)
            // Own group: stop signals reach whatever the entrypoint started.
            .process_group(0)
            .kill_on_drop(false);
        // SAFETY: prctl is async-signal-safe. The child dies with the thread
        // that spawned it (a runtime worker, alive as long as the shim), so a
        // shim killed without cleanup leaves no container processes behind.
        unsafe {
            cmd.pre_exec(crate::kit::process::set_parent_death_signal);
        }
        let mut child = cmd.spawn().map_err(err)?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| err(std::io::Error::other("spawned process has no pid")))?;
        let (tx, rx) = watch::channel(None);
        let log_path = launch.log.to_owned();
        tokio::spawn(async move {
            let info = match child.wait().await {
                Ok(status) => ExitInfo::from_status(status),
                Err(e) => {
                    tracing::warn!(pid, error = %e, "waiting for a container process failed");
                    ExitInfo {
                        code: 128 + libc::SIGKILL,
                        signal: None,
                        at: Timestamp::now(),
                    }
                }
            };
            if let Ok(mut log) = open_log(&log_path) {
                let _ = writeln!(
                    log,
                    "--- baton-node-shim: pid {pid} exited with code {} at {} ---",
                    info.code, info.at
                );
            }
            let _ = tx.send(Some(info));
            on_exit();
        });
        Ok(Self {
            pid,
            exit: rx,
            log: launch.log.to_owned(),
        })
    }

    /// Process id (also its process group id).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// How it ended, once it has.
    pub fn exited(&self) -> Option<ExitInfo> {
        *self.exit.borrow()
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    fn signal(&self, signal: Signal) {
        // Only while the leader is unreaped: its pid cannot name another group.
        if self.exited().is_none() {
            if let Err(e) = killpg(Pid::from_raw(self.pid), signal) {
                tracing::debug!(pid = self.pid, %signal, error = %e, "signal not delivered");
            }
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; returns how it ended.
    pub async fn stop(&self, grace: Duration) -> ExitInfo {
        if let Some(info) = self.exited() {
            return info;
        }
        self.signal(Signal::SIGTERM);
        let mut rx = self.exit.clone();
        if let Ok(Ok(info)) = tokio::time::timeout(grace, rx.wait_for(Option::is_some)).await {
            if let Some(info) = *info {
                return info;
            }
        }
        tracing::info!(pid = self.pid, ?grace, "grace period over; SIGKILL");
        self.signal(Signal::SIGKILL);
        let info = match rx.wait_for(Option::is_some).await {
            Ok(info) => info.unwrap_or_else(killed),
            // The waiter task is gone (runtime shutting down): it was killed.
            Err(_) => killed(),
        };
        info
    }
}

#[cfg(test)]
impl Process {
    /// A handle to no process (pid that cannot exist), for state-machine tests.
    pub(crate) fn detached_for_tests() -> Self {
        let (_tx, exit) = watch::channel(None);
        Self {
            pid: i32::MAX,
            exit,
            log: PathBuf::new(),
        }
    }
}

fn killed() -> ExitInfo {
    ExitInfo {
        code: 128 + libc::SIGKILL,
        signal: Some(libc::SIGKILL),
        at: Timestamp::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_escalates_to_sigkill_after_the_grace_period() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("logs/c.log");
        let args = [
            "-c".to_owned(),
            "trap '' TERM; echo up; while :; do sleep 0.05; done".to_owned(),
        ];
        let env = [("PATH".to_owned(), "/usr/bin:/bin".to_owned())];
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let p = Process::spawn(
            &Launch {
                program: Path::new("/bin/sh"),
                args: &args,
                env: &env,
                cwd: dir.path(),
                log: &log,
                header: "--- start ---".into(),
            },
            move || {
                let _ = tx.send(());
            },
        )
        .expect("spawn sh");
        // Let the trap be installed before signalling.
        for _ in 0..100 {
            if std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("up")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let start = std::time::Instant::now();
        let info = p.stop(Duration::from_millis(300)).await;
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert_eq!(info.code, 137);
        assert_eq!(info.signal, Some(9));
        assert_eq!(rx.recv().await, Some(()), "on_exit ran");
        let text = std::fs::read_to_string(&log).expect("log");
        assert!(text.starts_with("--- start ---\nup\n"), "{text}");
        assert!(text.contains("exited with code 137"), "{text}");
    }
}
