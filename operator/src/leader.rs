//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! Only the leader reconciles: two operators driving the same rollout could
//! double the nodes in flight. A leader that cannot renew in time steps down
//! by returning from [`LeaseLock::hold`] (the binary then exits and restarts).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};

/// Why leadership ended.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// Another identity holds the lease now.
    #[error("lost the lease {lease} to {holder:?}")]
    Lost {
        /// Lease name.
        lease: String,
        /// The new holder, if known.
        holder: Option<String>,
    },
    /// Renewal kept failing until the lease expired.
    #[error("could not renew the lease {lease} before it expired: {source}")]
    RenewFailed {
        /// Lease name.
        lease: String,
        /// The last API error.
        source: kube::Error,
    },
}

/// A lease held (or wanted) by one identity.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl LeaseLock {
    /// A lock on lease `name` in the namespace of `api` for `identity`.
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api,
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
        }
    }

    /// Takes or renews the lease; `Ok(false)` when someone else holds it.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let seconds = i32::try_from(self.duration.as_secs())
            .unwrap_or(i32::MAX)
            .max(1);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return conflict_is_false(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let held_by_me = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(renew), Some(secs)) => renew.0 + SignedDuration::from_secs(i64::from(secs)) < now,
            _ => true,
        };
        if !held_by_me && !expired && spec.holder_identity.is_some() {
            return Ok(false);
        }
        if !held_by_me {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(seconds);
        // replace() carries the resourceVersion we read: a concurrent writer
        // makes it fail with 409 instead of both believing they lead.
        conflict_is_false(
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await,
        )
    }

    /// Waits until this identity holds the lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
                    return;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(lease = %self.name, error = %e, "lease acquire failed"),
            }
            tokio::time::sleep(self.retry_period()).await;
        }
    }

    /// Renews the lease until leadership is lost; returns why.
    pub async fn hold(&self) -> LeaderError {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.retry_period()).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    let holder = self
                        .api
                        .get_opt(&self.name)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|l| l.spec)
                        .and_then(|s| s.holder_identity);
                    return LeaderError::Lost {
                        lease: self.name.clone(),
                        holder,
                    };
                }
                // Keep trying while the lease is still ours; step down before
                // it can expire under us, so a new leader never overlaps.
                Err(e) if last_ok.elapsed() + self.retry_period() >= self.duration => {
                    return LeaderError::RenewFailed {
                        lease: self.name.clone(),
                        source: e,
                    }
                }
                Err(e) => tracing::warn!(lease = %self.name, error = %e, "lease renewal failed"),
            }
        }
    }

    fn retry_period(&self) -> Duration {
        self.duration / 3
    }
}

fn conflict_is_false(result: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
