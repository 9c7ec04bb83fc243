//! The agent's main loop: take over from a running agent (handover), else
//! bring up the datapath from pins or fresh; follow the source; serve admin,
//! metrics and the handover socket; shut down keeping or removing pins, or
//! retire after handing over.

mod incumbent;
mod poller;
mod shared;

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use poller::Poller;
use shared::Inner;
pub use shared::Shared;

use crate::admin;
use crate::datapath::{Datapath, DatapathConfig, DatapathError};
use crate::handover::successor::{self, Figures, HandoverError, SuccessorConfig};
use crate::handover::{self, incumbent::Timeouts, Listener};
use crate::metrics::{self, SyncStats};
use crate::model::{Capacity, LatestState};
use crate::programmer::Programmer;
use crate::rate::{self, Sampler};
use crate::source::Source;

/// Everything `baton-agent run` needs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Datapath placement.
    pub datapath: DatapathConfig,
    /// Directory for the admin and handover sockets.
    pub run_dir: PathBuf,
    /// Metrics listener address (None = no metrics).
    pub metrics_addr: Option<SocketAddr>,
    /// How often the source is polled.
    pub poll_interval: Duration,
    /// Leave pins (and so the datapath) in place on exit.
    pub keep_datapath: bool,
    /// Handover timeouts (each message wait; the incumbent's freeze).
    pub handover: Timeouts,
    /// Try to take over from an agent listening on the handover socket first.
    pub take_over: bool,
    /// After a committed handover, keep the report's datapath window up to
    /// date this long (the canary's soak; zero: report once, `final`).
    pub soak: Duration,
}

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Datapath setup.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    /// Reading maps.
    #[error(transparent)]
    Map(#[from] crate::maps::MapError),
    /// The handover failed; the old agent keeps serving.
    #[error("handover failed")]
    Handover(#[from] HandoverError),
    /// The handover socket.
    #[error("handover socket: {0}")]
    Wire(#[from] handover::WireError),
    /// Sockets and directories.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// Receives a takeover's outcome (see [`Hooks::on_takeover`]).
pub type ReportHook = Box<dyn Fn(Result<&Figures, &str>) + Send>;

/// Callbacks for the agent's embedder (a cluster agent writes its pod
/// condition from `on_takeover`).
#[derive(Default)]
pub struct Hooks {
    /// Called once when this agent tried to take over from a running one:
    /// `Ok` with the figures when it owns the datapath, `Err` with the reason
    /// when the old agent keeps it.
    /// Called again with the updated window during a soak (`AgentConfig::soak`).
    pub on_takeover: Option<ReportHook>,
    /// Asked once when a stop signal ends an agent that owns the datapath
    /// and keeps it (`keep_datapath`): `true` removes it anyway (the pair
    /// pod's owner is being deleted: an uninstall, not a restart).
    pub teardown_on_stop: Option<Box<dyn Fn() -> bool + Send>>,
}

/// How `run` ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Stopped by a signal.
    Stopped,
    /// A successor took over; this agent must not run again.
    Retired,
}

/// Path of the admin socket in a run directory.
pub fn admin_socket(run_dir: &Path) -> PathBuf {
    run_dir.join(baton_api::admin::SOCKET_FILE)
}

/// Path of the handover socket in a run directory.
pub fn handover_socket(run_dir: &Path) -> PathBuf {
    run_dir.join(handover::SOCKET)
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> AgentError {
    let what = what.to_string();
    move |source| AgentError::Io { what, source }
}

/// The capacity of this build's maps with the configured overrides: what
/// the maps will have unless reused maps were made with other sizes
/// (`Poller::set_capacity` corrects it then).
fn build_capacity(cfg: &AgentConfig) -> Capacity {
    let d = Capacity::default();
    let of = |name: &str, default: u32| {
        cfg.datapath
            .max_entries
            .get(name)
            .copied()
            .unwrap_or(default)
    };
    Capacity {
        frontends: of("frontend", d.frontends),
        services: of("service", d.services),
        endpoints: of("endpoint", d.endpoints),
        backends: of("backend", d.backends),
    }
}

/// The datapath and what came with it.
struct Start {
    dp: Datapath,
    programmer: Programmer,
    inherited: std::collections::BTreeMap<String, OwnedFd>,
    figures: Option<Figures>,
}

/// Takes over from a running agent, or starts from pins / fresh.
fn start(cfg: &AgentConfig, hooks: &Hooks, latest: LatestState) -> Result<Start, AgentError> {
    let report = |r: Result<&Figures, &str>| {
        if let Some(f) = &hooks.on_takeover {
            f(r);
        }
    };
    if cfg.take_over {
        let scfg = SuccessorConfig {
            socket: handover_socket(&cfg.run_dir),
            pin_dir: cfg.datapath.pin_dir.clone(),
            max_entries: cfg.datapath.max_entries.clone(),
            step_timeout: cfg.handover.step,
            queue_wait: cfg.handover.queue_wait(),
            latest: Some(latest),
        };
        match successor::take_over(&scfg) {
            Ok(t) => {
                let t0 = Instant::now();
                let mut figures = t.figures;
                let dp = Datapath::assemble(
                    cfg.datapath.pin_dir.clone(),
                    t.maps,
                    t.links,
                    t.loaded,
                    figures.maps.clone(),
                )?;
                // The view comes from what the handover already read: no
                // map is walked again while the control plane waits.
                let stale = t.view.stale_keys.len();
                let (programmer, settled) = t.view.settle(&dp.maps)?;
                tracing::info!(
                    stale_keys = stale,
                    ?settled,
                    adopt_us = t0.elapsed().as_micros() as u64,
                    "view of the maps adopted"
                );
                tracing::info!(
                    from = %figures.from_version,
                    from_layout = figures.from_layout,
                    handover_us = figures.handover_us,
                    freeze_us = figures.freeze_us,
                    reused = figures.maps.reused,
                    migrated = figures.maps.migrated,
                    entries_copied = figures.maps.entries_copied,
                    adopt_us = t0.elapsed().as_micros() as u64,
                    "handover committed: this agent owns the datapath"
                );
                figures.maps = dp.migration.clone();
                figures.window = figures.marks.as_ref().and_then(|m| {
                    let now = crate::rate::read(&dp.maps).ok()?;
                    // Nothing synced yet: the loop has not run.
                    Some(m.window(&now, Instant::now(), 0, 0, cfg.soak.is_zero()))
                });
                report(Ok(&figures));
                return Ok(Start {
                    dp,
                    programmer,
                    inherited: t.listeners,
                    figures: Some(figures),
                });
            }
            Err(e) if e.start_from_pins() => {
                tracing::info!(reason = %e, "no handover: starting from the pins");
            }
            // Not a failed upgrade: nothing was touched and the next start
            // (the pod's restart loop) queues again, so no Failed report.
            Err(e @ HandoverError::Busy { .. }) => {
                tracing::error!(reason = %e, "handover socket busy; exiting for a retry");
                return Err(e.into());
            }
            Err(e) => {
                report(Err(&e.to_string()));
                return Err(e.into());
            }
        }
    }
    let t0 = Instant::now();
    let dp = match Datapath::start(&cfg.datapath) {
        Ok(dp) => dp,
        Err(e) => {
            report(Err(&e.to_string()));
            return Err(e.into());
        }
    };
    let programmer = if dp.reused_maps {
        Programmer::adopt(&dp.maps)?
    } else {
        Programmer::new()
    };
    let figures = cfg.take_over.then(|| Figures {
        handover_us: t0.elapsed().as_micros() as u64,
        precopy_us: dp.migration.copy_us,
        maps: dp.migration.clone(),
        via: successor::Via::Pins,
        ..Figures::default()
    });
    if let Some(f) = &figures {
        // No running agent answered: this agent owns the datapath now.
        report(Ok(f));
    }
    Ok(Start {
        dp,
        programmer,
        inherited: Default::default(),
        // Shown in `status.handover` (with `via: pins`), as the report has it.
        figures,
    })
}

/// Runs the agent until `stop` is set or a successor takes over.
pub fn run(
    cfg: &AgentConfig,
    source: Box<dyn Source>,
    mut hooks: Hooks,
    stop: Arc<AtomicBool>,
) -> Result<Exit, AgentError> {
    std::fs::create_dir_all(&cfg.run_dir).map_err(io("create run dir"))?;
    let describe = source.describe();
    // Polled from now on, while the datapath starts: the first sync after a
    // handover's commit then applies a state that is already parsed.
    let poller = Poller::start(source, build_capacity(cfg), cfg.poll_interval)
        .map_err(io("start the source thread"))?;
    let Start {
        dp,
        programmer,
        mut inherited,
        figures,
    } = start(cfg, &hooks, poller.latest())?;
    poller.stop_sharing();
    tracing::info!(pin_dir = %dp.pin_dir.display(), reused = dp.reused_maps,
        generation = dp.generation, maps = ?dp.migration, "datapath attached");

    let admin_path = admin_socket(&cfg.run_dir);
    let admin_l = match inherited.remove("admin") {
        Some(fd) => UnixListener::from(fd),
        None => admin::server::bind(&admin_path).map_err(io("bind admin socket"))?,
    };
    let metrics_l = match (inherited.remove("metrics"), cfg.metrics_addr) {
        (Some(fd), _) => Some(TcpListener::from(fd)),
        (None, Some(addr)) => Some(TcpListener::bind(addr).map_err(io("bind metrics listener"))?),
        (None, None) => None,
    };
    let handover_l = Arc::new(match inherited.remove("handover") {
        Some(fd) => Listener::from_fd(fd),
        None => Listener::bind(&handover_socket(&cfg.run_dir))?,
    });
    let mut listeners: Vec<(&'static str, OwnedFd)> = vec![
        (
            "admin",
            admin_l
                .as_fd()
                .try_clone_to_owned()
                .map_err(io("dup admin"))?,
        ),
        (
            "handover",
            handover_l
                .fd()
                .try_clone_to_owned()
                .map_err(io("dup handover"))?,
        ),
    ];
    if let Some(m) = &metrics_l {
        listeners.push((
            "metrics",
            m.as_fd().try_clone_to_owned().map_err(io("dup metrics"))?,
        ));
        tracing::info!(addr = ?m.local_addr().ok(), "metrics listening");
    }

    let window = figures.as_ref().and_then(|f| f.window);
    let shared = Arc::new(Shared {
        rate: Mutex::new(Sampler::default()),
        window: Mutex::new(window),
        dp,
        inner: Mutex::new(Inner {
            programmer,
            desired: None,
            last: None,
            source_error: None,
            stats: SyncStats::default(),
            frozen: false,
        }),
        started: Instant::now(),
        listeners,
        source: describe,
        handover: figures,
        retired: AtomicBool::new(false),
        stop: stop.clone(),
    });
    let admin = admin::server::serve(admin_l, shared.clone(), stop.clone());
    let metrics = metrics_l.map(|l| metrics::serve(l, shared.clone(), stop.clone()));
    let handover =
        handover::incumbent::serve(handover_l, shared.clone(), cfg.handover, stop.clone());
    let sampler = spawn_sampler(shared.clone(), stop.clone());
    // A canary's soak: the report's window rewritten until it ends.
    let soak = match &shared.handover {
        Some(f) if f.via == successor::Via::Handover && !cfg.soak.is_zero() => {
            // Local mode has no hook: the window still shows in `status`.
            let report = hooks.on_takeover.take().unwrap_or_else(|| Box::new(|_| {}));
            spawn_soak(shared.clone(), cfg.soak, report, stop.clone())
        }
        _ => None,
    };

    if poller.set_capacity(shared.capacity()) {
        tracing::info!("the maps' capacity differs from the build's: reading the source again");
    }
    while !stop.load(Ordering::Relaxed) {
        let outcomes = poller.next(cfg.poll_interval);
        if outcomes.is_empty() && shared.needs_retry() {
            shared.sync(None);
        }
        for outcome in outcomes {
            match outcome {
                Ok(desired) => {
                    shared.lock().source_error = None;
                    shared.sync(Some(desired));
                }
                Err(e) => {
                    tracing::error!(error = %e, "source rejected; previous state keeps serving");
                    let mut g = shared.lock();
                    g.source_error = Some(e.to_string());
                    g.stats.source_errors += 1;
                }
            }
        }
    }
    drop(poller);

    let _ = admin.join();
    if let Some(m) = metrics {
        let _ = m.join();
    }
    let _ = handover.join();
    if let Some(s) = sampler {
        let _ = s.join();
    }
    if let Some(s) = soak {
        let _ = s.join();
    }
    let retired = shared.retired.load(Ordering::SeqCst);
    let shared = Arc::try_unwrap(shared).map_err(|_| AgentError::Io {
        what: "shutdown".into(),
        source: std::io::Error::other("agent state still shared"),
    })?;
    if retired {
        // The sockets and pins belong to the successor now.
        tracing::info!("retired: the successor owns the datapath and the sockets");
        return Ok(Exit::Retired);
    }
    let _ = std::fs::remove_file(&admin_path);
    let _ = std::fs::remove_file(handover_socket(&cfg.run_dir));
    let keep = cfg.keep_datapath && !hooks.teardown_on_stop.as_ref().is_some_and(|f| f());
    if keep {
        tracing::info!("exiting; datapath stays pinned and attached");
    } else {
        shared.dp.teardown()?;
        tracing::info!("datapath detached and unpinned");
    }
    Ok(Exit::Stopped)
}

/// Sleeps until `until` or `stop`, in short steps; `false` when stopped.
fn sleep_until(until: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(100)));
    }
}

