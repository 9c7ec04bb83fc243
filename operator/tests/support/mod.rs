//! Helpers shared by the operator's integration tests.

#![allow(dead_code)] // each test binary uses a different subset

pub mod chart;

/// The real etcd + kube-apiserver harness, shared with the agent's tests.
#[allow(unused_imports)] // crd_files.rs needs no API server
pub use baton_e2e::apiserver;

use std::path::PathBuf;

/// The repository root (the workspace directory above `operator/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("operator/ has a parent")
        .to_path_buf()
}

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};

/// Field manager the tests apply with.
pub const MANAGER: &str = "baton-tests";

/// Applies `crds/kmeshupgrade.yaml` and waits until the CRD is Established.
pub async fn install_crd(client: &kube::Client) {
    let path = repo_root().join("crds/kmeshupgrade.yaml");
    let text = std::fs::read_to_string(&path).expect("reading crds/kmeshupgrade.yaml");
    let crd: CustomResourceDefinition = serde_yaml::from_str(&text).expect("parsing the CRD");
    apply_and_wait_established(client, &crd).await;
}

/// Server-side applies a CRD and waits until the API server serves it.
pub async fn apply_and_wait_established(client: &kube::Client, crd: &CustomResourceDefinition) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.metadata.name.clone().expect("CRD has a name");
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(crd),
    )
    .await
    .unwrap_or_else(|e| panic!("API server refused CRD {name}: {e}"));
    for _ in 0..200 {
        let current = api.get(&name).await.expect("reading the CRD back");
        let established = current
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("CRD {name} never became Established");
}
