//! The CRD YAML checked into the chart and `manifests/` is exactly what `crdgen` prints.
//! Run with `KUBESBC_BLESS=1` to rewrite the files after changing a CRD type.

use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crds/ has a parent")
        .to_path_buf()
}

#[test]
fn generated_crds_are_not_stale() {
    let want = kubesbc_crds::crds_yaml().expect("CRDs serialize");
    for rel in ["charts/kubesbc/crds/kubesbc.io.yaml", "manifests/crds.yaml"] {
        let path = repo().join(rel);
        if std::env::var_os("KUBESBC_BLESS").is_some() {
            std::fs::write(&path, &want).expect("write generated CRDs");
            continue;
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "{rel} is stale: run `KUBESBC_BLESS=1 cargo test -p kubesbc-crds --test generated` \
             (or `cargo run -p kubesbc-crds --bin crdgen > {rel}`)"
        );
    }
}

#[test]
fn every_crd_has_status_short_names_and_columns() {
    for crd in kubesbc_crds::all_crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        assert_eq!(crd.spec.group, "kubesbc.io");
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|s| !s.is_empty()),
            "{name} has no short name"
        );
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{name} has no status subresource"
        );
        let cols = v.additional_printer_columns.as_deref().unwrap_or_default();
        assert!(cols.iter().any(|c| c.name == "Accepted"), "{name}");
    }
}

#[test]
fn algorithm_is_a_structural_int_or_string_enum() {
    let crd = serde_json::to_value(kubesbc_crds::all_crds().remove(1)).expect("json");
    let alg = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["algorithm"];
    assert_eq!(alg["x-kubernetes-int-or-string"], true);
    assert_eq!(
        alg["anyOf"],
        serde_json::json!([{"type": "integer"}, {"type": "string"}])
    );
    let values = alg["enum"].as_array().expect("enum");
    assert!(values.contains(&serde_json::json!("round-robin")));
    assert!(values.contains(&serde_json::json!(4)));
    assert!(!values.contains(&serde_json::json!(7)));
}
