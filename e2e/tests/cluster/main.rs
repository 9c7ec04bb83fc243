//! Kubernetes on a real kube-apiserver with the emulated kubelet
//! (`baton-node-shim`): the shim itself (`shim`), and the cluster scenarios
//! with the real operator and the real agents on the real datapath
//! (`upgrade`, `failure`, on the `fleet` of fake nodes). One test binary,
//! one link.
//!
//! Needs root (cgroups, bpffs, BPF), `e2e/cluster/k8s-bins.sh` (or
//! `BATON_SKIP_APISERVER=1`) and the binaries (`cargo xtask build`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics

mod failure;
mod fleet;
mod shim;
mod upgrade;
