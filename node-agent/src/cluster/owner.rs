//! Whether the agent's pod is going away for good: its owning `KmeshUpgrade`
//! is deleted or being deleted (uninstall), as opposed to a pod restart,
//! an eviction or an upgrade, which must keep the datapath.

use baton_api::pairpod::{UPGRADE_GROUP, UPGRADE_KIND, UPGRADE_PLURAL, UPGRADE_VERSION};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use kube::Client;

use super::ClusterError;

/// What became of the pod's owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// It exists and is not being deleted: keep the datapath.
    Alive,
    /// Deleted (404, or another object of that name), or being deleted.
    Gone(String),
    /// The pod names no `KmeshUpgrade` owner: keep the datapath.
    Unowned,
}

/// Reads pod `namespace/pod` and its `KmeshUpgrade` owner. Needs `get` on
/// pods and on `kmeshupgrades` (group `baton.dev`) in the namespace. Uses the
/// dynamic API so the agent needs nothing of the operator crate.
pub async fn owner_of(client: &Client, namespace: &str, pod: &str) -> Result<Owner, ClusterError> {
    let p = Api::<Pod>::namespaced(client.clone(), namespace)
        .get(pod)
        .await
        .map_err(|source| ClusterError::Api {
            what: format!("reading pod {namespace}/{pod}"),
            source,
        })?;
    let Some(owner) =
        p.metadata.owner_references.iter().flatten().find(|o| {
            o.kind == UPGRADE_KIND && o.api_version.split('/').next() == Some(UPGRADE_GROUP)
        })
    else {
        return Ok(Owner::Unowned);
    };
    let gvk = GroupVersionKind::gvk(UPGRADE_GROUP, UPGRADE_VERSION, UPGRADE_KIND);
    let ar = ApiResource::from_gvk_with_plural(&gvk, UPGRADE_PLURAL);
    let upgrades: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
    match upgrades.get(&owner.name).await {
        Ok(u) if u.metadata.uid.as_deref() != Some(owner.uid.as_str()) => Ok(Owner::Gone(format!(
            "KmeshUpgrade {namespace}/{} was deleted (another object has its name now)",
            owner.name
        ))),
        Ok(u) if u.metadata.deletion_timestamp.is_some() => Ok(Owner::Gone(format!(
            "KmeshUpgrade {namespace}/{} is being deleted",
            owner.name
        ))),
        Ok(_) => Ok(Owner::Alive),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Owner::Gone(format!(
            "KmeshUpgrade {namespace}/{} is deleted",
            owner.name
        ))),
        Err(source) => Err(ClusterError::Api {
            what: format!("reading KmeshUpgrade {namespace}/{}", owner.name),
            source,
        }),
    }
}
