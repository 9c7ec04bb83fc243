//! Prometheus metrics and the `/metrics` + `/healthz` endpoint.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Identifies one `KmeshUpgrade`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpgradeLabels {
    /// Namespace of the object.
    pub namespace: String,
    /// Name of the object.
    pub name: String,
}

/// One kind of planner action.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// Action kind, e.g. `start_upgrade`.
    pub action: String,
}

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    /// Selected nodes per upgrade.
    pub nodes: Family<UpgradeLabels, Gauge>,
    /// Nodes on the spec's image per upgrade.
    pub updated: Family<UpgradeLabels, Gauge>,
    /// Nodes whose handover to the spec's image failed.
    pub failed: Family<UpgradeLabels, Gauge>,
    /// Handovers under way per upgrade.
    pub upgrading: Family<UpgradeLabels, Gauge>,
    /// Actions carried out, by kind.
    pub actions: Family<ActionLabels, Counter>,
    /// Reconciles that ended in an error.
    pub reconcile_errors: Counter,
    /// Handover durations reported by agents, in seconds.
    pub handover_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("baton_operator");
        let nodes = Family::default();
        let updated = Family::default();
        let failed = Family::default();
        let upgrading = Family::default();
        let actions = Family::default();
        let reconcile_errors = Counter::default();
        // 1 ms .. ~33 s: handovers are expected in the tens of milliseconds.
        let handover_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register("nodes", "Selected nodes", nodes.clone());
        registry.register(
            "updated_nodes",
            "Nodes running the spec's agent image",
            updated.clone(),
        );
        registry.register(
            "failed_nodes",
            "Nodes where the spec's image failed",
            failed.clone(),
        );
        registry.register("upgrading_nodes", "Handovers under way", upgrading.clone());
        registry.register("actions", "Planner actions carried out", actions.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed",
            reconcile_errors.clone(),
        );
        registry.register(
            "handover_duration_seconds",
            "Committed handover durations reported by agents",
            handover_seconds.clone(),
        );
        Self {
            registry,
            nodes,
            updated,
            failed,
            upgrading,
            actions,
            reconcile_errors,
            handover_seconds,
        }
    }
}

impl Metrics {
    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serves `GET /metrics` and `GET /healthz` until the task is dropped.
///
/// A deliberately tiny HTTP/1.0-style responder: one request per connection is
/// all Prometheus and kubelet probes need, and it avoids a web framework.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener accept failed");
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = match stream.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "metrics request read failed");
                    return;
                }
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, body, kind) = match path {
                "/metrics" => (
                    "200 OK",
                    metrics.render(),
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
                "/healthz" => ("200 OK", "ok\n".to_owned(), "text/plain"),
                _ => ("404 Not Found", "not found\n".to_owned(), "text/plain"),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(e) = stream.write_all(response.as_bytes()).await {
                tracing::debug!(%peer, error = %e, "metrics response write failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn metrics_and_health_are_served_over_http() {
        let metrics = Arc::new(Metrics::default());
        metrics
            .nodes
            .get_or_create(&UpgradeLabels {
                namespace: "ns".into(),
                name: "baton".into(),
            })
            .set(7);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(serve(listener, metrics));
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out
        };
        let body = get("/metrics").await;
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(
            body.contains(r#"baton_operator_nodes{namespace="ns",name="baton"} 7"#),
            "{body}"
        );
        assert!(get("/healthz").await.ends_with("ok\n"));
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        server.abort();
    }
}