/// Reads the datapath counters every [`rate::SAMPLE_INTERVAL`] into
/// `shared.rate` (`status.datapath`): 8 lookups a second. It reads the
/// maps this agent runs (`shared.dp`), which after a takeover or an
/// adoption are the ones its programs count into.
fn spawn_sampler(
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) -> Option<std::thread::JoinHandle<()>> {
    let spawned = std::thread::Builder::new()
        .name("baton-rate".into())
        .spawn(move || {
            let mut next = Instant::now();
            let mut failing = false;
            while sleep_until(next, &stop) {
                match rate::read(&shared.dp.maps) {
                    Ok(c) => {
                        failing = false;
                        shared.rate_lock().push(Instant::now(), c);
                    }
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "reading the datapath counters");
                    }
                    Err(_) => {}
                }
                next += rate::SAMPLE_INTERVAL;
                // Fell behind (a stopped process, a slow host): no burst of catch-up samples.
                let now = Instant::now();
                if next < now {
                    next = now + rate::SAMPLE_INTERVAL;
                }
            }
        });
    match spawned {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "no datapath sampler");
            None
        }
    }
}

/// The canary's soak: every `SOAK_REPORT_INTERVAL_SECONDS` after the commit
/// the window is recomputed (counts since `Hello`, syncs since the commit),
/// stored for `status.handover.datapath` and handed to `report` (the pod
/// condition), until `soak` has passed; then once more with `final`.
fn spawn_soak(
    shared: Arc<Shared>,
    soak: Duration,
    report: ReportHook,
    stop: Arc<AtomicBool>,
) -> Option<std::thread::JoinHandle<()>> {
    let marks = shared.handover.as_ref()?.marks.clone()?;
    let interval = Duration::from_secs(baton_api::pairpod::SOAK_REPORT_INTERVAL_SECONDS);
    let spawned = std::thread::Builder::new()
        .name("baton-soak".into())
        .spawn(move || {
            for (at, last) in rate::soak_schedule(soak, interval) {
                if !sleep_until(marks.committed_at + at, &stop) {
                    return;
                }
                if shared.retired.load(Ordering::SeqCst) {
                    return;
                }
                let now = match rate::read(&shared.dp.maps) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "soak: reading the datapath counters");
                        continue;
                    }
                };
                let (syncs, sync_errors) = shared.sync_counts();
                let w = marks.window(&now, Instant::now(), syncs, sync_errors, last);
                tracing::info!(
                    after_ms = w.after_ms,
                    to_vip = w.after.to_vip(),
                    refused = w.after.refused(),
                    syncs,
                    sync_errors,
                    last,
                    "soak: datapath window"
                );
                *shared.window_lock() = Some(w);
                if let Some(f) = &shared.handover {
                    let mut f = f.clone();
                    f.window = Some(w);
                    report(Ok(&f));
                }
            }
        });
    match spawned {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "no soak reports");
            None
        }
    }
}
