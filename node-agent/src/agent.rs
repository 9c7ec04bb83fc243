//! The agent's main loop: bring up the datapath, adopt what is pinned, follow
//! the source, serve admin and metrics, shut down keeping or removing pins.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use baton_ebpf::{ip_from_raw, Counter, LbPolicy, LAYOUT_VERSION};
use serde_json::{json, Value};

use crate::admin::{self, Request};
use crate::datapath::{Datapath, DatapathConfig, DatapathError};
use crate::metrics::{self, family, SyncStats};
use crate::model::{Capacity, DesiredState};
use crate::programmer::{Programmer, SyncReport, MISSING};
use crate::source::FileSource;
use crate::verify;

/// Everything `baton-agent run` needs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Datapath placement.
    pub datapath: DatapathConfig,
    /// Services file.
    pub services_file: PathBuf,
    /// Directory for the admin socket.
    pub run_dir: PathBuf,
    /// Metrics listener address (None = no metrics).
    pub metrics_addr: Option<SocketAddr>,
    /// How often the source is polled.
    pub poll_interval: Duration,
    /// Leave pins (and so the datapath) in place on exit.
    pub keep_datapath: bool,
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
    /// Sockets and directories.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
}

struct Inner {
    programmer: Programmer,
    desired: Option<DesiredState>,
    last: Option<SyncReport>,
    source_error: Option<String>,
    stats: SyncStats,
}

/// State shared by the loop, the admin socket and the metrics endpoint.
pub struct Shared {
    dp: Datapath,
    inner: Mutex<Inner>,
    started: Instant,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking holder must not take the agent down with a poisoned lock.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn capacity(&self) -> Capacity {
        let m = &self.dp.maps;
        Capacity {
            frontends: m.frontend.max_entries(),
            services: m.service.max_entries(),
            endpoints: m.endpoint.max_entries(),
            backends: m.backend.max_entries(),
        }
    }

    fn sync(&self, desired: Option<DesiredState>) {
        let mut g = self.lock();
        if let Some(d) = desired {
            g.desired = Some(d);
        }
        // Taken out and put back rather than cloned: at 10 000 services a
        // clone per sync costs more than the sync itself.
        let Some(desired) = g.desired.take() else {
            return;
        };
        let res = g.programmer.sync(&self.dp.maps, &desired);
        g.desired = Some(desired);
        match res {
            Ok(r) => {
                g.stats.syncs += 1;
                g.stats.duration_sum += r.duration.as_secs_f64();
                g.stats.last_duration = r.duration.as_secs_f64();
                g.stats.service_failures += r.failed.len() as u64;
                g.stats.rolled_back += r.rolled_back as u64;
                g.stats.writes += r.writes as u64;
                if r.ok() {
                    tracing::info!(
                        created = r.created,
                        updated = r.updated,
                        removed = r.removed,
                        writes = r.writes,
                        micros = r.duration.as_micros() as u64,
                        "synced"
                    );
                } else {
                    for f in &r.failed {
                        tracing::error!(service = %f.service, error = %f.error, "service not programmed; rolled back, will retry");
                    }
                }
                g.last = Some(r);
            }
            Err(e) => tracing::error!(error = %e, "sync failed"),
        }
    }

    fn needs_retry(&self) -> bool {
        let g = self.lock();
        g.last.as_ref().is_some_and(|r| !r.ok()) || g.programmer.is_dirty()
    }

