//! Topology: which endpoints a Service prefers from this node, as priority
//! buckets and a load-balancing policy.

use baton_ebpf::LbPolicy;
use k8s_openapi::api::core::v1::ServiceSpec as KubeServiceSpec;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

/// Where this agent runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Locality {
    /// This node's name (`NODE_NAME`).
    pub node: Option<String>,
    /// This node's zone; when unknown, taken from any endpoint on this node.
    pub zone: Option<String>,
}

impl Locality {
    /// This locality with the zone filled in from the slices when it is unknown:
    /// the EndpointSlice controller copies the node's zone label into every
    /// endpoint, and the agent may not read Node objects.
    pub fn with_zone_from<'a>(&self, slices: impl IntoIterator<Item = &'a EndpointSlice>) -> Self {
        if !self.learns_zone() {
            return self.clone();
        }
        self.with_zone(self.zone_in(slices))
    }

    /// Whether the zone comes from the slices: known node, unknown zone.
    pub fn learns_zone(&self) -> bool {
        self.zone.is_none() && self.node.is_some()
    }

    /// The least zone of this node's endpoints in `slices`.
    pub fn zone_in<'a>(
        &self,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> Option<String> {
        slices
            .into_iter()
            .flat_map(|s| &s.endpoints)
            .filter(|e| e.node_name.is_some() && e.node_name == self.node)
            .filter_map(|e| e.zone.as_deref())
            .min()
            .map(str::to_owned)
    }

    /// This locality in `zone`.
    pub fn with_zone(&self, zone: Option<String>) -> Self {
        Self {
            node: self.node.clone(),
            zone,
        }
    }

    fn same_node(&self, e: &Endpoint) -> bool {
        self.node.is_some() && e.node_name == self.node
    }

    fn same_zone(&self, e: &Endpoint) -> bool {
        self.zone.is_some() && e.zone == self.zone
    }
}

/// How a Service wants its endpoints chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preference {
    /// Any ready endpoint (the default).
    Any,
    /// `trafficDistribution: PreferClose` or `PreferSameZone`: this zone first.
    SameZone,
    /// `trafficDistribution: PreferSameNode`: this node, then this zone, then any.
    SameNode,
    /// `internalTrafficPolicy: Local`: endpoints on this node only, never others.
    LocalOnly,
}

impl Preference {
    /// The Service's preference; internalTrafficPolicy wins over
    /// trafficDistribution, as in Kubernetes.
    pub fn of(spec: &KubeServiceSpec) -> Self {
        if spec.internal_traffic_policy.as_deref() == Some("Local") {
            return Self::LocalOnly;
        }
        match spec.traffic_distribution.as_deref() {
            Some("PreferClose" | "PreferSameZone") => Self::SameZone,
            Some("PreferSameNode") => Self::SameNode,
            _ => Self::Any,
        }
    }

    /// The datapath policy that implements it.
    pub fn policy(self) -> LbPolicy {
        match self {
            Self::Any => LbPolicy::Random,
            Self::SameZone | Self::SameNode => LbPolicy::Failover,
            // Bucket 0 holds only local endpoints; empty means refused, as
            // kube-proxy drops traffic for Local with no local endpoint.
            Self::LocalOnly => LbPolicy::Strict,
        }
    }

    /// Priority bucket of `e` seen from `here`; `None` when it must not be used.
    pub fn priority(self, e: &Endpoint, here: &Locality) -> Option<u8> {
        match self {
            Self::Any => Some(0),
            Self::LocalOnly => here.same_node(e).then_some(0),
            Self::SameZone => Some(if here.same_zone(e) { 0 } else { 1 }),
            Self::SameNode if here.same_node(e) => Some(0),
            Self::SameNode => Some(if here.same_zone(e) { 1 } else { 2 }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(node: &str, zone: &str) -> Endpoint {
        Endpoint {
            node_name: Some(node.into()),
            zone: Some(zone.into()),
            ..Endpoint::default()
        }
    }

    fn spec(itp: Option<&str>, td: Option<&str>) -> KubeServiceSpec {
        KubeServiceSpec {
            internal_traffic_policy: itp.map(Into::into),
            traffic_distribution: td.map(Into::into),
            ..KubeServiceSpec::default()
        }
    }

    #[test]
    fn preference_follows_the_service_fields() {
        assert_eq!(Preference::of(&spec(None, None)), Preference::Any);
        assert_eq!(
            Preference::of(&spec(Some("Cluster"), None)),
            Preference::Any
        );
        assert_eq!(
            Preference::of(&spec(None, Some("PreferClose"))),
            Preference::SameZone
        );
        assert_eq!(
            Preference::of(&spec(None, Some("PreferSameZone"))),
            Preference::SameZone
        );
        assert_eq!(
            Preference::of(&spec(None, Some("PreferSameNode"))),
            Preference::SameNode
        );
        assert_eq!(
            Preference::of(&spec(Some("Local"), Some("PreferClose"))),
            Preference::LocalOnly
        );
        assert_eq!(Preference::LocalOnly.policy(), LbPolicy::Strict);
        assert_eq!(Preference::SameZone.policy(), LbPolicy::Failover);
        assert_eq!(Preference::Any.policy(), LbPolicy::Random);
    }

    #[test]
    fn priorities_by_node_and_zone() {
        let here = Locality {
            node: Some("n1".into()),
            zone: Some("z1".into()),
        };
        let (local, zonal, remote) = (ep("n1", "z1"), ep("n2", "z1"), ep("n3", "z2"));
        let prios = |p: Preference| [&local, &zonal, &remote].map(|e| p.priority(e, &here));
        assert_eq!(prios(Preference::Any), [Some(0); 3]);
        assert_eq!(prios(Preference::LocalOnly), [Some(0), None, None]);
        assert_eq!(prios(Preference::SameZone), [Some(0), Some(0), Some(1)]);
        assert_eq!(prios(Preference::SameNode), [Some(0), Some(1), Some(2)]);
    }

    #[test]
    fn unknown_locality_prefers_nothing() {
        let here = Locality::default();
        let e = ep("n1", "z1");
        assert_eq!(Preference::LocalOnly.priority(&e, &here), None);
        assert_eq!(Preference::SameZone.priority(&e, &here), Some(1));
        assert_eq!(Preference::SameNode.priority(&e, &here), Some(2));
    }

    #[test]
    fn zone_is_inferred_from_an_endpoint_on_this_node() {
        let slice = EndpointSlice {
            endpoints: vec![ep("n2", "z9"), ep("n1", "z1")],
            ..EndpointSlice::default()
        };
        let here = Locality {
            node: Some("n1".into()),
            zone: None,
        };
        assert_eq!(here.with_zone_from([&slice]).zone.as_deref(), Some("z1"));
        let given = Locality {
            zone: Some("z7".into()),
            ..here.clone()
        };
        assert_eq!(given.with_zone_from([&slice]), given);
        assert_eq!(Locality::default().with_zone_from([&slice]).zone, None);
    }
}
