//! Services + EndpointSlices (any JSON the API types accept) to a desired
//! state: never panics, and each service it builds keeps the per-service
//! rules the datapath needs (one address family, priorities in range, at
//! most MAX_PORTS ports), so one odd object cannot make the whole cluster's
//! state invalid.
#![no_main]

use baton_agent::model::Capacity;
use baton_agent::source::kube::{build, Locality};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;

#[derive(Deserialize)]
struct Input {
    #[serde(default)]
    services: Vec<Service>,
    #[serde(default)]
    slices: Vec<EndpointSlice>,
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    zone: Option<String>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = serde_json::from_slice::<Input>(data) else {
        return;
    };
    let here = Locality {
        node: input.node,
        zone: input.zone,
    };
    let built = build(&input.services, &input.slices, &here);
    for s in &built.state.services {
        let v4 = s.vips.first().map(|v| v.is_ipv4());
        assert!(v4.is_some(), "{}: no VIP", s.name);
        assert!(
            s.vips.iter().all(|v| Some(v.is_ipv4()) == v4),
            "{}: mixed VIPs",
            s.name
        );
        assert!(
            s.endpoints.iter().all(|e| Some(e.address.is_ipv4()) == v4),
            "{}: endpoint family",
            s.name
        );
        assert!(
            s.endpoints
                .iter()
                .all(|e| usize::from(e.priority) < baton_ebpf::PRIO_COUNT),
            "{}: priority",
            s.name
        );
        assert!(s.ports.len() <= baton_ebpf::MAX_PORTS, "{}: ports", s.name);
    }
    let _ = built.state.validate(&Capacity::default());
});
