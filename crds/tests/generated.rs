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

/// Checks the rules of a structural schema the API server enforces on CRDs, so a CRD that
/// `kubectl apply` would refuse fails here first.
fn check_structural(path: &str, s: &serde_json::Value, problems: &mut Vec<String>) {
    let Some(map) = s.as_object() else {
        problems.push(format!("{path}: not an object"));
        return;
    };
    for banned in [
        "$ref",
        "definitions",
        "$defs",
        "$schema",
        "uniqueItems",
        "const",
    ] {
        if map.contains_key(banned) {
            problems.push(format!("{path}: {banned} is not allowed"));
        }
    }
    if let Some(f) = map.get("format").and_then(|f| f.as_str())
        && !["int32", "int64", "date-time", "double", "float", "byte"].contains(&f)
    {
        problems.push(format!("{path}: format {f} is not known to the API server"));
    }
    let int_or_string = map.get("x-kubernetes-int-or-string") == Some(&serde_json::json!(true));
    let preserve =
        map.get("x-kubernetes-preserve-unknown-fields") == Some(&serde_json::json!(true));
    if !map.contains_key("type") && !int_or_string && !preserve {
        problems.push(format!("{path}: no type"));
    }
    if map.contains_key("properties") && map.contains_key("additionalProperties") {
        problems.push(format!(
            "{path}: properties and additionalProperties together"
        ));
    }
    for junctor in ["anyOf", "oneOf", "allOf", "not"] {
        let Some(items) = map.get(junctor) else {
            continue;
        };
        let ok_int_or_string = int_or_string
            && junctor == "anyOf"
            && *items == serde_json::json!([{"type": "integer"}, {"type": "string"}]);
        if ok_int_or_string {
            continue;
        }
        let text = items.to_string();
        if text.contains("\"type\"")
            || text.contains("\"default\"")
            || text.contains("\"description\"")
        {
            problems.push(format!("{path}: {junctor} may only hold value validations"));
        }
    }
    if let Some(props) = map.get("properties").and_then(|p| p.as_object()) {
        for (k, v) in props {
            check_structural(&format!("{path}.{k}"), v, problems);
        }
    }
    if let Some(items) = map.get("items") {
        check_structural(&format!("{path}[]"), items, problems);
    }
    if let Some(ap) = map.get("additionalProperties").filter(|v| v.is_object()) {
        check_structural(&format!("{path}{{}}"), ap, problems);
    }
}

#[test]
fn crd_schemas_are_structural() {
    let mut problems = Vec::new();
    for crd in kubesbc_crds::all_crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let v = serde_json::to_value(&crd).expect("json");
        let schema = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        check_structural(&name, schema, &mut problems);
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn conditions_merge_by_type_under_server_side_apply() {
    for crd in kubesbc_crds::all_crds() {
        let v = serde_json::to_value(&crd).expect("json");
        let conds = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
            ["properties"]["conditions"];
        assert_eq!(
            conds["x-kubernetes-list-type"], "map",
            "{:?}",
            crd.metadata.name
        );
        assert_eq!(
            conds["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"])
        );
    }
}

#[test]
fn short_names_do_not_shadow_built_in_ones() {
    // `ds` is DaemonSet, `sa` ServiceAccount, ...: kubectl would pick the built-in.
    let builtin = [
        "ds", "sa", "svc", "cm", "deploy", "po", "no", "ns", "ep", "ing", "pv", "pvc", "rs", "sts",
        "hpa", "pdb", "netpol", "sc", "crd", "ev", "cs", "limits", "quota", "rc", "csr", "pc",
        "psp",
    ];
    for crd in kubesbc_crds::all_crds() {
        for s in crd.spec.names.short_names.iter().flatten() {
            assert!(
                !builtin.contains(&s.as_str()),
                "{s} shadows a built-in short name"
            );
        }
    }
}

#[test]
fn sbc_cluster_has_a_scale_subresource() {
    // `kubectl scale sbc edge --replicas 3` and HPAs targeting the SbcCluster.
    let crd = serde_json::to_value(<kubesbc_crds::SbcCluster as kube::CustomResourceExt>::crd())
        .expect("json");
    let scale = &crd["spec"]["versions"][0]["subresources"]["scale"];
    assert_eq!(scale["specReplicasPath"], ".spec.replicas");
    assert_eq!(scale["statusReplicasPath"], ".status.replicas");
    assert_eq!(scale["labelSelectorPath"], ".status.selector");
}
