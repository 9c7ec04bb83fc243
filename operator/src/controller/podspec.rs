//! Builds the per-node agent pair pod.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use baton_api::pairpod::{
    Slot, ANN_ACTIVE_SLOT, ANN_SOAK_SECONDS, APP_NAME, DEFAULT_RUN_DIR, ENV_ACTIVE_SLOT,
    ENV_CGROUP, ENV_NODE_NAME, ENV_POD_NAME, ENV_POD_NAMESPACE, ENV_RUN_DIR, ENV_SLOT,
    ENV_SLOT_VERSION, ENV_SLOT_VERSION_ALT, ENV_SOAK_SECONDS, LABEL_APP_NAME, LABEL_UPGRADE,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, HostPathVolumeSource,
    ObjectFieldSelector, Pod, PodSecurityContext, PodSpec, SeccompProfile, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::crd::KmeshUpgradeSpec;

/// Capabilities the agent needs, and nothing else: load programs and maps
/// (BPF), attach to cgroups and pin (SYS_ADMIN), program sockets (NET_ADMIN).
/// Not SYS_RESOURCE: since kernel 5.11 BPF memory is charged to the memory
/// cgroup instead of RLIMIT_MEMLOCK, and a container adding a capability that
/// the host's bounding set lacks does not start at all ("unable to apply caps").
pub const AGENT_CAPABILITIES: [&str; 3] = ["BPF", "NET_ADMIN", "SYS_ADMIN"];

/// What the agent pods of one `KmeshUpgrade` share.
pub struct PodTarget<'a> {
    /// Namespace of the `KmeshUpgrade` (and of the pod).
    pub namespace: &'a str,
    /// Name of the `KmeshUpgrade`.
    pub upgrade: &'a str,
    /// Owner reference to the `KmeshUpgrade`, so deleting it deletes the pods.
    pub owner: OwnerReference,
    /// Service account of the agent.
    pub service_account: &'a str,
}

impl PodTarget<'_> {
    /// Metadata of a pod of this upgrade: `name`, the app and upgrade labels
    /// plus `labels`, `annotations`, owned by the `KmeshUpgrade`.
    pub(super) fn metadata(
        &self,
        name: String,
        labels: impl IntoIterator<Item = (String, String)>,
        annotations: BTreeMap<String, String>,
    ) -> ObjectMeta {
        let mut all = BTreeMap::from([
            (LABEL_APP_NAME.to_owned(), APP_NAME.to_owned()),
            (LABEL_UPGRADE.to_owned(), self.upgrade.to_owned()),
        ]);
        all.extend(labels);
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.to_owned()),
            labels: Some(all),
            annotations: Some(annotations),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }
}

/// The pair pod on `node`: `image` active in slot a, slot b parked on the empty image.
pub fn build_pod(target: &PodTarget<'_>, node: &str, spec: &KmeshUpgradeSpec, image: &str) -> Pod {
    let mut annotations = BTreeMap::new();
    annotations.insert(ANN_ACTIVE_SLOT.to_owned(), Slot::A.to_string());
    annotations.insert(Slot::A.version_annotation(), image.to_owned());
    annotations.insert(Slot::B.version_annotation(), spec.empty_image.clone());
    Pod {
        metadata: target.metadata(pod_name(target.upgrade, node), [], annotations),
        spec: Some(PodSpec {
            // Bound directly: one pod per node, like a DaemonSet, no scheduler round trip.
            node_name: Some(node.to_owned()),
            service_account_name: Some(target.service_account.to_owned()),
            containers: vec![
                slot_container(Slot::A, image, spec),
                slot_container(Slot::B, &spec.empty_image, spec),
            ],
            volumes: Some(agent_volumes()),
            // A node datapath agent, like kube-proxy or the Cilium agent: it
            // must run before and without any CNI and reach a node-local API
            // server address (docs/operator.md).
            host_network: spec.pod.host_network.then_some(true),
            // Cluster DNS still resolves names on the host network.
            dns_policy: spec
                .pod
                .host_network
                .then(|| "ClusterFirstWithHostNet".to_owned()),
            // bpf() and every other call the agent makes pass the runtime's
            // default filter (checked with containerd on a real kubelet).
            security_context: Some(pod_security()),
            tolerations: (!spec.pod.tolerations.is_empty()).then(|| spec.pod.tolerations.clone()),
            priority_class_name: spec.pod.priority_class_name.clone(),
            restart_policy: Some("Always".into()),
            // The agents judge each other by pid (SO_PEERCRED, liveness of a
            // silent peer, staging-<pid> pins): both slots must see one pid space.
            share_process_namespace: Some(true),
            ..PodSpec::default()
        }),
        status: None,
    }
}

