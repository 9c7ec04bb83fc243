//! State shared by the agent's loop, the admin socket, the metrics endpoint
//! and the handover: the datapath, the programmer and what was synced.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use baton_api::admin::{
    Dump, DumpPort, DumpService, MapsSummary, ProtocolRange, Response, Status, SyncFailure,
    SyncSummary, Takeover, Via,
};
use baton_ebpf::{ip_from_raw, Counter, LbPolicy, LAYOUT_VERSION};

use crate::admin::{self, Request};
use crate::datapath::{Datapath, MigrationSummary};
use crate::handover::msg::{MIN_PROTO, PROTO};
use crate::handover::successor::{self, Figures};
use crate::metrics::{self, family, SyncStats};
use crate::model::{Capacity, DesiredState};
use crate::programmer::{Programmer, SyncReport, MISSING};
use crate::rate::Sampler;
use crate::verify;
use baton_api::datapath::DatapathWindow;

/// The mutable part, behind one lock.
pub(super) struct Inner {
    pub(super) programmer: Programmer,
    pub(super) desired: Option<DesiredState>,
    pub(super) last: Option<SyncReport>,
    pub(super) source_error: Option<String>,
    pub(super) stats: SyncStats,
    /// A handover froze the control plane: syncs wait.
    pub(super) frozen: bool,
}

