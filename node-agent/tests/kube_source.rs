//! The Kubernetes source against a real etcd + kube-apiserver (no kubelet, no
//! controller manager: the test writes the EndpointSlices the EndpointSlice
//! controller would). The source runs as the chart's agent service account.
//!
//! Needs `e2e/cluster/k8s-bins.sh` (or `BATON_SKIP_APISERVER=1`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics

mod support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use baton_agent::model::{Capacity, DesiredState, EndpointSpec, PortSpec, ServiceSpec};
use baton_agent::source::kube::{Locality, BUILD_BURST};
use baton_agent::source::{KubeOptions, KubeSource, SourceError};
use baton_e2e::apiserver::ApiServer;
use baton_ebpf::LbPolicy;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{json, Value};
use support::{create, install_agent_rbac, namespaces, AGENT_USER};

const WAIT: Duration = Duration::from_secs(30);

fn svc(name: &str, spec: Value) -> Value {
    json!({"metadata": {"name": name}, "spec": spec})
}

fn slice(name: &str, service: &str, family: &str, ports: Value, endpoints: Value) -> Value {
    json!({"metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
           "addressType": family, "ports": ports, "endpoints": endpoints})
}

fn ep(addr: &str, node: &str) -> Value {
    json!({"addresses": [addr], "conditions": {"ready": true}, "nodeName": node})
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("IP literal")
}

fn cluster_ips(svc: &Service) -> Vec<IpAddr> {
    let spec = svc.spec.as_ref().expect("service has a spec");
    spec.cluster_ips.iter().flatten().map(|s| ip(s)).collect()
}

fn endpoint(addr: &str, port: u16, priority: u8) -> EndpointSpec {
    EndpointSpec {
        address: ip(addr),
        port,
        priority,
    }
}

fn service(
    name: &str,
    vips: Vec<IpAddr>,
    ports: &[(u16, u16)],
    policy: LbPolicy,
    endpoints: Vec<EndpointSpec>,
) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        vips,
        ports: ports
            .iter()
            .map(|&(port, target_port)| PortSpec { port, target_port })
            .collect(),
        policy,
        endpoints,
    }
}

/// The state without `default/kubernetes`, which the API server creates and
/// whose endpoints its own reconciler manages.
fn ours(mut state: DesiredState) -> DesiredState {
    state.services.retain(|s| !s.name.starts_with("default/"));
    state
}

