//! The committed CRD manifests must equal what the Rust types generate.

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
