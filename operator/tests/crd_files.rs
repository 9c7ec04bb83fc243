//! The committed CRD manifests must equal what the Rust types generate.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics

mod support;

/// Every copy of the generated CRD in the repository.
const COPIES: &[&str] = &[
    "crds/kmeshupgrade.yaml",
    "charts/baton/crds/kmeshupgrade.yaml",
];

#[test]
fn committed_crds_match_the_rust_types() {
    let generated = baton_operator::crd::crd_yaml().expect("CRD renders");
    for copy in COPIES {
        let path = support::repo_root().join(copy);
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        assert!(
            committed == generated,
            "{copy} is stale: regenerate it with\n  \
             cargo run -p baton-operator -- crd -o {copy}\n\
             (the chart copy must be identical to crds/kmeshupgrade.yaml)"
        );
    }
}

/// The sample at the repository root, as a user would apply it.
fn sample() -> baton_operator::crd::KmeshUpgrade {
    let path = support::repo_root().join("kmeshupgrade.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
}

#[test]
fn sample_kmeshupgrade_parses_with_every_documented_field() {
    let sample = sample();
    let types = serde_json::to_value(&sample).expect("serializes");
    assert_eq!(types["apiVersion"], "baton.dev/v1alpha1");
    assert_eq!(types["kind"], "KmeshUpgrade");
    let spec = &sample.spec;
    assert_ne!(spec.agent_image, spec.empty_image);
    let api = spec
        .pod
        .api_server
        .as_ref()
        .expect("the sample shows pod.apiServer");
    assert!(!api.host.is_empty() && api.port > 0);
    assert!(spec.pod.host_network);
    // A flag `baton-agent run` really has: a wrong one crash-loops the pod.
    assert_eq!(spec.pod.extra_args, ["--handover-timeout-ms=20000"]);
    assert_eq!(spec.strategy, baton_operator::crd::Strategy::default());
}