fn slot_container(slot: Slot, image: &str, spec: &KmeshUpgradeSpec) -> Container {
    Container {
        name: slot.container().to_owned(),
        image: Some(image.to_owned()),
        args: (!spec.pod.extra_args.is_empty()).then(|| spec.pod.extra_args.clone()),
        env: Some(slot_env(slot, spec)),
        resources: spec.pod.resources.clone(),
        security_context: Some(agent_security()),
        volume_mounts: Some(agent_mounts()),
        ..Container::default()
    }
}

/// The pod-level security of agent and check pods: the runtime's default
/// seccomp filter, which every call of the agent passes.
pub(super) fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// The container security of an agent (and of its preflight check): not
/// privileged, every capability dropped but [`AGENT_CAPABILITIES`].
pub(super) fn agent_security() -> SecurityContext {
    SecurityContext {
        privileged: Some(false),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            add: Some(AGENT_CAPABILITIES.iter().map(|c| c.to_string()).collect()),
            drop: Some(vec!["ALL".into()]),
        }),
        ..SecurityContext::default()
    }
}

/// Name of the agent pod of `upgrade` on `node`, a valid DNS subdomain.
pub fn pod_name(upgrade: &str, node: &str) -> String {
    const MAX: usize = 253;
    let name = format!("{upgrade}-{node}");
    if name.len() <= MAX {
        return name;
    }
    // Too long: keep a prefix and make it unique with a hash of the full name.
    let mut hasher = DefaultHasher::new();
    name.hash(&mut hasher);
    let suffix = format!("-{:016x}", hasher.finish());
    let mut prefix: String = name.chars().take(MAX - suffix.len()).collect();
    while prefix.ends_with(['-', '.']) {
        prefix.pop();
    }
    prefix + &suffix
}

/// Slot identity through the downward API: a restarted container reads the
/// annotations as they are now, so a retired agent learns it is older than the
/// active one and stays idle.
fn slot_env(slot: Slot, spec: &KmeshUpgradeSpec) -> Vec<EnvVar> {
    let field = |name: &str, path: String| EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path,
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let value = |name: &str, value: String| EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..EnvVar::default()
    };
    let annotation = |key: String| format!("metadata.annotations['{key}']");
    let mut env = vec![
        value(ENV_SLOT, slot.to_string()),
        field(ENV_SLOT_VERSION, annotation(slot.version_annotation())),
        field(
            ENV_SLOT_VERSION_ALT,
            annotation(slot.other().version_annotation()),
        ),
        field(ENV_ACTIVE_SLOT, annotation(ANN_ACTIVE_SLOT.to_owned())),
        // The canary's soak: how long a successor keeps its handover report
        // up to date (empty when the annotation is absent: no soak).
        field(ENV_SOAK_SECONDS, annotation(ANN_SOAK_SECONDS.to_owned())),
        value(ENV_RUN_DIR, DEFAULT_RUN_DIR.into()),
        field(ENV_NODE_NAME, "spec.nodeName".into()),
        field(ENV_POD_NAME, "metadata.name".into()),
        field(ENV_POD_NAMESPACE, "metadata.namespace".into()),
    ];
    // The container's own env wins over the service env the kubelet injects,
    // and kube's in-cluster config reads these two: the agent then reaches the
    // API server without anything routing the `kubernetes` Service.
    if let Some(api) = &spec.pod.api_server {
        env.push(value("KUBERNETES_SERVICE_HOST", api.host.clone()));
        env.push(value("KUBERNETES_SERVICE_PORT", api.port.to_string()));
    }
    if let Some(cgroup) = &spec.pod.cgroup {
        env.push(value(ENV_CGROUP, cgroup.clone()));
    }
    env
}

