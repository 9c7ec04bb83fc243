//! Helpers shared by the agent's Kubernetes tests: the chart's agent RBAC and
//! object creation on a real API server (`baton_e2e::apiserver`).

#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use kube::api::{Api, PostParams};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

/// Namespace the chart is installed in (and the agent pods live in).
pub const RELEASE_NAMESPACE: &str = "baton-system";
/// The agent's service account as the API server names it.
pub const AGENT_USER: &str = "system:serviceaccount:baton-system:baton-agent";

/// Creates `value` as a namespaced `K` in `namespace`; returns what the API server stored.
pub async fn create<K>(client: &kube::Client, namespace: &str, value: Value) -> K
where
    K: kube::Resource<Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    post(Api::namespaced(client.clone(), namespace), value).await
}

/// Creates `value` as a cluster-scoped `K`.
pub async fn create_global<K>(client: &kube::Client, value: Value) -> K
where
    K: kube::Resource<Scope = ClusterResourceScope>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    post(Api::all(client.clone()), value).await
}

async fn post<K>(api: Api<K>, value: Value) -> K
where
    K: kube::Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(value).expect("test object parses");
    api.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("creating {obj:?}: {e}"))
}

/// Creates the namespaces.
pub async fn namespaces(client: &kube::Client, names: &[&str]) {
    for name in names {
        create_global::<Namespace>(client, json!({"metadata": {"name": name}})).await;
    }
}

/// Installs the agent's RBAC exactly as `charts/baton/templates/agent-rbac.yaml`
/// has it, in `RELEASE_NAMESPACE` (created here). The template uses only
/// `include` helpers and the release namespace; they are substituted as the
/// chart's defaults render them, so a change to the chart shows up here.
pub async fn install_agent_rbac(client: &kube::Client) {
    namespaces(client, &[RELEASE_NAMESPACE]).await;
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/baton/templates/agent-rbac.yaml");
    let template = std::fs::read_to_string(&path).expect("reading the chart's agent RBAC");
    let text: String = template
        .lines()
        .filter(|l| !l.trim_start().starts_with("{{-"))
        .map(|l| {
            l.replace("{{ include \"baton.agentName\" . }}", "baton-agent")
                .replace("{{ .Release.Namespace }}", RELEASE_NAMESPACE)
                + "\n"
        })
        .collect();
    assert!(
        !text.contains("{{"),
        "agent-rbac.yaml uses template syntax this test does not know:\n{text}"
    );
    let ns = RELEASE_NAMESPACE;
    for doc in text.split("\n---\n") {
        let value: Value = serde_yaml::from_str(doc).expect("agent RBAC document parses");
        match value["kind"].as_str() {
            Some("ServiceAccount") => drop(create::<ServiceAccount>(client, ns, value).await),
            Some("ClusterRole") => drop(create_global::<ClusterRole>(client, value).await),
            Some("ClusterRoleBinding") => {
                drop(create_global::<ClusterRoleBinding>(client, value).await)
            }
            Some("Role") => drop(create::<Role>(client, ns, value).await),
            Some("RoleBinding") => drop(create::<RoleBinding>(client, ns, value).await),
            other => panic!("unexpected kind {other:?} in agent-rbac.yaml"),
        }
    }
}
