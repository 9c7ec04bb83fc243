//! Helpers shared by the agent's Kubernetes tests: the chart's agent RBAC and
//! object creation on a real API server (`baton_e2e::apiserver`).

#![allow(dead_code)] // each test binary uses a different subset

use k8s_openapi::api::core::v1::Namespace;
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

/// Installs the chart's agent RBAC in `RELEASE_NAMESPACE` (created here).
pub async fn install_agent_rbac(client: &kube::Client) {
    namespaces(client, &[RELEASE_NAMESPACE]).await;
    baton_e2e::apiserver::install_agent_rbac(client, RELEASE_NAMESPACE).await;
}
