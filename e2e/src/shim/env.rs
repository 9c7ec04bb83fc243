//! Container environment as the kubelet builds it: literal values with
//! `$(VAR)` references and the downward API (`valueFrom.fieldRef`), read from
//! the pod as it is when the container starts.

use k8s_openapi::api::core::v1::{Container, Pod};

/// An env entry the shim cannot resolve; the container stays waiting with
/// `CreateContainerConfigError`, as with the kubelet.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// A source other than a literal or a `fieldRef`.
    #[error("env {name}: {what} is not supported by the node shim")]
    Unsupported {
        /// Variable name.
        name: String,
        /// The kind of source.
        what: &'static str,
    },
    /// A `fieldRef` path the downward API does not offer for env.
    #[error("env {name}: unsupported fieldRef {path:?}")]
    FieldPath {
        /// Variable name.
        name: String,
        /// The field path.
        path: String,
    },
    /// `envFrom` (ConfigMaps, Secrets).
    #[error("envFrom is not supported by the node shim")]
    EnvFrom,
}

/// The value of a downward-API field path of `pod`, `None` if not supported.
/// A missing label or annotation reads as "", as with the kubelet.
pub fn field_value(pod: &Pod, path: &str, host_ip: &str) -> Option<String> {
    let meta = &pod.metadata;
    let keyed = |prefix: &str| {
        path.strip_prefix(prefix)?
            .strip_suffix("']")
            .map(str::to_owned)
    };
    if let Some(key) = keyed("metadata.annotations['") {
        let map = meta.annotations.as_ref();
        return Some(map.and_then(|m| m.get(&key)).cloned().unwrap_or_default());
    }
    if let Some(key) = keyed("metadata.labels['") {
        let map = meta.labels.as_ref();
        return Some(map.and_then(|m| m.get(&key)).cloned().unwrap_or_default());
    }
    let spec = pod.spec.as_ref();
    let value = match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        // The shim's processes share the node's network: one address for both.
        "status.hostIP" | "status.hostIPs" | "status.podIP" | "status.podIPs" => {
            Some(host_ip.to_owned())
        }
        _ => return None,
    };
    Some(value.unwrap_or_default())
}

/// Expands `$(NAME)` with `lookup`; `$$` is a literal `$`, unknown names stay as written.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        if let Some((name, tail)) = after.strip_prefix('(').and_then(|s| s.split_once(')')) {
            match lookup(name) {
                Some(value) => out.push_str(&value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = tail;
            continue;
        }
        out.push('$');
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Sets `name` in an ordered env list, replacing an earlier value in place.
pub fn set(env: &mut Vec<(String, String)>, name: &str, value: String) {
    match env.iter_mut().find(|(n, _)| n == name) {
        Some(entry) => entry.1 = value,
        None => env.push((name.to_owned(), value)),
    }
}

/// Looks `name` up in an ordered env list.
pub fn get<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// The container's own env, in order; a value may reference earlier ones.
pub fn container_env(
    pod: &Pod,
    container: &Container,
    host_ip: &str,
) -> Result<Vec<(String, String)>, EnvError> {
    if container.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        return Err(EnvError::EnvFrom);
    }
    let mut env: Vec<(String, String)> = Vec::new();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => {
                let unsupported = |what| EnvError::Unsupported {
                    name: var.name.clone(),
                    what,
                };
                if from.config_map_key_ref.is_some() {
                    return Err(unsupported("configMapKeyRef"));
                }
                if from.secret_key_ref.is_some() {
                    return Err(unsupported("secretKeyRef"));
                }
                if from.resource_field_ref.is_some() {
                    return Err(unsupported("resourceFieldRef"));
                }
                let Some(field) = &from.field_ref else {
                    return Err(unsupported("this valueFrom"));
                };
                field_value(pod, &field.field_path, host_ip).ok_or_else(|| EnvError::FieldPath {
                    name: var.name.clone(),
                    path: field.field_path.clone(),
                })?
            }
            (Some(literal), None) => expand(literal, |name| get(&env, name).map(str::to_owned)),
            (None, None) => String::new(),
        };
        set(&mut env, &var.name, value);
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_api::pairpod::ANN_ACTIVE_SLOT;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u-1",
                         "annotations": {ANN_ACTIVE_SLOT: "b"}},
            "spec": {"nodeName": "w1", "containers": [{"name": "c", "env": [
                {"name": "A", "value": "x"},
                {"name": "B", "value": "$(A)-$(NOPE)-$$(A)"},
                {"name": "SLOT", "valueFrom": {"fieldRef": {
                    "fieldPath": format!("metadata.annotations['{ANN_ACTIVE_SLOT}']")}}},
                {"name": "MISSING", "valueFrom": {"fieldRef": {
                    "fieldPath": "metadata.annotations['absent']"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "A", "value": "y"}
            ]}]}
        }))
        .expect("pod parses")
    }

    #[test]
    fn env_resolves_literals_references_and_the_downward_api() {
        let pod = pod();
        let c = &pod.spec.as_ref().expect("spec").containers[0];
        let env = container_env(&pod, c, "127.0.1.1").expect("env");
        let names: Vec<_> = env.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["A", "B", "SLOT", "MISSING", "NODE", "POD", "NS", "IP"],
            "a repeated name keeps its first place"
        );
        assert_eq!(get(&env, "A"), Some("y"), "the last value wins");
        assert_eq!(get(&env, "B"), Some("x-$(NOPE)-$(A)"));
        assert_eq!(get(&env, "SLOT"), Some("b"));
        assert_eq!(get(&env, "MISSING"), Some(""));
        assert_eq!(get(&env, "NODE"), Some("w1"));
        assert_eq!(get(&env, "POD"), Some("p"));
        assert_eq!(get(&env, "NS"), Some("ns"));
        assert_eq!(get(&env, "IP"), Some("127.0.1.1"));
    }

    #[test]
    fn unsupported_sources_are_named() {
        let mut pod = pod();
        let spec = pod.spec.as_mut().expect("spec");
        spec.containers[0].env = Some(vec![serde_json::from_value(json!(
            {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
        ))
        .expect("env var")]);
        let c = spec.containers[0].clone();
        let err = container_env(&pod, &c, "127.0.0.1").expect_err("secret refused");
        assert_eq!(
            err.to_string(),
            "env S: secretKeyRef is not supported by the node shim"
        );
    }

    #[test]
    fn expansion_handles_dollars_at_the_edges() {
        let none = |_: &str| None;
        assert_eq!(expand("a$", none), "a$");
        assert_eq!(expand("$(unclosed", none), "$(unclosed");
        assert_eq!(expand("$$$$", none), "$$");
    }
}
