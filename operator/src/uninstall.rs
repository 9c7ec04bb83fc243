//! `baton-operator uninstall`: deletes one `KmeshUpgrade` in the foreground
//! and waits until it and its agent pods are gone (the chart's pre-delete hook).
//!
//! Why wait for the pods too: each active agent tears its node's datapath
//! down when it sees its owning `KmeshUpgrade` gone or being deleted, and it
//! needs its RBAC to see that. Helm deletes the RBAC right after this hook
//! returns. The pods' owner references do not block their owner's deletion,
//! so the garbage collector may drop the `KmeshUpgrade` before the pods have
//! terminated; only an empty pod list shows that every agent is done.

use std::fmt;
use std::time::{Duration, Instant};

use baton_api::pairpod::LABEL_UPGRADE;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};

use crate::crd::KmeshUpgrade;

/// How often the wait looks again.
const POLL: Duration = Duration::from_millis(500);

/// Why an uninstall did not finish.
#[derive(Debug, thiserror::Error)]
pub enum UninstallError {
    /// The API server refused a request for good (e.g. RBAC).
    #[error("{action} for KmeshUpgrade {namespace}/{name}")]
    Api {
        /// What was being done.
        action: &'static str,
        /// Namespace of the KmeshUpgrade.
        namespace: String,
        /// Name of the KmeshUpgrade.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The KmeshUpgrade or its agent pods were still there at the deadline.
    #[error(
        "timed out after {waited:?} waiting for KmeshUpgrade {namespace}/{name} and its agent pods \
         to be gone: {left}"
    )]
    Timeout {
        /// Namespace of the KmeshUpgrade.
        namespace: String,
        /// Name of the KmeshUpgrade.
        name: String,
        /// How long it waited.
        waited: Duration,
        /// What was left, in words.
        left: Leftovers,
    },
}

/// What an uninstall still saw at its deadline.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leftovers {
    /// The KmeshUpgrade still exists; its finalizers, if any.
    pub upgrade: Option<Vec<String>>,
    /// Names of agent pods still there.
    pub pods: Vec<String>,
    /// The last error of a read that was retried, if any.
    pub last_error: Option<String>,
}

impl fmt::Display for Leftovers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(finalizers) = &self.upgrade {
            parts.push(format!(
                "the KmeshUpgrade still exists (finalizers: [{}]; is the garbage collector of \
                 kube-controller-manager running?)",
                finalizers.join(", ")
            ));
        }
        if !self.pods.is_empty() {
            parts.push(format!(
                "{} agent pod(s) still there: {} (see `kubectl get pods -l {LABEL_UPGRADE}=<name>`)",
                self.pods.len(),
                self.pods.join(", ")
            ));
        }
        if let Some(e) = &self.last_error {
            parts.push(format!("last error: {e}"));
        }
        if parts.is_empty() {
            parts.push("nothing seen yet".into());
        }
        f.write_str(&parts.join("; "))
    }
}

/// How an uninstall ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// This run deleted the KmeshUpgrade; it and its pods are gone.
    Deleted,
    /// The KmeshUpgrade did not exist (any pods of it are gone now too).
    NotFound,
}

/// Deletes `namespace/name` with propagationPolicy=Foreground and waits up
/// to `timeout` until neither it nor a pod labelled with its name is left.
pub async fn uninstall(
    client: kube::Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<Outcome, UninstallError> {
    let start = Instant::now();
    let upgrades: Api<KmeshUpgrade> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let api_error = |action, source| UninstallError::Api {
        action,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source,
    };
    let mut left = Leftovers::default();

    // The delete itself is retried on transient errors, within the same deadline.
    let outcome = loop {
        match upgrades.delete(name, &DeleteParams::foreground()).await {
            Ok(_) => break Outcome::Deleted,
            // Also what a cluster without the CRD answers: nothing to delete.
            Err(kube::Error::Api(status)) if status.code == 404 => break Outcome::NotFound,
            Err(e) if is_permanent(&e) => return Err(api_error("deleting", e)),
            Err(e) => left.last_error = Some(e.to_string()),
        }
        if start.elapsed() >= timeout {
            return Err(timeout_error(namespace, name, start, left));
        }
        tokio::time::sleep(POLL).await;
    };
    tracing::info!(%namespace, %name, ?outcome, "KmeshUpgrade deleted (foreground); waiting for it and its agent pods to be gone");

    let selector = ListParams::default().labels(&format!("{LABEL_UPGRADE}={name}"));
    loop {
        let seen = async {
            let upgrade = match upgrades.get_opt(name).await {
                Ok(found) => found.map(|u| u.metadata.finalizers.unwrap_or_default()),
                Err(kube::Error::Api(status)) if status.code == 404 => None,
                Err(e) => return Err(e),
            };
            let pods = pods.list(&selector).await?;
            let names = pods
                .items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect::<Vec<_>>();
            Ok((upgrade, names))
        }
        .await;
        match seen {
            Ok((None, pods)) if pods.is_empty() => return Ok(outcome),
            Ok((upgrade, pods)) => {
                left.upgrade = upgrade;
                left.pods = pods;
            }
            Err(e) if is_permanent(&e) => return Err(api_error("waiting", e)),
            Err(e) => left.last_error = Some(e.to_string()),
        }
        if start.elapsed() >= timeout {
            return Err(timeout_error(namespace, name, start, left));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn timeout_error(namespace: &str, name: &str, start: Instant, left: Leftovers) -> UninstallError {
    UninstallError::Timeout {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        // Whole seconds read better in a hook's log than nanoseconds.
        waited: Duration::from_secs(start.elapsed().as_secs()),
        left,
    }
}

/// Errors that retrying cannot fix: authentication and authorization.
fn is_permanent(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 401 || status.code == 403)
}

/// Parses a duration such as `120s`, `2m`, `1h` or `90` (seconds).
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 120s, 2m or 1h"))?;
    let seconds = match unit {
        "s" => Some(value),
        "m" => value.checked_mul(60),
        "h" => value.checked_mul(3600),
        _ => None,
    }
    .ok_or_else(|| format!("{text:?} is not a duration such as 120s, 2m or 1h"))?;
    if seconds == 0 {
        return Err("the timeout must be at least 1s".into());
    }
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_in_seconds_minutes_and_hours() {
        assert_eq!(parse_timeout("120s"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_timeout("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_timeout("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "s", "0s", "1.5m", "10x", "-5s", "2ms"] {
            assert!(parse_timeout(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn leftovers_name_what_is_left_and_a_likely_cause() {
        let left = Leftovers {
            upgrade: Some(vec!["foregroundDeletion".into()]),
            pods: vec!["baton-w1".into(), "baton-w2".into()],
            last_error: None,
        };
        let text = left.to_string();
        assert!(text.contains("finalizers: [foregroundDeletion]"), "{text}");
        assert!(text.contains("garbage collector"), "{text}");
        assert!(
            text.contains("2 agent pod(s) still there: baton-w1, baton-w2"),
            "{text}"
        );
        assert_eq!(Leftovers::default().to_string(), "nothing seen yet");
    }
}
