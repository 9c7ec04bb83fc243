//! One child-process driver for every process a test starts (agents, the
//! operator, probes, the node shim, etcd and kube-apiserver).
//!
//! [`Spawn`] starts a command with stdin from `/dev/null`, stdout and stderr
//! appended to a log file (or stdout to a file of its own), dying with the
//! thread that spawned it (`PR_SET_PDEATHSIG`), optionally inside a network
//! namespace. The resulting [`Process`] is reaped by a thread of its own as
//! soon as it exits, so a liveness check never sees a zombie; a signal is
//! only ever sent to a pid that has not been reaped (no pid reuse). Stopping
//! is SIGTERM, then SIGKILL after a grace; dropping a `Process` stops it with
//! its drop grace (zero: SIGKILL at once). Every wait that gives up says what
//! it waited for and quotes the end of the log.

use std::fs::{File, OpenOptions};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::error::{Error, Result};
use super::sandbox::Netns;
use super::wait;

/// Lines of a log quoted in errors.
pub const LOG_TAIL: usize = 40;
/// How long [`Process::kill`] waits for the reaper.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// For `pre_exec`: the child gets SIGKILL when the thread that spawned it
/// dies, so a test (or shim) killed without unwinding leaves no process
/// behind. Async-signal-safe: one `prctl`.
pub fn set_parent_death_signal() -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag on the calling process.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// How to start one child process.
#[derive(Debug)]
pub struct Spawn {
    cmd: Command,
    name: String,
    log: PathBuf,
    stdout: Option<PathBuf>,
    append: bool,
    drop_grace: Duration,
    netns: Option<Netns>,
}

impl Spawn {
    /// `cmd`, called `name` in messages, its output going to `log` (truncated).
    pub fn new(name: impl Into<String>, cmd: Command, log: impl Into<PathBuf>) -> Self {
        Self {
            cmd,
            name: name.into(),
            log: log.into(),
            stdout: None,
            append: false,
            drop_grace: Duration::ZERO,
            netns: None,
        }
    }

    /// Stdout to `path` (truncated) instead of the log; stderr stays in the log.
    pub fn stdout_to(mut self, path: impl Into<PathBuf>) -> Self {
        self.stdout = Some(path.into());
        self
    }

    /// Appends to the log instead of truncating it (a restarted process keeps
    /// its predecessor's lines).
    pub fn append(mut self) -> Self {
        self.append = true;
        self
    }

    /// On drop: SIGTERM, then SIGKILL after `grace` (default zero: SIGKILL at once).
    pub fn drop_grace(mut self, grace: Duration) -> Self {
        self.drop_grace = grace;
        self
    }

    /// Runs the process inside network namespace `ns`.
    pub fn netns(mut self, ns: &Netns) -> Self {
        self.netns = Some(ns.clone());
        self
    }

