//! Kubernetes objects for tests on the real API server
//! ([`crate::apiserver::ApiServer`]): namespaces, service accounts, the CRD
//! and `KmeshUpgrade` objects, and reading pods (the agent pair pod through
//! `baton_api::pairpod`) as the node shim reports them.

use std::path::Path;
use std::time::Duration;

use baton_api::pairpod::{
    self, Slot, ANN_ACTIVE_SLOT, APP_NAME, LABEL_APP_NAME, UPGRADE_GROUP, UPGRADE_KIND,
    UPGRADE_PLURAL, UPGRADE_VERSION,
};
use k8s_openapi::api::core::v1::{ContainerStatus, Namespace, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use serde_json::{json, Value};

use super::bins::workspace_root;
use super::error::{Error, Result};
use super::wait::eventually;
use crate::shim::standin::record_file;

/// Field manager of the tests' writes.
pub const MANAGER: &str = "baton-e2e-tests";

fn object<T: serde::de::DeserializeOwned>(what: &str, v: Value) -> Result<T> {
    serde_json::from_value(v).map_err(|source| Error::Json {
        what: what.to_owned(),
        source,
    })
}

/// Creates namespace `ns` and its `default` service account (no
/// kube-controller-manager here to create it, and pods need one).
pub async fn create_namespace(client: &kube::Client, ns: &str) -> Result<()> {
    let namespace: Namespace = object("a Namespace", json!({"metadata": {"name": ns}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .map_err(|e| Error::kube(format!("creating namespace {ns}"), e))?;
    create_service_account(client, ns, "default").await
}

/// Creates service account `name` in `ns`.
pub async fn create_service_account(client: &kube::Client, ns: &str, name: &str) -> Result<()> {
    let sa: ServiceAccount = object("a ServiceAccount", json!({"metadata": {"name": name}}))?;
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
        .map_err(|e| Error::kube(format!("creating service account {ns}/{name}"), e))?;
    Ok(())
}

/// Applies `crds/kmeshupgrade.yaml` and waits until it is Established.
pub async fn install_crd(client: &kube::Client) -> Result<()> {
    let path = workspace_root().join("crds/kmeshupgrade.yaml");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let crd: CustomResourceDefinition = serde_yaml::from_str(&text)
        .map_err(|e| Error::check(format!("parsing {}", path.display()), e.to_string()))?;
    let name = crd
        .metadata
        .name
        .clone()
        .ok_or_else(|| Error::check("the CRD", "no name"))?;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .map_err(|e| Error::kube(format!("applying CRD {name}"), e))?;
    eventually(
        "the CRD to be Established",
        Duration::from_secs(30),
        String::new,
        async || {
            let crd = api.get(&name).await.ok()?;
            let conditions = crd.status?.conditions?;
            conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        },
    )
    .await
}

/// The `KmeshUpgrade` resource (group, version, kind and plural from
/// `baton_api::pairpod`).
pub fn upgrade_resource() -> ApiResource {
    let gvk = GroupVersionKind::gvk(UPGRADE_GROUP, UPGRADE_VERSION, UPGRADE_KIND);
    ApiResource::from_gvk_with_plural(&gvk, UPGRADE_PLURAL)
}

/// The `KmeshUpgrade`s of namespace `ns`.
pub fn upgrades(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &upgrade_resource())
}

/// A `KmeshUpgrade` `ns/name` with `spec` (JSON, as `kubectl apply` takes it).
pub fn upgrade_object(name: &str, ns: &str, spec: Value) -> Result<DynamicObject> {
    let ar = upgrade_resource();
    object(
        "a KmeshUpgrade",
        json!({
            "apiVersion": ar.api_version, "kind": ar.kind,
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }),
    )
}

/// The label selector of agent pods ([`LABEL_APP_NAME`]`=`[`APP_NAME`]).
pub fn agent_pod_selector() -> String {
    format!("{LABEL_APP_NAME}={APP_NAME}")
}

/// The slot a pair pod's annotation makes active (slot a when missing or
/// garbled: `baton_api::pairpod::active_slot`).
pub fn active_slot(pod: &Pod) -> Slot {
    pairpod::active_slot(annotation(pod, ANN_ACTIVE_SLOT))
}

/// Annotation `key` of `pod`, if set.
pub fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// The status of `slot`'s container in a pair pod, if reported.
pub fn slot_status(pod: &Pod, slot: Slot) -> Option<ContainerStatus> {
    container_status(pod, slot.container())
}

/// The status of container `name`, if reported.
pub fn container_status(pod: &Pod, name: &str) -> Option<ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == name)
        .cloned()
}

/// Status of pod condition `type_` ("True"/"False"), if present.
pub fn condition(pod: &Pod, type_: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

/// Whether the container runs (state running).
pub fn is_running(status: &ContainerStatus) -> bool {
    status.state.as_ref().is_some_and(|s| s.running.is_some())
}

/// Pid of a running container, from the shim's containerID (`.../<node>/<pid>`).
pub fn container_pid(status: &ContainerStatus) -> Option<u32> {
    status
        .container_id
        .as_deref()?
        .rsplit('/')
        .next()?
        .parse()
        .ok()
}

/// The lines a `baton-node-shim record` container wrote, oldest first.
pub fn records(dir: &Path, ns: &str, pod: &str, container: &str) -> Result<Vec<Value>> {
    let path = record_file(dir, ns, pod, container);
    std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str(l).map_err(|source| Error::Json {
                what: format!("a line of {}", path.display()),
                source,
            })
        })
        .collect()
}

/// The `start` records only.
pub fn starts(dir: &Path, ns: &str, pod: &str, container: &str) -> Result<Vec<Value>> {
    Ok(records(dir, ns, pod, container)?
        .into_iter()
        .filter(|r| r["event"] == "start")
        .collect())
}
