use baton_ebpf::LbPolicy;
use serde_json::{json, Value};

use super::*;

fn svc(name: &str, spec: Value) -> Service {
    serde_json::from_value(json!({"metadata": {"namespace": "ns", "name": name}, "spec": spec}))
        .expect("test Service parses")
}

fn slice(name: &str, service: &str, family: &str, ports: Value, endpoints: Value) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"namespace": "ns", "name": name,
                     "labels": {SERVICE_NAME_LABEL: service}},
        "addressType": family, "ports": ports, "endpoints": endpoints,
    }))
    .expect("test EndpointSlice parses")
}

fn ready(addr: &str) -> Value {
    json!({"addresses": [addr], "conditions": {"ready": true}})
}

fn on(addr: &str, node: &str, zone: &str) -> Value {
    json!({"addresses": [addr], "conditions": {"ready": true}, "nodeName": node, "zone": zone})
}

fn run(services: &[Service], slices: &[EndpointSlice]) -> Built {
    build(services, slices, &Locality::default())
}

fn eps(s: &ServiceSpec) -> Vec<(String, u16, u8)> {
    s.endpoints
        .iter()
        .map(|e| (e.address.to_string(), e.port, e.priority))
        .collect()
}

fn ports(s: &ServiceSpec) -> Vec<(u16, u16)> {
    s.ports.iter().map(|p| (p.port, p.target_port)).collect()
}

fn web() -> Service {
    svc(
        "web",
        json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80, "targetPort": 8080}]}),
    )
}

#[test]
fn cluster_ip_service_with_ready_endpoints_only() {
    let s = slice(
        "web-1",
        "web",
        "IPv4",
        json!([{"name": "", "port": 8080}]),
        json!([
            ready("10.0.0.1"),
            {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
            {"addresses": ["10.0.0.3"],
             "conditions": {"ready": true, "serving": true, "terminating": true}},
            {"addresses": ["10.0.0.4"]},
            {"addresses": ["10.0.0.5"], "conditions": {"ready": false, "serving": true,
                                                       "terminating": true}},
        ]),
    );
    let b = run(&[web()], &[s]);
    assert!(b.notes.is_empty(), "{:?}", b.notes);
    let [web] = b.state.services.as_slice() else {
        panic!("one service expected: {:?}", b.state);
    };
    assert_eq!(web.name, "ns/web");
    assert_eq!(web.vips, ["10.96.0.10".parse::<IpAddr>().expect("ip")]);
    assert_eq!(ports(web), [(80, 8080)]);
    assert_eq!(web.policy, LbPolicy::Random);
    assert_eq!(
        eps(web),
        [("10.0.0.1".into(), 0, 0), ("10.0.0.4".into(), 0, 0)]
    );
}

#[test]
fn headless_external_name_and_unallocated_services_are_skipped() {
    let services = [
        svc(
            "headless",
            json!({"clusterIP": "None", "ports": [{"port": 80}]}),
        ),
        svc(
            "ext",
            json!({"type": "ExternalName", "externalName": "example.com"}),
        ),
        svc("pending", json!({"ports": [{"port": 80}]})),
    ];
    let b = run(&services, &[]);
    assert_eq!(b.state, DesiredState::default());
    assert!(b.notes.is_empty());
}

#[test]
fn dual_stack_gives_one_service_per_family() {
    let dual = svc(
        "dual",
        json!({"clusterIP": "fd00::10", "clusterIPs": ["fd00::10", "10.96.0.11"],
               "ports": [{"name": "http", "port": 80}]}),
    );
    let p = json!([{"name": "http", "port": 8080}]);
    let slices = [
        slice("d4", "dual", "IPv4", p.clone(), json!([ready("10.0.0.1")])),
        slice("d6", "dual", "IPv6", p, json!([ready("fd01::1")])),
    ];
    let b = run(&[dual], &slices);
    let names: Vec<_> = b.state.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["ns/dual", "ns/dual/ipv4"]);
    assert_eq!(eps(&b.state.services[0]), [("fd01::1".into(), 0, 0)]);
    assert_eq!(eps(&b.state.services[1]), [("10.0.0.1".into(), 0, 0)]);
    assert!(b.state.validate(&Default::default()).is_empty());
}

#[test]
fn named_target_port_differing_per_slice_uses_the_endpoint_override() {
    let s = svc(
        "app",
        json!({"clusterIP": "10.96.0.12", "ports": [{"name": "http", "port": 80,
                                                     "targetPort": "web"}]}),
    );
    let slices = [
        slice(
            "app-a",
            "app",
            "IPv4",
            json!([{"name": "http", "port": 8080}]),
            json!([ready("10.0.0.1"), ready("10.0.0.2")]),
        ),
        slice(
            "app-b",
            "app",
            "IPv4",
            json!([{"name": "http", "port": 9090}]),
            json!([ready("10.0.0.3")]),
        ),
    ];
    let b = run(&[s], &slices);
    let app = &b.state.services[0];
    assert_eq!(ports(app), [(80, 8080)], "the most common resolution");
    assert_eq!(
        eps(app),
        [
            ("10.0.0.1".into(), 0, 0),
            ("10.0.0.2".into(), 0, 0),
            ("10.0.0.3".into(), 9090, 0)
        ]
    );
}

