//! `baton-agent`: run the node agent, or query / verify / tear down a running datapath.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use baton_agent::admin::offline::{self, AnsweredBy};
use baton_agent::admin::{client, Request};
use baton_agent::agent::{self, admin_socket, AgentConfig, Exit, Hooks};
use baton_agent::cluster::{standby, ClusterClient, Owner, Role, SlotInfo};
use baton_agent::datapath::{self, DatapathConfig};
use baton_agent::handover::incumbent::Timeouts;
use baton_agent::handover::successor::Figures;
use baton_agent::preflight::{self, PreflightConfig};
use baton_agent::source::kube::{KubeOptions, KubeSource, Locality};
use baton_agent::source::{FileSource, Source};
use baton_agent::sys;
use baton_api::admin::{Answer, Verify};
use baton_api::pairpod::{
    HandoverOutcome, HandoverReport, DEFAULT_RUN_DIR, ENV_CGROUP, ENV_NODE_NAME, ENV_RUN_DIR,
    ENV_SLOT, ENV_SOAK_SECONDS,
};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "baton-agent",
    version,
    about = "Baton node agent: connect-time service load balancing in eBPF"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Paths {
    /// Directory on a bpffs where maps and links are pinned.
    #[arg(long, env = "BATON_BPFFS", default_value = "/sys/fs/bpf/baton")]
    bpffs: PathBuf,
    /// Directory for the admin socket.
    #[arg(long, env = ENV_RUN_DIR, default_value = DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent.
    Run {
        #[command(flatten)]
        paths: Paths,
        /// Services file (YAML), watched for changes (the `file` source).
        #[arg(long, env = "BATON_SERVICES")]
        services: Option<PathBuf>,
        /// Largest services file accepted, in bytes (a larger one is rejected).
        #[arg(long, default_value_t = baton_agent::source::file::DEFAULT_MAX_BYTES)]
        max_services_bytes: u64,
        /// Where services come from: `file` (--services) or `kubernetes`
        /// (Services + EndpointSlices; in-cluster config or KUBECONFIG).
        /// `auto`: the file when --services is given, else kubernetes in a
        /// pair pod (BATON_SLOT set).
        #[arg(long, env = "BATON_SOURCE", default_value = "auto")]
        source: String,
        /// With `--source kubernetes`: watch one namespace only.
        #[arg(long, env = "BATON_KUBE_NAMESPACE")]
        kube_namespace: Option<String>,
        /// cgroup v2 directory to attach to (default: the host's cgroup2 mount).
        #[arg(long, env = ENV_CGROUP)]
        cgroup: Option<PathBuf>,
        /// Mount a bpffs at --bpffs if it is not on one.
        #[arg(long)]
        mount_bpffs: bool,
        /// Prometheus listener.
        #[arg(long, env = "BATON_METRICS_ADDR", default_value = "127.0.0.1:9095")]
        metrics_addr: String,
        /// Disable the metrics listener.
        #[arg(long)]
        no_metrics: bool,
        /// Leave the datapath pinned and attached on exit (for restarts).
        /// Always on in a pair pod (BATON_SLOT set): a pod restart must not
        /// detach the node's datapath.
        #[arg(long, env = "BATON_KEEP_DATAPATH")]
        keep_datapath: bool,
        /// Source poll interval in milliseconds.
        #[arg(long, default_value_t = 200)]
        poll_ms: u64,
        /// Override a map's max_entries, e.g. `endpoint=4096` (repeatable).
        #[arg(long = "map-max-entries", value_parser = parse_kv)]
        map_max_entries: Vec<(String, u32)>,
        /// Longest wait for any handover message, in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        handover_timeout_ms: u64,
        /// Longest time a handing-over agent stays frozen waiting for the commit.
        #[arg(long, default_value_t = 2_000)]
        freeze_timeout_ms: u64,
        /// Do not try to take over from an agent on the handover socket.
        #[arg(long)]
        no_take_over: bool,
        /// After a committed handover, keep its report's datapath window up
        /// to date for this many seconds (the canary's soak; the pod
        /// condition in a pair pod, `status.handover.datapath` anywhere).
        /// Empty or 0: report once.
        #[arg(long, env = ENV_SOAK_SECONDS, default_value = "0", value_parser = parse_seconds)]
        soak_seconds: u64,
    },
    /// Read, parse and validate a services file exactly as `run` would, then
    /// exit: 0 when it would be applied, 1 (with the errors) when not.
    Check {
        /// The services file.
        #[arg(long)]
        services: PathBuf,
        /// Largest services file accepted, in bytes.
        #[arg(long, default_value_t = baton_agent::source::file::DEFAULT_MAX_BYTES)]
        max_services_bytes: u64,
    },
    /// Print the running agent's status (JSON).
    Status {
        #[command(flatten)]
        paths: Paths,
    },
    /// Print the programmed services (JSON).
    Dump {
        #[command(flatten)]
        paths: Paths,
    },
    /// Check map invariants; exit 1 on any violation. Uses the agent when it runs, else the pins.
    Verify {
        #[command(flatten)]
        paths: Paths,
    },
    /// Detach the datapath and remove every pin.
    Teardown {
        #[command(flatten)]
        paths: Paths,
    },
    /// Check this build against this node's kernel and live state before a
    /// handover, changing nothing: programs through the verifier, the
    /// migration plan of the live pins with an estimated copy time, the
    /// pinned links, the running agent's handover protocol. Exit 0: ready;
    /// 1: a check failed (the summary or the JSON report says why); 2:
    /// preflight could not run.
    Preflight {
        #[command(flatten)]
        paths: Paths,
        /// cgroup v2 directory the datapath attaches to (default: the host's cgroup2 mount).
        #[arg(long, env = ENV_CGROUP)]
        cgroup: Option<PathBuf>,
        /// `run` would mount a bpffs at --bpffs if it is not on one.
        #[arg(long)]
        mount_bpffs: bool,
        /// max_entries overrides as `run` would get them, e.g. `endpoint=4096` (repeatable).
        #[arg(long = "map-max-entries", value_parser = parse_kv)]
        map_max_entries: Vec<(String, u32)>,
        /// Print the report as one line of JSON (baton_api::preflight::Report) instead of a summary.
        #[arg(long)]
        json: bool,
        /// Also write the report's compact summary (baton_api::preflight::Summary,
        /// one JSON line of at most 4096 bytes) to this file, e.g.
        /// /dev/termination-log in a pod; when preflight cannot run (exit 2),
        /// a one-line reason instead.
        #[arg(long)]
        summary_file: Option<PathBuf>,
    },
}

