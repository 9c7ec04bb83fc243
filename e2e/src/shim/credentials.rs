//! Service-account credentials for pod processes. The kubelet fills the
//! projected `kube-api-access-*` volume (token, CA, namespace) at
//! `/var/run/secrets/kubernetes.io/serviceaccount`; a process here cannot see
//! that path, so the shim also writes a kubeconfig per pod that points at the
//! token file and hands it over as `KUBECONFIG` (kube clients try it first).

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ProjectedVolumeSource, ServiceAccount};
use kube::api::{Api, PostParams};
use serde_json::json;

use super::config::PodApiAccess;
use super::env::field_value;

/// Token lifetime the kubelet asks for in `kube-api-access-*` volumes.
const DEFAULT_EXPIRATION_SECONDS: i64 = 3607;

/// Filling a projected volume failed; the pod waits in `ContainerCreating`.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The TokenRequest was refused.
    #[error("requesting a token for service account {account}: {source}")]
    Token {
        /// Service account.
        account: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Reading a ConfigMap failed for another reason than absence.
    #[error("reading ConfigMap {name}: {source}")]
    ConfigMap {
        /// ConfigMap name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A source kind the shim does not fill.
    #[error("projected {what} sources are not supported by the node shim")]
    Unsupported {
        /// The source kind.
        what: &'static str,
    },
    /// A downwardAPI item the shim cannot resolve.
    #[error("downwardAPI item {path}: unsupported field")]
    Field {
        /// File path in the volume.
        path: String,
    },
    /// Writing a file failed.
    #[error("writing {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// What filling one projected volume produced.
#[derive(Debug, Default)]
pub struct Filled {
    /// The service-account token file, if the volume has one.
    pub token_file: Option<PathBuf>,
    /// Fill it again after this long (80 % of the token's life, as the kubelet does).
    pub refresh_after: Option<Duration>,
}

/// Writes `contents` to `dir/rel` atomically (readers never see half a token).
fn write(dir: &Path, rel: &str, contents: &[u8]) -> Result<PathBuf, CredentialError> {
    let path = dir.join(rel);
    let err = |source| CredentialError::Io {
        path: path.clone(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let tmp = path.with_extension("baton-shim-tmp");
    std::fs::write(&tmp, contents).map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)?;
    Ok(path)
}

/// Fills the projected volume at `dir` from `source` for `pod`.
pub async fn fill_projected(
    client: &kube::Client,
    pod: &Pod,
    dir: &Path,
    source: &ProjectedVolumeSource,
    host_ip: &str,
    api_access: Option<&PodApiAccess>,
) -> Result<Filled, CredentialError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut filled = Filled::default();
    for s in source.sources.iter().flatten() {
        if let Some(token) = &s.service_account_token {
            let account = pod
                .spec
                .as_ref()
                .and_then(|p| p.service_account_name.clone())
                .unwrap_or_else(|| "default".into());
            let expiration = token
                .expiration_seconds
                .unwrap_or(DEFAULT_EXPIRATION_SECONDS);
            let request = TokenRequest {
                spec: TokenRequestSpec {
                    audiences: token.audience.iter().cloned().collect(),
                    expiration_seconds: Some(expiration),
                    bound_object_ref: Some(BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: pod.metadata.name.clone(),
                        uid: pod.metadata.uid.clone(),
                    }),
                },
                ..TokenRequest::default()
            };
            let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
            let issued = api
                .create_token_request(&account, &PostParams::default(), &request)
                .await
                .map_err(|source| CredentialError::Token {
                    account: account.clone(),
                    source,
                })?;
            let value = issued.status.map(|s| s.token).unwrap_or_default();
            filled.token_file = Some(write(dir, &token.path, value.as_bytes())?);
            let secs = u64::try_from(expiration).unwrap_or(600) * 4 / 5;
            filled.refresh_after = Some(Duration::from_secs(secs.max(60)));
        }
        if let Some(cm) = &s.config_map {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
            let found =
                api.get_opt(&cm.name)
                    .await
                    .map_err(|source| CredentialError::ConfigMap {
                        name: cm.name.clone(),
                        source,
                    })?;
            let data = found.and_then(|c| c.data).unwrap_or_default();
            for item in cm.items.iter().flatten() {
                match data.get(&item.key) {
                    Some(value) => {
                        write(dir, &item.path, value.as_bytes())?;
                    }
                    // Without kube-controller-manager nobody publishes
                    // kube-root-ca.crt: the shim's own CA stands in.
                    None if item.key == "ca.crt" => {
                        let ca = api_access.and_then(|a| a.certificate_authority.as_deref());
                        if let Some(contents) = ca.and_then(|f| std::fs::read(f).ok()) {
                            write(dir, &item.path, &contents)?;
                        }
                    }
                    None => {}
                }
            }
        }
        if let Some(downward) = &s.downward_api {
            for item in downward.items.iter().flatten() {
                let value = item
                    .field_ref
                    .as_ref()
                    .and_then(|f| field_value(pod, &f.field_path, host_ip))
                    .ok_or_else(|| CredentialError::Field {
                        path: item.path.clone(),
                    })?;
                write(dir, &item.path, value.as_bytes())?;
            }
        }
        if s.secret.is_some() {
            return Err(CredentialError::Unsupported { what: "secret" });
        }
        if s.cluster_trust_bundle.is_some() {
            return Err(CredentialError::Unsupported {
                what: "clusterTrustBundle",
            });
        }
    }
    Ok(filled)
}

/// Writes the pod's kubeconfig (JSON, which every kubeconfig reader accepts).
pub fn write_kubeconfig(
    path: &Path,
    access: &PodApiAccess,
    token_file: &Path,
    namespace: &str,
) -> Result<(), CredentialError> {
    let mut cluster = json!({"server": access.server});
    if let Some(ca) = &access.certificate_authority {
        cluster["certificate-authority"] = json!(ca);
    }
    if let Some(data) = &access.certificate_authority_data {
        cluster["certificate-authority-data"] = json!(data);
    }
    if access.insecure_skip_tls_verify {
        cluster["insecure-skip-tls-verify"] = json!(true);
    }
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": cluster}],
        // tokenFile is re-read by clients, so refreshed tokens are picked up.
        "users": [{"name": "pod", "user": {"tokenFile": token_file}}],
        "contexts": [{"name": "pod", "context":
            {"cluster": "cluster", "user": "pod", "namespace": namespace}}],
        "current-context": "pod",
    });
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "kubeconfig".into());
    write(dir, &name, config.to_string().as_bytes()).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_kubeconfig_loads_with_kube() {
        let dir = tempfile::tempdir().expect("tempdir");
        let access = PodApiAccess {
            server: "https://127.0.0.1:6443".into(),
            certificate_authority: Some("/ca.crt".into()),
            certificate_authority_data: None,
            insecure_skip_tls_verify: false,
        };
        let path = dir.path().join("kubeconfig");
        write_kubeconfig(&path, &access, &dir.path().join("token"), "ns").expect("write");
        let kc = kube::config::Kubeconfig::read_from(&path).expect("kube reads it");
        assert_eq!(PodApiAccess::from_kubeconfig(&kc), Some(access));
        let user = kc.auth_infos[0].auth_info.as_ref().expect("user");
        assert_eq!(
            user.token_file.as_deref().map(Path::new),
            Some(dir.path().join("token").as_path())
        );
    }
}
