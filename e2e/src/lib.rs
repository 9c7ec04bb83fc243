//! Baton end-to-end traffic tooling: the `baton-probe` binary and the library behind it.
//!
//! The datapath under test is a `cgroup/connect4` + `cgroup/connect6` BPF
//! program attached to a test cgroup; it rewrites `connect()` to a service
//! VIP:port into a backend addr:port. To exercise it with real TCP, a probe
//! process joins that cgroup, starts backends on loopback addresses
//! (`127.0.0.10:8080`, `[::1]:9001`, ...) and connects to VIPs.
//!
//! # Safety model
//!
//! Test traffic must never leave the machine, even when the datapath is
//! broken and a VIP is *not* rewritten. The probe therefore:
//!
//! 1. **joins the test cgroup first** ([`kit::sandbox::enter`] writes its pid to
//!    `<cgroup>/cgroup.procs`; the caller creates and removes the directory),
//!    so its connects are seen by the BPF program attached there and by
//!    nothing else on the host;
//! 2. **unshares a private network namespace** (`CLONE_NEWNET`) before any
//!    thread exists (it refuses to run multi-threaded, since unshare only
//!    moves the calling thread) and brings only `lo` up via `SIOCSIFFLAGS`.
//!    The namespace has no routes except loopback, so a connect to an
//!    un-rewritten VIP fails locally with `ENETUNREACH` (reported as
//!    `unreachable`), and a rewrite to an address without a listener fails
//!    with `ECONNREFUSED` (`refused`); nothing is ever sent on a real NIC.
//!    [`kit::sandbox::check_isolated`] verifies that no other interface is up;
//! 3. cgroup connect hooks are netns-agnostic, so the BPF program still
//!    rewrites the probe's connects inside the private namespace, and the
//!    rewritten backend addresses are the probe's own loopback listeners.
//!
//! Per-netns tuning (wider ephemeral port range, larger `somaxconn`) is only
//! applied inside that private namespace. `--no-netns` turns the namespace off
//! for ad-hoc use and gives up guarantee 2.
//!
//! # Using it
//!
//! * Tests (in any crate) drive `baton-probe`, `baton-agent`,
//!   `baton-operator` and the shim as child processes in sandboxes with the
//!   test kit, [`kit`]. A test process must never call
//!   [`kit::sandbox::enter`] itself.
//! * Benchmarks that run in-process (already inside a prepared cgroup/netns)
//!   call [`client::connect_once`] or [`client::run_load`] directly.
//! * The JSON report is [`report::Report`].
//! * Kubernetes tests (agent and operator) start a real etcd + kube-apiserver
//!   with `apiserver::ApiServer` (feature `apiserver`), and play the kubelet
//!   for fake nodes with [`shim`] / the `baton-node-shim` binary (feature
//!   `shim`, on by default).
//! * Real-node scenarios (a real kubelet + containerd, `e2e/node/rig.sh`) run
//!   inside the rig and drive it with `node` (feature `real-node`).
//! * Hot-upgrade measurements (`baton-bench --only handover`) drive
//!   `baton-agent` processes with [`kit`] and time their own connect stream
//!   (`e2e/src/bin/baton-bench/handover/traffic.rs`).

// Test support: its harnesses (API server, rig, shim launchers) panic with
// context by design, like the tests that call them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(feature = "apiserver")]
pub mod apiserver;
pub mod backend;
pub mod client;
pub mod histogram;
pub mod hold;
pub mod kit;
#[cfg(feature = "real-node")]
pub mod node;
pub mod probe;
pub mod report;
#[cfg(feature = "shim")]
pub mod shim;

pub use client::{connect_once, ConnectError};
pub use report::Report;