    /// Starts it.
    pub fn start(mut self) -> Result<Process> {
        let create = |path: &Path, append: bool| {
            let mut o = OpenOptions::new();
            if append {
                o.create(true).append(true);
            } else {
                o.create(true).write(true).truncate(true);
            }
            o.open(path)
                .map_err(|e| Error::io(format!("creating {}", path.display()), e))
        };
        let log = create(&self.log, self.append)?;
        let stdout: File = match &self.stdout {
            Some(p) => create(p, false)?,
            None => log
                .try_clone()
                .map_err(|e| Error::io(format!("duplicating {}", self.log.display()), e))?,
        };
        self.cmd.stdin(Stdio::null()).stdout(stdout).stderr(log);
        // SAFETY: set_parent_death_signal is async-signal-safe.
        unsafe {
            self.cmd.pre_exec(set_parent_death_signal);
        }
        if let Some(ns) = &self.netns {
            let fd = ns.raw_fd();
            // SAFETY: setns(2) is async-signal-safe; `ns` (kept in `self`)
            // holds the descriptor open until after the fork.
            unsafe {
                self.cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let started = Instant::now();
        let child = self.cmd.spawn().map_err(|source| Error::Spawn {
            name: self.name.clone(),
            bin: PathBuf::from(self.cmd.get_program()),
            source,
        })?;
        Process::adopt(self.name, child, self.log, started, self.drop_grace)
    }
}

/// What the reaper found.
#[derive(Debug, Default)]
struct Exit {
    status: Option<(ExitStatus, Instant)>,
}

type Shared = Arc<(Mutex<Exit>, Condvar)>;

fn lock(shared: &Shared) -> MutexGuard<'_, Exit> {
    shared.0.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running (or exited) child; stopped on drop.
#[derive(Debug)]
pub struct Process {
    name: String,
    pid: u32,
    log: PathBuf,
    started: Instant,
    drop_grace: Duration,
    exit: Shared,
    reaper: Option<JoinHandle<()>>,
}

impl Process {
    /// Takes over `child`: a reaper thread waits for it.
    fn adopt(
        name: String,
        child: Child,
        log: PathBuf,
        started: Instant,
        drop_grace: Duration,
    ) -> Result<Process> {
        let pid = child.id();
        let exit: Shared = Arc::default();
        let shared = exit.clone();
        let reaper = std::thread::Builder::new()
            .name(format!("reap-{pid}"))
            .spawn(move || reap(child, &shared))
            .map_err(|e| {
                // No reaper: do not leave the child running unsupervised.
                if let Ok(p) = i32::try_from(pid) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), Signal::SIGKILL);
                }
                Error::io(format!("starting the reaper of {name}"), e)
            })?;
        Ok(Process {
            name,
            pid,
            log,
            started,
            drop_grace,
            exit,
            reaper: Some(reaper),
        })
    }

    /// Its name in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// When it was spawned.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last [`LOG_TAIL`] lines of the log, headed by its path.
    pub fn log_tail(&self) -> String {
        format!(
            "log {}:\n{}",
            self.log.display(),
            file_tail(&self.log, LOG_TAIL)
        )
    }

    /// Its exit status, once it exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        lock(&self.exit).status.map(|(s, _)| s)
    }

    /// When it exited (as the reaper saw it).
    pub fn exited_at(&self) -> Option<Instant> {
        lock(&self.exit).status.map(|(_, t)| t)
    }

    /// Whether it still runs.
    pub fn alive(&self) -> bool {
        self.exited().is_none()
    }

    /// Sends `sig` unless it exited; false when it had.
    pub fn signal(&self, sig: Signal) -> bool {
        // Under the lock the reaper cannot reap, so the pid is still ours.
        let exit = lock(&self.exit);
        if exit.status.is_some() {
            return false;
        }
        match i32::try_from(self.pid) {
            Ok(p) => nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig).is_ok(),
            Err(_) => false,
        }
    }

    /// Waits up to `timeout` for the exit.
    pub fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let mut exit = lock(&self.exit);
        loop {
            if let Some((s, _)) = exit.status {
                return Ok(s);
            }
            let now = Instant::now();
            if now >= deadline {
                drop(exit);
                return Err(Error::Timeout {
                    what: format!("{} (pid {}) to exit", self.name, self.pid),
                    after: timeout,
                    context: self.log_tail(),
                });
            }
            exit = self
                .exit
                .1
                .wait_timeout(exit, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// SIGKILL, and the exit status once reaped (`None` if it did not go within 10 s).
    pub fn kill(&self) -> Option<ExitStatus> {
        self.signal(Signal::SIGKILL);
        self.wait_exit(KILL_WAIT).ok()
    }

    /// SIGTERM, up to `grace` for the exit, then SIGKILL (zero grace: SIGKILL at once).
    pub fn stop(&self, grace: Duration) -> Option<ExitStatus> {
        if grace.is_zero() {
            return self.kill();
        }
        self.signal(Signal::SIGTERM);
        match self.wait_exit(grace) {
            Ok(s) => Some(s),
            Err(_) => self.kill(),
        }
    }

    /// Polls `f` every `every` until it returns `Some`. Fails as soon as the
    /// process exits, or after `timeout`, with the log tail and `context()`.
    pub fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        every: Duration,
        mut f: impl FnMut() -> Option<T>,
        context: impl FnOnce() -> String,
    ) -> Result<T> {
        let mut exited = None;
        let polled = wait::poll(
            what,
            timeout,
            every,
            || {
                if let Some(s) = self.exited() {
                    exited = Some(s);
                    return Some(None);
                }
                f().map(Some)
            },
            || {
                format!(
                    "{}\n{} (pid {}) {}",
                    context(),
                    self.name,
                    self.pid,
                    self.log_tail()
                )
            },
        );
        match polled {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(self.exited_error(what, exited)),
            Err(e) => Err(e),
        }
    }

    /// The [`Error::Exited`] of this process while waiting for `what`.
    pub fn exited_error(&self, what: &str, status: Option<ExitStatus>) -> Error {
        Error::Exited {
            name: self.name.clone(),
            pid: self.pid,
            status: status
                .or_else(|| self.exited())
                .unwrap_or_else(|| ExitStatus::from_raw(0)),
            what: what.to_owned(),
            log: self.log_tail(),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let gone = self.stop(self.drop_grace).is_some();
        if let Some(r) = self.reaper.take() {
            // A process stuck in the kernel would block the join: leave it.
            if gone {
                let _ = r.join();
            }
        }
    }
}

/// The reaper: waits for the exit without reaping (`WNOWAIT`), then reaps
/// under the lock, so that [`Process::signal`] never hits a reused pid.
fn reap(mut child: Child, shared: &Shared) {
    if let Ok(p) = i32::try_from(child.id()) {
        let pid = nix::unistd::Pid::from_raw(p);
        let flags = nix::sys::wait::WaitPidFlag::WEXITED | nix::sys::wait::WaitPidFlag::WNOWAIT;
        while let Err(nix::errno::Errno::EINTR) =
            nix::sys::wait::waitid(nix::sys::wait::Id::Pid(pid), flags)
        {}
    }
    let mut exit = lock(shared);
    // Reaped elsewhere (not by this kit): report exit code 255.
    let status = child
        .wait()
        .unwrap_or_else(|_| ExitStatus::from_raw(255 << 8));
    exit.status = Some((status, Instant::now()));
    shared.1.notify_all();
}

/// Whether `status` is a death by SIGKILL (a crash hook fired, or a test killed it).
pub fn killed(status: ExitStatus) -> bool {
    status.signal() == Some(libc::SIGKILL)
}

/// Whether process `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Field 3, after the parenthesised command name, is the state.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z")
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`, `RssAnon`, `RssFile`).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The last `lines` lines of a text file (empty when unreadable).
pub fn file_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `cmd` to completion (dying with this thread), capturing its output.
pub fn output(mut cmd: Command) -> Result<std::process::Output> {
    // SAFETY: set_parent_death_signal is async-signal-safe.
    unsafe {
        cmd.pre_exec(set_parent_death_signal);
    }
    cmd.stdin(Stdio::null());
    cmd.output().map_err(|source| Error::Spawn {
        name: format!("{cmd:?}"),
        bin: PathBuf::from(cmd.get_program()),
        source,
    })
}

/// [`output`], and an [`Error::Command`] unless it exited 0.
pub fn checked_output(cmd: Command) -> Result<std::process::Output> {
    let shown = format!("{cmd:?}");
    let out = output(cmd)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(Error::Command {
            command: shown,
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, dir: &Path, grace: Duration) -> Process {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        Spawn::new("sh", cmd, dir.join("sh.log"))
            .drop_grace(grace)
            .start()
            .unwrap()
    }

    #[test]
    fn a_timed_out_wait_quotes_the_log_and_an_exit_ends_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let p = sh("echo started here; sleep 30", dir.path(), Duration::ZERO);
        let e = p
            .wait_until(
                "nothing",
                Duration::from_millis(300),
                POLL_TEST,
                || None::<()>,
                || "ctx".into(),
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("waiting for nothing") && e.contains("started here") && e.contains("ctx"),
            "{e}"
        );
        assert!(p.alive());
        assert!(killed(p.kill().unwrap()));
        assert!(!p.signal(Signal::SIGTERM), "no signal to a reaped pid");

        let q = sh("echo bye; exit 3", dir.path(), Duration::ZERO);
        let e = q
            .wait_until(
                "forever",
                Duration::from_secs(10),
                POLL_TEST,
                || None::<()>,
                String::new,
            )
            .unwrap_err();
        assert!(
            matches!(e, Error::Exited { .. }) && e.to_string().contains("bye"),
            "{e}"
        );
        assert_eq!(q.exited().and_then(|s| s.code()), Some(3));
    }

    #[test]
    fn stop_is_term_then_kill_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let polite = sh("sleep 30", dir.path(), Duration::ZERO);
        assert_eq!(
            polite.stop(Duration::from_secs(5)).and_then(|s| s.signal()),
            Some(libc::SIGTERM)
        );
        let stubborn = sh(
            "trap '' TERM; echo ready; sleep 30",
            dir.path(),
            Duration::ZERO,
        );
        assert!(wait::wait_until(Duration::from_secs(5), || stubborn
            .log_text()
            .contains("ready")));
        let t = Instant::now();
        assert!(killed(stubborn.stop(Duration::from_millis(300)).unwrap()));
        assert!(t.elapsed() >= Duration::from_millis(300));
    }

    const POLL_TEST: Duration = Duration::from_millis(10);
}