/// Whole seconds; empty is 0 (the downward API gives "" for an absent annotation).
fn parse_seconds(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(0);
    }
    s.parse().map_err(|e| format!("{s:?}: {e}"))
}

fn parse_kv(s: &str) -> Result<(String, u32), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=N, got {s:?}"))?;
    if baton_ebpf::map_spec(k).is_none() {
        return Err(format!("unknown map {k:?}"));
    }
    Ok((k.to_string(), v.parse().map_err(|e| format!("{v:?}: {e}"))?))
}

/// A retired slot (after its handover, or restarted by the kubelet): never
/// touch the datapath; wait as the slot's warm standby (docs/operator.md).
fn standby(me: &SlotInfo) -> Result<ExitCode> {
    standby::enter(me).context("standby")?;
    Ok(ExitCode::SUCCESS)
}

/// On SIGTERM: remove the datapath only if the pod's KmeshUpgrade is deleted
/// or being deleted (uninstall). Any other answer, an API error included,
/// keeps it: a restart or an upgrade must not detach the node's datapath.
fn owner_gone(cc: &ClusterClient, me: &SlotInfo) -> bool {
    match cc.owner(me) {
        Ok(Owner::Gone(why)) => {
            tracing::info!(%why, "owner gone: removing the datapath");
            true
        }
        Ok(owner) => {
            tracing::info!(?owner, "owner alive: the datapath stays");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the owner: the datapath stays");
            false
        }
    }
}