/// Where an agent container (a slot, or its preflight check, which must
/// see the same) mounts [`agent_volumes`].
pub(super) fn agent_mounts() -> Vec<VolumeMount> {
    vec![
        mount("bpffs", "/sys/fs/bpf", false),
        mount("cgroup", "/sys/fs/cgroup", true),
        mount("run", DEFAULT_RUN_DIR, false),
    ]
}

/// A mount of one of [`agent_volumes`].
fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

/// The host's bpffs and cgroup2 tree, and the slots' shared run directory.
pub(super) fn agent_volumes() -> Vec<Volume> {
    let host = |name: &str, path: &str, type_: &str| Volume {
        name: name.to_owned(),
        host_path: Some(HostPathVolumeSource {
            path: path.to_owned(),
            type_: Some(type_.to_owned()),
        }),
        ..Volume::default()
    };
    vec![
        host("bpffs", "/sys/fs/bpf", "DirectoryOrCreate"),
        host("cgroup", "/sys/fs/cgroup", "Directory"),
        Volume {
            name: "run".into(),
            // Both slots share it for handover.sock; memory-backed, gone with the pod.
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> KmeshUpgradeSpec {
        serde_yaml::from_str(
            "agentImage: agent:v2\nemptyImage: empty:1\npod: {extraArgs: [--x], priorityClassName: p}\n",
        )
        .expect("spec parses")
    }

    fn pod_of(spec: &KmeshUpgradeSpec) -> Pod {
        let target = PodTarget {
            namespace: "mesh",
            upgrade: "baton",
            owner: OwnerReference::default(),
            service_account: "baton-agent",
        };
        build_pod(&target, "n1", spec, "agent:v1")
    }

    fn pod() -> Pod {
        pod_of(&spec())
    }

    /// Literal env values of a container, by name.
    fn env_values(c: &Container) -> BTreeMap<String, Option<String>> {
        c.env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect()
    }

    #[test]
    fn pod_names_are_readable_and_bounded() {
        assert_eq!(pod_name("baton", "node-1"), "baton-node-1");
        let long = "n".repeat(300);
        let a = pod_name("baton", &long);
        assert_eq!(a.len(), 253);
        assert_ne!(a, pod_name("baton", &format!("{long}x")));
        assert_eq!(a, pod_name("baton", &long), "stable across calls");
    }

    #[test]
    fn pair_pod_runs_the_image_in_slot_a_and_parks_slot_b() {
        let pod = pod();
        let ps = pod.spec.as_ref().expect("spec");
        let images: Vec<_> = ps
            .containers
            .iter()
            .map(|c| (c.name.as_str(), c.image.as_deref()))
            .collect();
        assert_eq!(
            images,
            [("slot-a", Some("agent:v1")), ("slot-b", Some("empty:1"))]
        );
        assert_eq!(ps.node_name.as_deref(), Some("n1"));
        assert_eq!(ps.priority_class_name.as_deref(), Some("p"));
        let ann = pod.metadata.annotations.expect("annotations");
        assert_eq!(ann["baton.dev/active-slot"], "a");
        assert_eq!(ann["baton.dev/slot-a-version"], "agent:v1");
        assert_eq!(ann["baton.dev/slot-b-version"], "empty:1");
        assert_eq!(pod.metadata.name.as_deref(), Some("baton-n1"));
    }

    #[test]
    fn slots_get_exactly_the_agent_capabilities_and_no_privilege() {
        for c in &pod().spec.expect("spec").containers {
            let sc = c.security_context.as_ref().expect("security context");
            assert_eq!(sc.privileged, Some(false));
            let caps = sc.capabilities.as_ref().expect("caps");
            assert_eq!(
                caps.add.as_deref(),
                Some(&["BPF", "NET_ADMIN", "SYS_ADMIN"].map(String::from)[..])
            );
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
            let mounts: Vec<_> = c
                .volume_mounts
                .iter()
                .flatten()
                .map(|m| m.mount_path.as_str())
                .collect();
            assert_eq!(mounts, ["/sys/fs/bpf", "/sys/fs/cgroup", "/run/baton"]);
            assert_eq!(c.args.as_deref(), Some(&["--x".to_string()][..]));
        }
    }

    #[test]
    fn pod_runs_under_the_runtime_default_seccomp_profile() {
        let pod = pod();
        let ps = pod.spec.as_ref().expect("spec");
        let profile = ps
            .security_context
            .as_ref()
            .and_then(|sc| sc.seccomp_profile.as_ref())
            .expect("pod seccomp profile");
        assert_eq!(profile.type_, "RuntimeDefault");
        for c in &ps.containers {
            let sc = c.security_context.as_ref().expect("security context");
            assert!(
                sc.seccomp_profile.is_none(),
                "{}: a container profile would override the pod's",
                c.name
            );
        }
    }

    #[test]
    fn host_network_is_the_default_with_cluster_dns() {
        let pod = pod();
        let ps = pod.spec.as_ref().expect("spec");
        assert_eq!(ps.host_network, Some(true));
        assert_eq!(ps.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));

        let mut own = spec();
        own.pod.host_network = false;
        let ps = pod_of(&own).spec.expect("spec");
        assert_eq!(ps.host_network, None);
        assert_eq!(ps.dns_policy, None);
    }

    #[test]
    fn api_server_and_cgroup_reach_both_slots_as_env() {
        for c in &pod().spec.expect("spec").containers {
            let env = env_values(c);
            for name in [
                "KUBERNETES_SERVICE_HOST",
                "KUBERNETES_SERVICE_PORT",
                "BATON_CGROUP",
            ] {
                assert!(
                    !env.contains_key(name),
                    "{}: {name} set without a value in the spec",
                    c.name
                );
            }
        }
        let own: KmeshUpgradeSpec = serde_yaml::from_str(
            "agentImage: agent:v2\nemptyImage: empty:1\n\
             pod: {apiServer: {host: 192.0.2.10, port: 6443}, cgroup: /sys/fs/cgroup/unified/t}\n",
        )
        .expect("spec parses");
        let pod = pod_of(&own);
        let containers = &pod.spec.as_ref().expect("spec").containers;
        assert_eq!(containers.len(), 2);
        for c in containers {
            let env = env_values(c);
            let get = |name: &str| env.get(name).cloned().flatten();
            assert_eq!(
                get("KUBERNETES_SERVICE_HOST").as_deref(),
                Some("192.0.2.10"),
                "{}",
                c.name
            );
            assert_eq!(
                get("KUBERNETES_SERVICE_PORT").as_deref(),
                Some("6443"),
                "{}",
                c.name
            );
            assert_eq!(
                get("BATON_CGROUP").as_deref(),
                Some("/sys/fs/cgroup/unified/t"),
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn each_slot_reads_its_own_and_the_other_version_from_annotations() {
        let pod = pod();
        let b = &pod.spec.as_ref().expect("spec").containers[1];
        let env = |name: &str| {
            b.env
                .iter()
                .flatten()
                .find(|e| e.name == name)
                .unwrap_or_else(|| panic!("no env {name}"))
                .clone()
        };
        assert_eq!(env("BATON_SLOT").value.as_deref(), Some("b"));
        let path = |name: &str| {
            env(name)
                .value_from
                .and_then(|v| v.field_ref)
                .map(|f| f.field_path)
        };
        assert_eq!(
            path("BATON_SLOT_VERSION").as_deref(),
            Some("metadata.annotations['baton.dev/slot-b-version']")
        );
        assert_eq!(
            path("BATON_SLOT_VERSION_ALT").as_deref(),
            Some("metadata.annotations['baton.dev/slot-a-version']")
        );
        assert_eq!(
            path("BATON_SOAK_SECONDS").as_deref(),
            Some("metadata.annotations['baton.dev/soak-seconds']")
        );
    }
}
