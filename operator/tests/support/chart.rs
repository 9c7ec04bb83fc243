//! Renders the Helm chart (through charts/tests/render_chart.py, i.e. real
//! Helm) and applies its objects.

use std::process::Command;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use serde::Deserialize;

/// Namespace the tests install the release into.
pub const RELEASE_NAMESPACE: &str = "baton-system";

/// Renders the chart with `values` (JSON) into YAML documents, CRDs first.
pub fn render(values: &str) -> Vec<serde_yaml::Value> {
    let script = super::repo_root().join("charts/tests/render_chart.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg(&script)
        .args(["--namespace", RELEASE_NAMESPACE, "--set-json", values])
        .output()
        .unwrap_or_else(|e| panic!("running {python} {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "rendering the chart failed ({}); install the chart test requirements with\n  \
         pip install -r charts/tests/requirements.txt\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("rendered chart is UTF-8");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_yaml::Value::deserialize(doc).expect("rendered YAML parses"))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The documents of `kind`.
pub fn of_kind<'a>(docs: &'a [serde_yaml::Value], kinds: &'a [&str]) -> Vec<serde_yaml::Value> {
    docs.iter()
        .filter(|d| d["kind"].as_str().is_some_and(|k| kinds.contains(&k)))
        .cloned()
        .collect()
}

/// Installs the chart's CRDs for real, as Helm does before the templates.
pub async fn install_crds(client: &kube::Client, docs: &[serde_yaml::Value]) -> usize {
    let crds = of_kind(docs, &["CustomResourceDefinition"]);
    for crd in &crds {
        let crd: CustomResourceDefinition =
            serde_yaml::from_value(crd.clone()).expect("chart CRD parses");
        super::apply_and_wait_established(client, &crd).await;
    }
    crds.len()
}

/// Server-side applies every document (for real or as a dry run); returns
/// one "Kind/name: error" line per refusal.
pub async fn apply(
    client: &kube::Client,
    docs: &[serde_yaml::Value],
    dry_run: bool,
) -> Vec<String> {
    let mut failures = Vec::new();
    for doc in docs {
        let obj: DynamicObject =
            serde_yaml::from_value(doc.clone()).expect("rendered object has metadata");
        let types = obj
            .types
            .clone()
            .expect("rendered object has apiVersion/kind");
        let gvk = GroupVersionKind::try_from(&types).expect("apiVersion parses");
        let name = obj
            .metadata
            .name
            .clone()
            .expect("rendered object has a name");
        let what = format!("{}/{name}", types.kind);
        let (ar, caps) = match discovery::pinned_kind(client, &gvk).await {
            Ok(found) => found,
            Err(e) => {
                failures.push(format!("{what}: kind not served: {e}"));
                continue;
            }
        };
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Cluster => Api::all_with(client.clone(), &ar),
            Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                obj.metadata
                    .namespace
                    .as_deref()
                    .unwrap_or(RELEASE_NAMESPACE),
                &ar,
            ),
        };
        let mut params = PatchParams::apply(super::MANAGER);
        if dry_run {
            params = params.dry_run();
        }
        if let Err(e) = api.patch(&name, &params, &Patch::Apply(&obj)).await {
            failures.push(format!("{what}: {e}"));
        }
    }
    failures
}

/// Creates the release namespace and applies the chart's service accounts and
/// RBAC for real, so tests can act as those accounts.
pub async fn install_rbac(client: &kube::Client) {
    create_release_namespace(client).await;
    let docs = render(r#"{"upgrade": {"enabled": false}}"#);
    let rbac = of_kind(
        &docs,
        &[
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
        ],
    );
    assert_eq!(rbac.len(), 10, "chart RBAC objects");
    let failures = apply(client, &rbac, false).await;
    assert!(failures.is_empty(), "applying chart RBAC: {failures:?}");
}

/// Creates the namespace the release goes into.
pub async fn create_release_namespace(client: &kube::Client) {
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": RELEASE_NAMESPACE}}))
            .expect("namespace object");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("creating the release namespace");
}