/// The successor's reports: the first (the handover's) is stamped now and
/// writes the Started condition too; during a soak the later ones rewrite
/// only the Handover condition, stamped with the first one's time (the
/// commit's). A first write that failed is retried whole by the next.
fn reporter(cc: Arc<ClusterClient>, me: SlotInfo) -> impl Fn(Result<&Figures, &str>) + Send {
    // (the commit's time, whether the full report was written)
    let state = std::sync::Mutex::new((None, false));
    move |r| {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        let (at, written) = &mut *st;
        match r {
            Ok(f) if *written => {
                let t = at
                    .clone()
                    .unwrap_or_else(baton_agent::cluster::condition::now_in_seconds);
                if let Err(e) = cc.report_soak(&me, &handover_report(&me, f), t) {
                    tracing::warn!(error = %e, "could not rewrite the handover condition");
                }
            }
            Ok(_) => {
                let t = at
                    .get_or_insert_with(baton_agent::cluster::condition::now_in_seconds)
                    .clone();
                *written = report(&cc, &me, r, t);
            }
            Err(_) => {
                report(
                    &cc,
                    &me,
                    r,
                    baton_agent::cluster::condition::now_in_seconds(),
                );
            }
        }
    }
}

/// The Committed report of `f`.
fn handover_report(me: &SlotInfo, f: &Figures) -> HandoverReport {
    HandoverReport {
        slot: me.slot,
        version: me.version.clone(),
        duration_ms: f.handover_us.div_ceil(1000),
        freeze_ms: f.freeze_us.div_ceil(1000),
        maps_reused: f.maps.reused as u32,
        maps_migrated: f.maps.migrated as u32,
        entries_copied: f.maps.entries_copied as u64,
        message: if f.from_version.is_empty() {
            "no running agent answered; took the datapath over from the pins".into()
        } else {
            format!(
                "took over from {} (layout {})",
                f.from_version, f.from_layout
            )
        },
        datapath: f.window,
    }
}

/// Writes the pod condition the operator waits for, stamped `at`; `false`
/// when the API server did not take it.
fn report(
    cc: &ClusterClient,
    me: &SlotInfo,
    r: Result<&Figures, &str>,
    at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> bool {
    let (outcome, rep) = match r {
        Ok(f) => (HandoverOutcome::Committed, handover_report(me, f)),
        Err(why) => (
            HandoverOutcome::Failed,
            HandoverReport {
                slot: me.slot,
                version: me.version.clone(),
                duration_ms: 0,
                freeze_ms: 0,
                maps_reused: 0,
                maps_migrated: 0,
                entries_copied: 0,
                message: why.to_string(),
                datapath: None,
            },
        ),
    };
    match cc.report_handover_at(me, outcome, &rep, at) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "could not write the handover condition");
            false
        }
    }
}

/// Says on stderr that the pins answered, not an agent.
fn say_pins(by: &AnsweredBy, paths: &Paths) {
    if let AnsweredBy::Pins(why) = by {
        eprintln!(
            "baton-agent: no agent answers ({why}); read the pins under {}",
            paths.bpffs.display()
        );
    }
}