/// State shared by the loop, the admin socket and the metrics endpoint.
pub struct Shared {
    /// The datapath counters of the last 30 s (`status.datapath`).
    pub(super) rate: Mutex<Sampler>,
    /// What the datapath saw across this agent's handover, as last reported.
    pub(super) window: Mutex<Option<DatapathWindow>>,
    pub(super) dp: Datapath,
    pub(super) inner: Mutex<Inner>,
    pub(super) started: Instant,
    /// Duplicates of the listening sockets, offered to a successor.
    pub(super) listeners: Vec<(&'static str, OwnedFd)>,
    /// Where the source comes from.
    pub(super) source: String,
    /// How this agent got its datapath (a handover's figures).
    pub(super) handover: Option<Figures>,
    /// Set once a successor committed: never write again.
    pub(super) retired: AtomicBool,
    /// Stops every thread of the agent.
    pub(super) stop: Arc<AtomicBool>,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking holder must not take the agent down with a poisoned lock.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn rate_lock(&self) -> MutexGuard<'_, Sampler> {
        self.rate.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn window_lock(&self) -> MutexGuard<'_, Option<DatapathWindow>> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// (syncs run, of which failed or a source rejected) since this agent
    /// started, i.e. since its handover committed.
    pub(super) fn sync_counts(&self) -> (u64, u64) {
        let g = self.lock();
        (
            g.stats.attempts,
            g.stats.failed.saturating_add(g.stats.source_errors),
        )
    }

    pub(super) fn capacity(&self) -> Capacity {
        let m = &self.dp.maps;
        Capacity {
            frontends: m.frontend.max_entries(),
            services: m.service.max_entries(),
            endpoints: m.endpoint.max_entries(),
            backends: m.backend.max_entries(),
        }
    }

    pub(super) fn sync(&self, desired: Option<DesiredState>) {
        let mut g = self.lock();
        if let Some(d) = desired {
            g.desired = Some(d);
        }
        if g.frozen || self.retired.load(Ordering::SeqCst) {
            // Kept in `desired`: applied when a failed handover unfreezes.
            return;
        }
        // Taken out and put back rather than cloned: at 10 000 services a
        // clone per sync costs more than the sync itself.
        let Some(desired) = g.desired.take() else {
            return;
        };
        let res = g.programmer.sync(&self.dp.maps, &desired);
        g.desired = Some(desired);
        g.stats.attempts += 1;
        if !res.as_ref().is_ok_and(|r| r.ok()) {
            g.stats.failed += 1;
        }
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

    pub(super) fn needs_retry(&self) -> bool {
        let g = self.lock();
        g.last.as_ref().is_some_and(|r| !r.ok()) || g.programmer.is_dirty()
    }

    fn status(&self) -> Status {
        let datapath = self.rate_lock().rate();
        let window = *self.window_lock();
        let g = self.lock();
        let st = g.programmer.state();
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            layout_version: LAYOUT_VERSION,
            generation: self.dp.generation,
            pid: std::process::id(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            pin_dir: self.dp.pin_dir.display().to_string(),
            adopted_maps: self.dp.reused_maps,
            maps: maps_summary(&self.dp.migration),
            handover: self.handover.as_ref().map(|f| Takeover {
                datapath: window,
                ..takeover(f)
            }),
            source: self.source.clone(),
            frozen: g.frozen,
            services: st.services.len() as u64,
            endpoints: st.endpoint_count() as u64,
            backends: st.backends.len() as u64,
            source_error: g.source_error.clone(),
            last_sync: g.last.as_ref().map(sync_summary),
            syncs: g.stats.syncs,
            handover_protocol: Some(ProtocolRange {
                min: MIN_PROTO,
                max: PROTO,
            }),
            datapath,
        }
    }

    fn dump(&self) -> Dump {
        let g = self.lock();
        let st = g.programmer.state();
        let backend = |uid: &u32| match st.backend_by_uid.get(uid) {
            Some(bv) if *uid != MISSING => {
                let ip = ip_from_raw(&bv.addr);
                if bv.port() == 0 {
                    ip.to_string()
                } else {
                    std::net::SocketAddr::new(ip, bv.port()).to_string()
                }
            }
            _ => "<missing>".into(),
        };
        let services = st
            .services
            .iter()
            .map(|(name, s)| DumpService {
                name: name.clone(),
                id: s.id,
                vips: s
                    .vips
                    .iter()
                    .map(|v| ip_from_raw(&v.addr).to_string())
                    .collect(),
                ports: (0..baton_ebpf::MAX_PORTS)
                    .filter(|&i| s.value.service_port[i] != 0)
                    .map(|i| DumpPort {
                        port: s.value.service_port[i],
                        target_port: s.value.target_port[i],
                    })
                    .collect(),
                policy: LbPolicy::from_raw(s.value.lb_policy).map_or_else(
                    || "unknown".to_string(),
                    |p| format!("{p:?}").to_lowercase(),
                ),
                buckets: s
                    .buckets
                    .iter()
                    .map(|b| b.iter().map(backend).collect())
                    .collect(),
            })
            .collect();
        Dump { services }
    }

    fn verify(&self) -> Response {
        let g = self.lock();
        match self.dp.maps.snapshot() {
            Ok(snap) => Response::Verify(verify::check_against(
                &snap,
                &g.programmer.state().expected(),
            )),
            Err(e) => Response::error(e.to_string()),
        }
    }
}

impl admin::server::Handler for Shared {
    fn handle(&self, req: Request) -> Response {
        match req {
            Request::Status => Response::Status(Box::new(self.status())),
            Request::Dump => Response::Dump(self.dump()),
            Request::Verify => self.verify(),
        }
    }
}

/// The admin answer's view of what happened to the maps.
fn maps_summary(m: &MigrationSummary) -> MapsSummary {
    MapsSummary {
        reused: m.reused as u64,
        migrated: m.migrated as u64,
        recreated: m.recreated as u64,
        created: m.created as u64,
        entries_copied: m.entries_copied as u64,
        copy_us: m.copy_us,
    }
}

/// The admin answer's view of a takeover's figures.
fn takeover(f: &Figures) -> Takeover {
    Takeover {
        handover_us: f.handover_us,
        freeze_us: f.freeze_us,
        precopy_us: f.precopy_us,
        journal_keys: f.journal_keys,
        maps: maps_summary(&f.maps),
        self_committed: f.self_committed,
        from_version: f.from_version.clone(),
        from_layout: f.from_layout,
        via: match f.via {
            successor::Via::Handover => Via::Handover,
            successor::Via::Pins => Via::Pins,
        },
        datapath: f.window,
    }
}

/// The admin answer's view of a sync.
fn sync_summary(r: &SyncReport) -> SyncSummary {
    SyncSummary {
        created: r.created as u64,
        updated: r.updated as u64,
        removed: r.removed as u64,
        unchanged: r.unchanged as u64,
        failed: r
            .failed
            .iter()
            .map(|f| SyncFailure {
                service: f.service.clone(),
                error: f.error.clone(),
            })
            .collect(),
        writes: r.writes as u64,
        rolled_back: r.rolled_back as u64,
        resynced: r.resynced,
        duration_us: r.duration.as_micros() as u64,
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
