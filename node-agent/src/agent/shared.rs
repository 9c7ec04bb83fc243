//! State shared by the agent's loop, the admin socket, the metrics endpoint
//! and the handover: the datapath, the programmer and what was synced.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use baton_ebpf::{ip_from_raw, Counter, LbPolicy, LAYOUT_VERSION};
use serde_json::{json, Value};

use crate::admin::{self, Request};
use crate::datapath::Datapath;
use crate::handover::successor::Figures;
use crate::metrics::{self, family, SyncStats};
use crate::model::{Capacity, DesiredState};
use crate::programmer::{Programmer, SyncReport, MISSING};
use crate::verify;

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
            "maps": self.dp.migration,
            "handover": self.handover,
            "source": self.source,
            "frozen": g.frozen,
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
                    "policy": LbPolicy::from_raw(s.value.lb_policy).map_or_else(|| "unknown".to_string(), |p| format!("{p:?}").to_lowercase()),
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