fn print(v: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `baton-agent preflight`: runs the checks, prints the report (human or
/// `--json`), then writes its summary to `summary_file`. An error here is
/// the exit-2 path (the caller writes the reason to `summary_file`).
fn preflight_cmd(
    cfg: &PreflightConfig,
    json: bool,
    summary_file: Option<&std::path::Path>,
) -> Result<ExitCode> {
    let report = preflight::run(cfg);
    let text = if json {
        // One line: in a pod's log (stdout and stderr merged) the report is
        // the line that starts with `{"report_version"`.
        serde_json::to_string(&report)? + "\n"
    } else {
        preflight::render::human(&report)
    };
    // Not print!: a closed stdout is an error to report, not a panic.
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing the report")?;
    if let Some(path) = summary_file {
        // The kubelet keeps a container's termination message (at most 4096
        // bytes, which the summary fits): the operator's preflight reads it.
        let summary = report
            .summary()
            .to_bounded_json()
            .context("encoding the summary")?;
        std::fs::write(path, summary)
            .with_context(|| format!("writing the summary to {}", path.display()))?;
    }
    Ok(ExitCode::from(report.exit_code()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Preflight's own steps (a sample copy, a map it decides to migrate)
    // would log as if the datapath changed: only warnings, unless asked.
    let default_level = match cli.cmd {
        Cmd::Preflight { .. } => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_level.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("baton-agent: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Run {
            paths,
            services,
            max_services_bytes,
            source,
            kube_namespace,
            cgroup,
            mount_bpffs,
            metrics_addr,
            no_metrics,
            keep_datapath,
            poll_ms,
            map_max_entries,
            handover_timeout_ms,
            freeze_timeout_ms,
            no_take_over,
            soak_seconds,
        } => {
            if std::env::var_os(standby::ENV_STANDBY).is_some() {
                let me = SlotInfo::from_env().context("reading the slot (standby)")?;
                standby::run(&me).context("standby")?;
                return Ok(ExitCode::SUCCESS);
            }
            let cgroup = match cgroup.or_else(sys::find_cgroup2_mount) {
                Some(c) => c,
                None => bail!("no cgroup v2 mount found; pass --cgroup"),
            };
            let metrics_addr = if no_metrics {
                None
            } else {
                Some(
                    metrics_addr
                        .parse::<SocketAddr>()
                        .with_context(|| format!("--metrics-addr {metrics_addr}"))?,
                )
            };
            let cfg = AgentConfig {
                datapath: DatapathConfig {
                    pin_dir: paths.bpffs,
                    cgroup,
                    mount_bpffs,
                    max_entries: map_max_entries.into_iter().collect::<BTreeMap<_, _>>(),
                },
                run_dir: paths.run_dir,
                metrics_addr,
                poll_interval: Duration::from_millis(poll_ms.max(10)),
                keep_datapath,
                handover: Timeouts {
                    step: Duration::from_millis(handover_timeout_ms.max(1)),
                    freeze: Duration::from_millis(freeze_timeout_ms.max(1)),
                    ..Timeouts::default()
                },
                take_over: !no_take_over,
                soak: Duration::from_secs(soak_seconds),
            };
            // In a pair pod (BATON_SLOT set) the slot's role decides what to do.
            let slot = match std::env::var_os(ENV_SLOT) {
                Some(_) => {
                    Some(SlotInfo::from_env().context("reading the slot from the downward API")?)
                }
                None => None,
            };
            let cluster = match &slot {
                Some(_) => {
                    Some(ClusterClient::connect(None).context("connecting to the API server")?)
                }
                None => None,
            };
            let in_pod = slot.is_some();
            let mut cfg = cfg;
            cfg.keep_datapath |= in_pod;
            let mut hooks = Hooks::default();
            let retired_slot = slot.clone();
            if let (Some(me), Some(cc)) = (slot, cluster) {
                let role = cc.role(&me).context("reading this pod's slot role")?;
                tracing::info!(slot = ?me.slot, version = %me.version, ?role, "pair pod slot");
                let cc = Arc::new(cc);
                match role {
                    Role::Retired => return standby(&me),
                    Role::Active => {
                        // The operator counts the node ready only once the
                        // agent says it owns the datapath.
                        let (cc, me) = (cc.clone(), me.clone());
                        hooks.on_takeover = Some(Box::new(move |r| {
                            if r.is_ok() {
                                if let Err(e) = cc.report_started(&me) {
                                    tracing::error!(error = %e, "could not write the start condition");
                                }
                            }
                        }));
                    }
                    Role::Successor => {
                        hooks.on_takeover = Some(Box::new(reporter(cc.clone(), me.clone())));
                    }
                }
                hooks.teardown_on_stop = Some(Box::new(move || owner_gone(&cc, &me)));
            }
            let source = match (source.as_str(), &services) {
                ("auto", Some(_)) => "file",
                ("auto", None) if std::env::var_os(ENV_SLOT).is_some() => "kubernetes",
                ("auto", None) => bail!("no source: pass --services FILE or --source kubernetes"),
                (s, _) => s,
            };
            let source: Box<dyn Source> = match source {
                "file" => Box::new(
                    FileSource::new(services.context("--source file needs --services FILE")?)
                        .with_max_bytes(max_services_bytes),
                ),
                "kubernetes" | "kube" => Box::new(
                    KubeSource::start(KubeOptions {
                        namespace: kube_namespace,
                        locality: Locality {
                            node: std::env::var(ENV_NODE_NAME).ok(),
                            zone: None,
                        },
                        ..KubeOptions::default()
                    })
                    .context("starting the Kubernetes source")?,
                ),
                other => bail!("--source {other}: expected file or kubernetes"),
            };
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(sig, stop.clone())
                    .context("installing signal handlers")?;
            }
            match agent::run(&cfg, source, hooks, stop)? {
                Exit::Stopped => {}
                // In a pair pod, exiting would let the kubelet restart this
                // agent before the successor's report is visible, and it would
                // read itself as active: stay idle until the operator parks
                // this container on the empty image.
                Exit::Retired if in_pod => {
                    if let Some(me) = &retired_slot {
                        return standby(me);
                    }
                }
                Exit::Retired => eprintln!("baton-agent: handed over to a successor; exiting"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { paths } => {
            let (v, by) = offline::status(&admin_socket(&paths.run_dir), &paths.bpffs)?;
            say_pins(&by, &paths);
            print(&v)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check {
            services,
            max_services_bytes,
        } => {
            let cap = baton_agent::model::Capacity::default();
            match baton_agent::source::file::load(&services, max_services_bytes, &cap) {
                Ok(state) => {
                    let endpoints: usize = state.services.iter().map(|s| s.endpoints.len()).sum();
                    println!(
                        "{}: ok: {} services, {endpoints} endpoints",
                        services.display(),
                        state.services.len()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!("{e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Cmd::Dump { paths } => {
            print(&client::request(
                &admin_socket(&paths.run_dir),
                Request::Dump,
            )?)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify { paths } => {
            // A SIGKILLed agent leaves its admin.sock behind: refused,
            // missing or silent all fall back to the pins.
            let (report, by) = offline::verify(&admin_socket(&paths.run_dir), &paths.bpffs)?;
            say_pins(&by, &paths);
            print(&report)?;
            // Printed as it came (the agent may be of another version);
            // read as the typed answer to decide the exit code.
            let clean = match serde_json::from_value::<Answer<Verify>>(report)
                .context("verify: unreadable answer")?
            {
                Answer::Ok(v) => v.is_clean(),
                Answer::Error(e) => bail!("verify: {}", e.error),
            };
            Ok(if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Teardown { paths } => {
            datapath::remove_pins(&paths.bpffs)?;
            eprintln!("removed pins under {}", paths.bpffs.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Preflight {
            paths,
            cgroup,
            mount_bpffs,
            map_max_entries,
            json,
            summary_file,
        } => {
            let cfg = PreflightConfig {
                pin_dir: paths.bpffs,
                run_dir: paths.run_dir,
                cgroup: cgroup.or_else(sys::find_cgroup2_mount),
                mount_bpffs,
                max_entries: map_max_entries.into_iter().collect(),
            };
            let res = preflight_cmd(&cfg, json, summary_file.as_deref());
            if let (Err(e), Some(path)) = (&res, &summary_file) {
                // Exit 2: no report. The operator shows this line instead.
                let line = format!("baton-agent preflight could not run: {e:#}").replace('\n', " ");
                if let Err(w) = std::fs::write(path, line) {
                    eprintln!("baton-agent: writing {}: {w}", path.display());
                }
            }
            res
        }
    }
}