/// Polls until the source yields a state whose [`ours`] part `done` accepts;
/// panics with the last state and error after `WAIT`.
async fn wait_state(
    src: &mut KubeSource,
    cap: &Capacity,
    what: &str,
    done: impl Fn(&DesiredState) -> bool,
) -> DesiredState {
    let start = Instant::now();
    let (mut last, mut error) = (None, None);
    while start.elapsed() < WAIT {
        match src.poll(cap) {
            Some(Ok(state)) => {
                let state = ours(state);
                if done(&state) {
                    return state;
                }
                last = Some(state);
            }
            Some(Err(e)) => error = Some(e.to_string()),
            None => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}\nlast state: {last:#?}\nlast error: {error:?}");
}

async fn wait_error(src: &mut KubeSource, cap: &Capacity, what: &str) -> String {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        if let Some(Err(e)) = src.poll(cap) {
            assert!(matches!(e, SourceError::Cluster { .. }), "{e:?}");
            return e.to_string();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

fn start_source(config: kube::Config, namespace: Option<&str>) -> KubeSource {
    KubeSource::start(KubeOptions {
        config: Some(config),
        namespace: namespace.map(Into::into),
        locality: Locality {
            node: Some("n1".into()),
            zone: None,
        },
        ..KubeOptions::default()
    })
    .expect("starting the kubernetes source")
}

#[tokio::test]
async fn source_follows_services_and_endpoint_slices() {
    let Some(server) = ApiServer::start().await else {
        return;
    };
    let admin = server.client().await;
    install_agent_rbac(&admin).await;
    namespaces(&admin, &["apps", "other"]).await;
    let ns = "apps";
    let web: Service = create(
        &admin,
        ns,
        svc(
            "web",
            json!({"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
        ),
    )
    .await;
    let dual: Service = create(
        &admin,
        ns,
        svc(
            "dual",
            json!({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6", "IPv4"],
                   "ports": [{"port": 443}]}),
        ),
    )
    .await;
    let named: Service = create(
        &admin,
        ns,
        svc(
            "named",
            json!({"ports": [{"name": "http", "port": 80, "targetPort": "web"}]}),
        ),
    )
    .await;
    let local: Service = create(
        &admin,
        ns,
        svc(
            "local",
            json!({"internalTrafficPolicy": "Local", "ports": [{"port": 53, "protocol": "UDP"}]}),
        ),
    )
    .await;
    let _: Service = create(
        &admin,
        ns,
        svc(
            "headless",
            json!({"clusterIP": "None", "ports": [{"port": 80}]}),
        ),
    )
    .await;
    let _: Service = create(
        &admin,
        ns,
        svc(
            "ext",
            json!({"type": "ExternalName", "externalName": "example.com"}),
        ),
    )
    .await;
    let other: Service = create(
        &admin,
        "other",
        svc("api", json!({"ports": [{"port": 8443}]})),
    )
    .await;
    let http = |port: u16| json!([{"name": "http", "port": port}]);
    for s in [
        slice(
            "web-1",
            "web",
            "IPv4",
            http(8080),
            json!([
                ep("10.1.0.1", "n1"),
                {"addresses": ["10.1.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.1.0.3"],
                 "conditions": {"ready": false, "serving": true, "terminating": true}},
            ]),
        ),
        slice(
            "web-2",
            "web",
            "IPv4",
            http(8080),
            json!([ep("10.1.0.4", "n2")]),
        ),
        slice(
            "dual-4",
            "dual",
            "IPv4",
            json!([{"name": "", "port": 8443}]),
            json!([ep("10.2.0.1", "n2")]),
        ),
        slice(
            "dual-6",
            "dual",
            "IPv6",
            json!([{"name": "", "port": 8443}]),
            json!([ep("fd02::1", "n2")]),
        ),
        slice(
            "named-a",
            "named",
            "IPv4",
            http(8080),
            json!([ep("10.3.0.1", "n1"), ep("10.3.0.2", "n2")]),
        ),
        slice(
            "named-b",
            "named",
            "IPv4",
            http(9090),
            json!([ep("10.3.0.3", "n3")]),
        ),
        slice(
            "local-1",
            "local",
            "IPv4",
            json!([{"name": "", "port": 5353, "protocol": "UDP"}]),
            json!([ep("10.4.0.1", "n1"), ep("10.4.0.2", "n2")]),
        ),
        // The headless Service's endpoints are not the datapath's business.
        slice(
            "headless-1",
            "headless",
            "IPv4",
            json!([{"name": "", "port": 80}]),
            json!([ep("10.5.0.1", "n1")]),
        ),
    ] {
        create::<EndpointSlice>(&admin, ns, s).await;
    }

    let cap = Capacity::default();
    let mut src = start_source(server.config_as(AGENT_USER).await, None);
    let dual_ips = cluster_ips(&dual);
    assert_eq!(dual_ips.len(), 2, "dual-stack Service: {dual_ips:?}");
    let expected: DesiredState = [
        service(
            "apps/dual",
            vec![dual_ips[0]],
            &[(443, 8443)],
            LbPolicy::Random,
            vec![endpoint("fd02::1", 0, 0)],
        ),
        service(
            "apps/dual/ipv4",
            vec![dual_ips[1]],
            &[(443, 8443)],
            LbPolicy::Random,
            vec![endpoint("10.2.0.1", 0, 0)],
        ),
        service(
            "apps/local",
            cluster_ips(&local),
            &[(53, 5353)],
            LbPolicy::Strict,
            vec![endpoint("10.4.0.1", 0, 0)],
        ),
        service(
            "apps/named",
            cluster_ips(&named),
            &[(80, 8080)],
            LbPolicy::Random,
            vec![
                endpoint("10.3.0.1", 0, 0),
                endpoint("10.3.0.2", 0, 0),
                endpoint("10.3.0.3", 9090, 0),
            ],
        ),
        service(
            "apps/web",
            cluster_ips(&web),
            &[(80, 8080)],
            LbPolicy::Random,
            vec![endpoint("10.1.0.1", 0, 0), endpoint("10.1.0.4", 0, 0)],
        ),
        service(
            "other/api",
            cluster_ips(&other),
            &[(8443, 8443)],
            LbPolicy::Random,
            vec![],
        ),
    ]
    .into_iter()
    .collect();
    let state = wait_state(&mut src, &cap, "the initial state", |s| *s == expected).await;
    assert!(state.validate(&cap).is_empty());
    assert_eq!(src.poll(&cap).map(|r| r.is_ok()), None, "nothing changed");

    // Updates: web-2's endpoint stops being ready, a new one appears; the
    // Service moves its port.
    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), "apps");
    let patch = json!({"endpoints": [
        {"addresses": ["10.1.0.4"], "conditions": {"ready": false}}, ep("10.1.0.5", "n3")]});
    slices
        .patch("web-2", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patching web-2");
    let services: Api<Service> = Api::namespaced(admin.clone(), "apps");
    let patch = json!({"spec": {"ports": [{"name": "http", "port": 81, "targetPort": 8080}]}});
    services
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patching web");
    let updated = wait_state(&mut src, &cap, "web to follow its updates", |s| {
        s.services.iter().any(|svc| {
            svc.name == "apps/web"
                && svc.ports
                    == [PortSpec {
                        port: 81,
                        target_port: 8080,
                    }]
                && svc.endpoints == [endpoint("10.1.0.1", 0, 0), endpoint("10.1.0.5", 0, 0)]
        })
    })
    .await;
    assert_eq!(updated.services.len(), 6);

    // Deletes: a Service (its slices stay, unused) and a slice.
    services
        .delete("named", &DeleteParams::default())
        .await
        .expect("deleting named");
    slices
        .delete("web-1", &DeleteParams::default())
        .await
        .expect("deleting web-1");
    wait_state(&mut src, &cap, "deletes to show", |s| {
        s.services.iter().all(|svc| svc.name != "apps/named")
            && s.services
                .iter()
                .any(|svc| svc.name == "apps/web" && svc.endpoints == [endpoint("10.1.0.5", 0, 0)])
    })
    .await;

    // More endpoints than the maps hold: a clear error naming the limit.
    let small = Capacity {
        endpoints: 2,
        ..cap
    };
    let e = wait_error(&mut src, &small, "the capacity error").await;
    assert!(
        e.starts_with("kubernetes: services: ") && e.contains("exceed the map capacity of 2"),
        "{e}"
    );

    // A source restricted to one namespace sees only its Services.
    let mut one = start_source(server.config_as(AGENT_USER).await, Some("other"));
    let only = wait_state(&mut one, &cap, "the namespaced state", |s| {
        !s.services.is_empty()
    })
    .await;
    let names: Vec<_> = only.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["other/api"]);
    assert_eq!(one.describe(), "kubernetes:namespace=other");
}

#[tokio::test]
async fn source_reports_watch_errors_and_debounces_churn() {
    let Some(server) = ApiServer::start().await else {
        return;
    };
    let admin = server.client().await;
    install_agent_rbac(&admin).await;
    namespaces(&admin, &["apps"]).await;

    // Without RBAC the watches fail: reported, not silently empty.
    let mut denied = start_source(
        server.config_as("system:serviceaccount:apps:nobody").await,
        None,
    );
    let e = wait_error(&mut denied, &Capacity::default(), "a forbidden error").await;
    assert!(e.contains("forbidden"), "{e}");
    drop(denied);

    let _: Service = create(
        &admin,
        "apps",
        svc("churn", json!({"ports": [{"port": 80}]})),
    )
    .await;
    create::<EndpointSlice>(
        &admin,
        "apps",
        slice(
            "churn-1",
            "churn",
            "IPv4",
            json!([{"name": "", "port": 80}]),
            json!([]),
        ),
    )
    .await;
    let cap = Capacity::default();
    let mut src = start_source(server.config_as(AGENT_USER).await, None);
    wait_state(&mut src, &cap, "the churn service", |s| {
        s.services.len() == 1
    })
    .await;

    // 40 endpoint changes as fast as the API server takes them, polled every
    // 5 ms: a burst of builds, then at most one per `min_build_interval`, and
    // the last state wins.
    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), "apps");
    let start = Instant::now();
    let mut yielded = 0u32;
    for i in 1..=40u8 {
        let endpoints: Vec<Value> = (1..=i).map(|j| ep(&format!("10.9.0.{j}"), "n2")).collect();
        slices
            .patch(
                "churn-1",
                &PatchParams::default(),
                &Patch::Merge(&json!({"endpoints": endpoints})),
            )
            .await
            .expect("patching churn-1");
        if let Some(r) = src.poll(&cap) {
            r.expect("valid churn state");
            yielded += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let last = wait_state(&mut src, &cap, "all 40 endpoints", |s| {
        s.services[0].endpoints.len() == 40
    })
    .await;
    yielded += 1;
    let elapsed = start.elapsed();
    let spacing = KubeOptions::default().min_build_interval;
    let bound = (elapsed.as_millis() / spacing.as_millis()) as u32 + BUILD_BURST as u32 + 1;
    assert!(
        yielded <= bound,
        "{yielded} states in {elapsed:?}: more than {BUILD_BURST} + one build per {spacing:?}"
    );
    assert_eq!(last.services[0].name, "apps/churn");
    eprintln!("churn: 40 changes in {elapsed:?}, {yielded} states yielded (bound {bound})");
}