#[test]
fn multi_port_service_leaves_out_endpoints_it_cannot_express() {
    let s = svc(
        "mp",
        json!({"clusterIP": "10.96.0.13", "ports": [
            {"name": "http", "port": 80, "targetPort": "http"},
            {"name": "metrics", "port": 9100}]}),
    );
    let both =
        |http: u16| json!([{"name": "http", "port": http}, {"name": "metrics", "port": 9100}]);
    let slices = [
        slice(
            "a",
            "mp",
            "IPv4",
            both(8080),
            json!([ready("10.0.0.1"), ready("10.0.0.2")]),
        ),
        slice("b", "mp", "IPv4", both(8081), json!([ready("10.0.0.3")])),
        // Pods without the metrics port: they serve http only.
        slice(
            "c",
            "mp",
            "IPv4",
            json!([{"name": "http", "port": 8080}]),
            json!([ready("10.0.0.4")]),
        ),
        // A slice without ports serves none of them.
        slice("d", "mp", "IPv4", json!([]), json!([ready("10.0.0.5")])),
    ];
    let b = run(&[s], &slices);
    let mp = &b.state.services[0];
    assert_eq!(ports(mp), [(80, 8080), (9100, 9100)]);
    let addrs: Vec<_> = eps(mp).into_iter().map(|e| e.0).collect();
    assert_eq!(addrs, ["10.0.0.1", "10.0.0.2", "10.0.0.4"]);
    assert_eq!(b.notes.len(), 1, "{:?}", b.notes);
    assert!(
        b.notes[0].starts_with("ns/mp: 1 endpoint(s) left out"),
        "{:?}",
        b.notes
    );
}

#[test]
fn endpoints_of_all_slices_merge_and_duplicates_collapse() {
    let slices = [
        slice(
            "w1",
            "web",
            "IPv4",
            json!([{"port": 8080}]),
            json!([ready("10.0.0.2"), ready("10.0.0.1")]),
        ),
        slice(
            "w2",
            "web",
            "IPv4",
            json!([{"port": 8080}]),
            json!([ready("10.0.0.1"), ready("10.0.0.3")]),
        ),
        slice(
            "other",
            "api",
            "IPv4",
            json!([{"port": 8080}]),
            json!([ready("10.0.0.9")]),
        ),
    ];
    let b = run(&[web()], &slices);
    let addrs: Vec<_> = eps(&b.state.services[0]).into_iter().map(|e| e.0).collect();
    assert_eq!(addrs, ["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
}

#[test]
fn tcp_and_udp_on_one_port_number_are_one_port_and_sctp_is_not_served() {
    let dns = svc(
        "dns",
        json!({"clusterIP": "10.96.0.53", "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
            {"name": "sctp", "port": 99, "protocol": "SCTP"}]}),
    );
    let b = run(&[dns], &[]);
    let dns = &b.state.services[0];
    assert_eq!(
        ports(dns),
        [(53, 53)],
        "TCP's entry, numeric targetPort as fallback"
    );
    assert!(dns.endpoints.is_empty());
}

#[test]
fn services_the_datapath_cannot_express_are_left_out_with_a_note() {
    let many: Vec<Value> = (1..=11)
        .map(|p| json!({"name": format!("p{p}"), "port": p}))
        .collect();
    let services = [
        svc("many", json!({"clusterIP": "10.96.0.20", "ports": many})),
        svc(
            "sctp",
            json!({"clusterIP": "10.96.0.21", "ports": [{"port": 1, "protocol": "SCTP"}]}),
        ),
        web(),
    ];
    let b = run(&services, &[]);
    let names: Vec<_> = b.state.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["ns/web"]);
    assert_eq!(b.notes.len(), 2, "{:?}", b.notes);
    assert!(b.notes[0].contains("11 ports"), "{:?}", b.notes);
    assert!(b.notes[1].contains("no TCP or UDP port"), "{:?}", b.notes);
}

#[test]
fn topology_preferences_become_priorities_and_policies() {
    let local = svc(
        "local",
        json!({"clusterIP": "10.96.0.30", "internalTrafficPolicy": "Local", "ports": [{"port": 80}]}),
    );
    let close = svc(
        "close",
        json!({"clusterIP": "10.96.0.31", "trafficDistribution": "PreferClose", "ports": [{"port": 80}]}),
    );
    let endpoints = json!([
        on("10.0.0.1", "n1", "z1"),
        on("10.0.0.2", "n2", "z1"),
        on("10.0.0.3", "n3", "z2"),
    ]);
    let slices = [
        slice(
            "l",
            "local",
            "IPv4",
            json!([{"port": 80}]),
            endpoints.clone(),
        ),
        slice("c", "close", "IPv4", json!([{"port": 80}]), endpoints),
    ];
    let here = Locality {
        node: Some("n1".into()),
        zone: None,
    };
    let b = build(&[local, close], &slices, &here);
    let [close, local] = b.state.services.as_slice() else {
        panic!("two services expected");
    };
    assert_eq!(local.policy, LbPolicy::Strict);
    assert_eq!(eps(local), [("10.0.0.1".into(), 0, 0)]);
    assert_eq!(close.policy, LbPolicy::Failover);
    assert_eq!(
        eps(close),
        [
            ("10.0.0.1".into(), 0, 0),
            ("10.0.0.2".into(), 0, 0),
            ("10.0.0.3".into(), 0, 1)
        ],
        "zone z1 inferred from the endpoint on n1"
    );
}

#[test]
fn a_service_without_endpoints_is_still_programmed() {
    let b = run(&[web()], &[]);
    let web = &b.state.services[0];
    assert_eq!(ports(web), [(80, 8080)]);
    assert!(
        web.endpoints.is_empty(),
        "connects are refused, as kube-proxy rejects"
    );
}
