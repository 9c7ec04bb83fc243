//! Expectations: what the pod cache must show before the next plan.
//!
//! The planner reads pods from a watch cache. Right after the operator acted,
//! the cache may still show the old pods; planning on it would start more
//! handovers than maxUnavailable allows. So every write records what the
//! cache must catch up to, and planning waits until it has (as Kubernetes'
//! own ControllerExpectations do).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

/// How long to wait for the cache before giving up on an expectation.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// What the cache must show for one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expectation {
    /// The pod exists.
    Exists,
    /// The pod is gone.
    Gone,
    /// The pod's resourceVersion is at least this one.
    AtLeast(u64),
}

impl Expectation {
    /// From the resourceVersion a write returned. Kubernetes calls resource
    /// versions opaque, but etcd-backed servers use the revision number; if it
    /// is not a number, the best we can ask for is that the pod exists.
    pub fn from_resource_version(rv: Option<&str>) -> Self {
        rv.and_then(|v| v.parse().ok())
            .map(Expectation::AtLeast)
            .unwrap_or(Expectation::Exists)
    }

    fn met_by(&self, pod: Option<&Pod>) -> bool {
        match (self, pod) {
            (Expectation::Gone, None) => true,
            // Bound pods linger until their kubelet confirms; deletion started is enough.
            (Expectation::Gone, Some(pod)) => pod.metadata.deletion_timestamp.is_some(),
            (_, None) => false,
            (Expectation::Exists, Some(_)) => true,
            (Expectation::AtLeast(want), Some(pod)) => pod
                .metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok())
                .is_none_or(|have| have >= *want),
        }
    }
}

/// Pod name and what the cache must show for it.
pub type PodExpectation = (String, Expectation);

/// Expectations of one `KmeshUpgrade`, and since when they are pending.
struct Pending {
    since: Instant,
    items: Vec<PodExpectation>,
}

/// Pending expectations per `KmeshUpgrade` key.
#[derive(Default)]
pub struct Expectations {
    pending: Mutex<HashMap<String, Pending>>,
}

impl Expectations {
    /// Records what the cache must show for `key`'s pods.
    pub fn expect(&self, key: &str, items: Vec<PodExpectation>) {
        if items.is_empty() {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.insert(
            key.to_owned(),
            Pending {
                since: Instant::now(),
                items,
            },
        );
    }

    /// Whether the cache caught up for `key`; `lookup` finds a pod by name.
    pub fn satisfied(
        &self,
        key: &str,
        lookup: impl Fn(&str) -> Option<std::sync::Arc<Pod>>,
    ) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let Some(Pending { since, items }) = pending.get_mut(key) else {
            return true;
        };
        items.retain(|(pod, e)| !e.met_by(lookup(pod).as_deref()));
        if items.is_empty() {
            pending.remove(key);
            return true;
        }
        if since.elapsed() > MAX_WAIT {
            tracing::warn!(
                key,
                missing = items.len(),
                "pod cache did not catch up; planning anyway"
            );
            pending.remove(key);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn pod(rv: &str) -> Arc<Pod> {
        let mut p = Pod::default();
        p.metadata.resource_version = Some(rv.into());
        Arc::new(p)
    }

    #[test]
    fn planning_waits_until_the_cache_shows_every_write() {
        let e = Expectations::default();
        e.expect(
            "ns/u",
            vec![
                ("a".into(), Expectation::AtLeast(10)),
                ("b".into(), Expectation::Gone),
                ("c".into(), Expectation::Exists),
            ],
        );
        assert!(!e.satisfied("ns/u", |n| match n {
            "a" => Some(pod("9")),
            "c" => Some(pod("1")),
            _ => None,
        }));
        // "b" gone and "c" exist now count as met; "a" is still behind.
        assert!(!e.satisfied("ns/u", |n| (n == "a").then(|| pod("9"))));
        assert!(e.satisfied("ns/u", |n| (n == "a").then(|| pod("11"))));
        assert!(e.satisfied("other", |_| None));
    }

    #[test]
    fn a_terminating_pod_counts_as_gone() {
        let e = Expectations::default();
        e.expect("k", vec![("a".into(), Expectation::Gone)]);
        assert!(!e.satisfied("k", |_| Some(pod("3"))));
        let mut terminating = Pod::default();
        terminating.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let terminating = Arc::new(terminating);
        assert!(e.satisfied("k", |_| Some(terminating.clone())));
    }

    #[test]
    fn odd_resource_versions_fall_back_to_existence() {
        assert_eq!(
            Expectation::from_resource_version(Some("abc")),
            Expectation::Exists
        );
        assert_eq!(
            Expectation::from_resource_version(Some("42")),
            Expectation::AtLeast(42)
        );
    }
}