    fn status(&self) -> Value {
        let g = self.lock();
        let st = g.programmer.state();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "layout_version": LAYOUT_VERSION,
            "generation": self.dp.generation,
            "pid": std::process::id(),
            "uptime_seconds": self.started.elapsed().as_secs_f64(),
            "pin_dir": self.dp.pin_dir,
            "adopted_maps": self.dp.reused_maps,
            "services": st.services.len(),
            "endpoints": st.endpoint_count(),
            "backends": st.backends.len(),
            "source_error": g.source_error,
            "last_sync": g.last,
            "syncs": g.stats.syncs,
        })
    }

    fn dump(&self) -> Value {
        let g = self.lock();
        let st = g.programmer.state();
        let services: Vec<Value> = st
            .services
            .iter()
            .map(|(name, s)| {
                let ports: Vec<Value> = (0..baton_ebpf::MAX_PORTS)
                    .filter(|&i| s.value.service_port[i] != 0)
                    .map(|i| json!({"port": s.value.service_port[i], "target_port": s.value.target_port[i]}))
                    .collect();
                let buckets: Vec<Vec<String>> = s
                    .buckets
                    .iter()
                    .map(|b| {
                        b.iter()
                            .map(|uid| match st.backend_by_uid.get(uid) {
                                Some(bv) if *uid != MISSING => {
                                    let ip = ip_from_raw(&bv.addr);
                                    if bv.port() == 0 { ip.to_string() } else { std::net::SocketAddr::new(ip, bv.port()).to_string() }
                                }
                                _ => "<missing>".into(),
                            })
                            .collect()
                    })
                    .collect();
                json!({
                    "name": name,
                    "id": s.id,
                    "vips": s.vips.iter().map(|v| ip_from_raw(&v.addr).to_string()).collect::<Vec<_>>(),
                    "ports": ports,
                    "policy": format!("{:?}", LbPolicy::from_raw(s.value.lb_policy)).to_lowercase(),
                    "buckets": buckets,
                })
            })
            .collect();
        json!({ "services": services })
    }

    fn verify(&self) -> Value {
        let g = self.lock();
        match self.dp.maps.snapshot() {
            Ok(snap) => serde_json::to_value(verify::check_against(
                &snap,
                &g.programmer.state().expected(),
            ))
            .unwrap_or_else(|e| json!({"error": e.to_string()})),
            Err(e) => json!({"error": e.to_string()}),
        }
    }
}

impl admin::server::Handler for Shared {
    fn handle(&self, req: Request) -> Value {
        match req {
            Request::Status => self.status(),
            Request::Dump => self.dump(),
            Request::Verify => self.verify(),
        }
    }
}

impl metrics::Render for Shared {
    fn render(&self) -> String {
        let mut out = String::new();
        let maps = &self.dp.maps;
        let samples: Vec<(String, f64)> = Counter::ALL
            .iter()
            .filter_map(|(c, label)| {
                maps.counter(*c)
                    .ok()
                    .map(|v| (format!("result=\"{label}\""), v as f64))
            })
            .collect();
        family(
            &mut out,
            "baton_datapath_connects_total",
            "counter",
            "TCP connects seen by the connect hooks, by outcome.",
            &samples,
        );
        if let Ok(counts) = maps.entry_counts() {
            let entries: Vec<_> = counts
                .iter()
                .map(|(m, n)| (format!("map=\"{m}\""), *n as f64))
                .collect();
            family(
                &mut out,
                "baton_map_entries",
                "gauge",
                "Entries in each datapath map.",
                &entries,
            );
        }
        let caps: Vec<_> = maps
            .all()
            .iter()
            .map(|m| (format!("map=\"{}\"", m.name()), f64::from(m.max_entries())))
            .collect();
        family(
            &mut out,
            "baton_map_capacity",
            "gauge",
            "max_entries of each datapath map.",
            &caps,
        );
        let g = self.lock();
        let s = &g.stats;
        family(
            &mut out,
            "baton_sync_total",
            "counter",
            "Syncs of the maps to the source.",
            &[(String::new(), s.syncs as f64)],
        );
        family(
            &mut out,
            "baton_sync_duration_seconds_sum",
            "counter",
            "Total time spent syncing.",
            &[(String::new(), s.duration_sum)],
        );
        family(
            &mut out,
            "baton_sync_last_duration_seconds",
            "gauge",
            "Duration of the last sync.",
            &[(String::new(), s.last_duration)],
        );
        family(
            &mut out,
            "baton_sync_service_failures_total",
            "counter",
            "Service transactions rolled back.",
            &[(String::new(), s.service_failures as f64)],
        );
        family(
            &mut out,
            "baton_sync_rolled_back_writes_total",
            "counter",
            "Map writes undone by rollbacks.",
            &[(String::new(), s.rolled_back as f64)],
        );
        family(
            &mut out,
            "baton_map_writes_total",
            "counter",
            "Map writes kept.",
            &[(String::new(), s.writes as f64)],
        );
        family(
            &mut out,
            "baton_source_errors_total",
            "counter",
            "Source contents rejected.",
            &[(String::new(), s.source_errors as f64)],
        );
        let st = g.programmer.state();
        family(
            &mut out,
            "baton_services",
            "gauge",
            "Services programmed.",
            &[(String::new(), st.services.len() as f64)],
        );
        family(
            &mut out,
            "baton_endpoints",
            "gauge",
            "Endpoint slots programmed.",
            &[(String::new(), st.endpoint_count() as f64)],
        );
        family(
            &mut out,
            "baton_generation",
            "gauge",
            "Agent generation recorded in the meta map.",
            &[(String::new(), self.dp.generation as f64)],
        );
        out
    }
}

/// Path of the admin socket in a run directory.
pub fn admin_socket(run_dir: &std::path::Path) -> PathBuf {
    run_dir.join("admin.sock")
}

/// Runs the agent until `stop` is set.
pub fn run(cfg: &AgentConfig, stop: Arc<AtomicBool>) -> Result<(), AgentError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |source| AgentError::Io { what, source }
    };
    std::fs::create_dir_all(&cfg.run_dir).map_err(io("create run dir"))?;
    let dp = Datapath::start(&cfg.datapath)?;
    tracing::info!(pin_dir = %dp.pin_dir.display(), cgroup = %cfg.datapath.cgroup.display(), reused = dp.reused_maps,
        generation = dp.generation, "datapath attached");
    let programmer = if dp.reused_maps {
        Programmer::adopt(&dp.maps)?
    } else {
        Programmer::new()
    };
    let shared = Arc::new(Shared {
        dp,
        inner: Mutex::new(Inner {
            programmer,
            desired: None,
            last: None,
            source_error: None,
            stats: SyncStats::default(),
        }),
        started: Instant::now(),
    });

    let admin_path = admin_socket(&cfg.run_dir);
    let admin = admin::server::serve(
        admin::server::bind(&admin_path).map_err(io("bind admin socket"))?,
        shared.clone(),
        stop.clone(),
    );
    let metrics = match cfg.metrics_addr {
        Some(addr) => {
            let l = TcpListener::bind(addr).map_err(io("bind metrics listener"))?;
            tracing::info!(addr = %l.local_addr().map_err(io("metrics addr"))?, "metrics listening");
            Some(metrics::serve(l, shared.clone(), stop.clone()))
        }
        None => None,
    };

    let mut source = FileSource::new(cfg.services_file.clone());
    let cap = shared.capacity();
    while !stop.load(Ordering::Relaxed) {
        match source.poll(&cap) {
            Some(Ok(desired)) => {
                shared.lock().source_error = None;
                shared.sync(Some(desired));
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "services file rejected; previous state keeps serving");
                let mut g = shared.lock();
                g.source_error = Some(e.to_string());
                g.stats.source_errors += 1;
            }
            None if shared.needs_retry() => shared.sync(None),
            None => {}
        }
        std::thread::sleep(cfg.poll_interval);
    }

    let _ = admin.join();
    if let Some(m) = metrics {
        let _ = m.join();
    }
    let _ = std::fs::remove_file(&admin_path);
    let shared = Arc::try_unwrap(shared).map_err(|_| AgentError::Io {
        what: "shutdown".into(),
        source: std::io::Error::other("agent state still shared"),
    })?;
    if cfg.keep_datapath {
        tracing::info!("exiting; datapath stays pinned and attached");
    } else {
        shared.dp.teardown()?;
        tracing::info!("datapath detached and unpinned");
    }
    Ok(())
}
