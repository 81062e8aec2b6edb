//! Every kubesbc.io resource the repository ships — examples/, scripts/ and the chart's plain
//! (non-template) YAML — is checked the way `kubectl apply --validate=strict` is: against the
//! CRD's openAPIV3Schema (types, required fields, enums, bounds, patterns, list uniqueness, and
//! unknown fields refused unless `x-kubernetes-preserve-unknown-fields`) and against its CEL rules
//! (kube-cel). Files under examples/invalid/ must be refused, for the reason their
//! `# expect-rejected: <substring>` line names.
//!
//! Messages follow the wording of Python's jsonschema, which charts/tests/chart_check.py uses on
//! the same files, so one `expect-rejected` line serves both checkers.
//!
//! Not covered: YAML inside shell heredocs (none is a kubesbc.io resource today), Helm templates
//! (rendered and checked by scripts/chart-check.sh), and `format` (int32, ...) checks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crds/ has a parent")
        .to_path_buf()
}

struct Crd {
    api_versions: Vec<String>,
    schema: Value,
}

/// The CRDs by kind, from the types (what crdgen writes to the chart and manifests/).
fn crds() -> BTreeMap<String, Crd> {
    kubesbc_crds::all_crds()
        .into_iter()
        .map(|crd| {
            let v = serde_json::to_value(&crd).expect("CRD serializes");
            let versions = v["spec"]["versions"].as_array().expect("versions");
            let served: Vec<&Value> = versions.iter().filter(|v| v["served"] == true).collect();
            let storage = served
                .iter()
                .find(|v| v["storage"] == true)
                .expect("a storage version");
            let crd_out = Crd {
                api_versions: served
                    .iter()
                    .map(|s| format!("{}/{}", crd.spec.group, s["name"].as_str().expect("name")))
                    .collect(),
                schema: storage["schema"]["openAPIV3Schema"].clone(),
            };
            (crd.spec.names.kind.clone(), crd_out)
        })
        .collect()
}

/// YAML files under `rel`, recursively, sorted. Helm templates are Go templates, not YAML.
fn yaml_files(rel: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name != "templates" && name != "node_modules" {
                    walk(&path, out);
                }
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo().join(rel), &mut out);
    out.sort();
    out
}

fn shown(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The documents of `path` whose apiVersion is kubesbc.io/*. A shipped file that does not parse
/// fails the test: `kubectl apply` would refuse it too.
fn kubesbc_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", shown(path)));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("{} does not parse as YAML: {e}", shown(path)));
    docs.into_iter()
        .filter(|d| {
            d.get("apiVersion")
                .and_then(Value::as_str)
                .is_some_and(|a| a.starts_with("kubesbc.io/"))
        })
        .collect()
}

/// Why the API server would refuse `obj`; empty when it would accept it.
fn refusals(crds: &BTreeMap<String, Crd>, obj: &Value) -> Vec<String> {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    let Some(crd) = crds.get(kind) else {
        return vec![format!("no kubesbc.io CRD has kind {kind:?}")];
    };
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let mut out = Vec::new();
    if !crd.api_versions.iter().any(|v| v == api_version) {
        out.push(format!(
            "apiVersion {api_version:?} is not served for {kind} (served: {:?})",
            crd.api_versions
        ));
    }
    let Some(map) = obj.as_object() else {
        return vec!["not an object".into()];
    };
    // apiVersion, kind and metadata are not in a CRD's schema: the API server adds them.
    let mut body = map.clone();
    body.remove("apiVersion");
    body.remove("kind");
    match body.remove("metadata") {
        Some(meta) => check_metadata(&meta, &mut out),
        None => out.push("'metadata' is a required property".into()),
    }
    strict(&crd.schema, &Value::Object(body), "", &mut out);
    if let Err(errors) = kube_cel::validate(&crd.schema, obj, None) {
        out.extend(
            errors
                .into_vec()
                .into_iter()
                .map(|e| format!("{}: {}", e.field_path, e.message)),
        );
    }
    out
}

/// ObjectMeta as far as a manifest writes it: known fields only, string maps, a name.
fn check_metadata(meta: &Value, out: &mut Vec<String>) {
    const FIELDS: &[&str] = &[
        "name",
        "generateName",
        "namespace",
        "labels",
        "annotations",
        "finalizers",
        "ownerReferences",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "selfLink",
    ];
    let Some(meta) = meta.as_object() else {
        out.push(format!("metadata: {meta} is not of type 'object'"));
        return;
    };
    for key in meta.keys() {
        if !FIELDS.contains(&key.as_str()) {
            out.push(format!("metadata: unknown field \"metadata.{key}\""));
        }
    }
    if !meta.contains_key("name") && !meta.contains_key("generateName") {
        out.push("metadata: 'name' is a required property".into());
    }
    for key in ["name", "generateName", "namespace"] {
        if let Some(v) = meta.get(key).filter(|v| !v.is_string()) {
            out.push(format!("metadata.{key}: {v} is not of type 'string'"));
        }
    }
    for key in ["labels", "annotations"] {
        match meta.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, v) in m.iter().filter(|(_, v)| !v.is_string()) {
                    out.push(format!("metadata.{key}.{k}: {v} is not of type 'string'"));
                }
            }
            Some(v) => out.push(format!("metadata.{key}: {v} is not of type 'object'")),
        }
    }
}

fn field(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn at(path: &str) -> &str {
    if path.is_empty() { "<root>" } else { path }
}

fn is_integer(v: &Value) -> bool {
    v.is_i64() || v.is_u64()
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => is_integer(v),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => false,
    }
}

/// A null the schema does not allow is pruned by the API server, as if the field were absent.
fn pruned(schema: &Value, v: &Value) -> bool {
    v.is_null() && schema["nullable"] != true
}

/// Checks `v` against the structural `schema` the way the API server does under
/// `--validate=strict`, appending one message per problem to `out`.
fn strict(schema: &Value, v: &Value, path: &str, out: &mut Vec<String>) {
    let here = at(path);
    if v.is_null() {
        // Either allowed (nullable) or pruned before validation.
        return;
    }
    if schema["x-kubernetes-int-or-string"] == true {
        if !(is_integer(v) || v.is_string()) {
            out.push(format!("{here}: {v} is not of type 'integer' or 'string'"));
            return;
        }
    } else if let Some(t) = schema["type"].as_str()
        && !type_ok(t, v)
    {
        out.push(format!("{here}: {v} is not of type '{t}'"));
        return;
    }
    if let Some(any) = schema["anyOf"].as_array() {
        let fits = |s: &Value| {
            let mut o = Vec::new();
            strict(s, v, path, &mut o);
            o.is_empty()
        };
        if !any.iter().any(fits) {
            out.push(format!(
                "{here}: {v} is not valid under any of the given schemas"
            ));
        }
    }
    if let Some(values) = schema["enum"].as_array()
        && !values.contains(v)
    {
        out.push(format!(
            "{here}: {v} is not one of {}",
            Value::from(values.clone())
        ));
    }
    match v {
        Value::Number(n) => check_number(schema, n, here, out),
        Value::String(s) => check_string(schema, s, here, out),
        Value::Array(items) => check_array(schema, items, path, out),
        Value::Object(map) => check_object(schema, map, path, out),
        _ => {}
    }
}

fn check_number(schema: &Value, n: &serde_json::Number, here: &str, out: &mut Vec<String>) {
    let x = n.as_f64().unwrap_or(f64::NAN);
    if let Some(min) = schema["minimum"].as_f64() {
        if schema["exclusiveMinimum"] == true && x <= min {
            out.push(format!(
                "{here}: {n} is less than or equal to the minimum of {min}"
            ));
        } else if x < min {
            out.push(format!("{here}: {n} is less than the minimum of {min}"));
        }
    }
    if let Some(max) = schema["maximum"].as_f64() {
        if schema["exclusiveMaximum"] == true && x >= max {
            out.push(format!(
                "{here}: {n} is greater than or equal to the maximum of {max}"
            ));
        } else if x > max {
            out.push(format!("{here}: {n} is greater than the maximum of {max}"));
        }
    }
}

fn check_string(schema: &Value, s: &str, here: &str, out: &mut Vec<String>) {
    let len = s.chars().count() as u64;
    if schema["maxLength"].as_u64().is_some_and(|m| len > m) {
        out.push(format!("{here}: {s:?} is too long"));
    }
    if schema["minLength"].as_u64().is_some_and(|m| len < m) {
        out.push(format!("{here}: {s:?} is too short"));
    }
    if let Some(p) = schema["pattern"].as_str() {
        // Like Go's regexp.MatchString the API server uses: a search, not anchored.
        match regex::Regex::new(p) {
            Ok(re) if re.is_match(s) => {}
            Ok(_) => out.push(format!("{here}: {s:?} does not match '{p}'")),
            Err(e) => out.push(format!("{here}: pattern '{p}' does not compile: {e}")),
        }
    }
}

fn check_array(schema: &Value, items: &[Value], path: &str, out: &mut Vec<String>) {
    let here = at(path);
    let n = items.len() as u64;
    if schema["maxItems"].as_u64().is_some_and(|m| n > m) {
        out.push(format!("{here}: has {n} items, more than maxItems"));
    }
    if schema["minItems"].as_u64().is_some_and(|m| n < m) {
        out.push(format!("{here}: has {n} items, fewer than minItems"));
    }
    if let Some(item) = schema.get("items") {
        for (i, v) in items.iter().enumerate() {
            strict(item, v, &format!("{path}[{i}]"), out);
        }
    }
    // The API server refuses duplicates in sets, and in maps by their keys.
    let key = |v: &Value| -> Value {
        match schema["x-kubernetes-list-map-keys"].as_array() {
            Some(keys) => Value::from(
                keys.iter()
                    .map(|k| v[k.as_str().unwrap_or("")].clone())
                    .collect::<Vec<_>>(),
            ),
            None => v.clone(),
        }
    };
    if matches!(
        schema["x-kubernetes-list-type"].as_str(),
        Some("set" | "map")
    ) {
        for (i, v) in items.iter().enumerate() {
            if items[..i].iter().any(|w| key(w) == key(v)) {
                out.push(format!("{path}[{i}]: duplicate entry {}", key(v)));
            }
        }
    }
}

fn check_object(schema: &Value, map: &Map<String, Value>, path: &str, out: &mut Vec<String>) {
    let here = at(path);
    let n = map.len() as u64;
    if schema["maxProperties"].as_u64().is_some_and(|m| n > m) {
        out.push(format!(
            "{here}: has {n} properties, more than maxProperties"
        ));
    }
    if schema["minProperties"].as_u64().is_some_and(|m| n < m) {
        out.push(format!(
            "{here}: has {n} properties, fewer than minProperties"
        ));
    }
    let props = schema["properties"].as_object();
    for name in schema["required"].as_array().into_iter().flatten() {
        let name = name.as_str().unwrap_or("");
        let prop = props.and_then(|p| p.get(name)).unwrap_or(&Value::Null);
        match map.get(name) {
            Some(v) if !pruned(prop, v) => {}
            _ => out.push(format!("{here}: '{name}' is a required property")),
        }
    }
    let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
    for (name, v) in map {
        let p = field(path, name);
        if let Some(prop) = props.and_then(|p| p.get(name)) {
            strict(prop, v, &p, out);
            continue;
        }
        match schema.get("additionalProperties") {
            Some(Value::Bool(true)) => {}
            Some(extra @ Value::Object(_)) => strict(extra, v, &p, out),
            _ if preserve => {}
            _ => out.push(format!("{here}: unknown field \"{p}\"")),
        }
    }
}

/// The substring the refusal of an examples/invalid/ file must contain, from its first line:
/// charts/tests/chart_check.py reads only that line, and compares without case, as here.
fn expected_rejection(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("readable");
    text.lines()
        .next()
        .and_then(|l| l.trim_start().strip_prefix('#'))
        .and_then(|l| l.trim().strip_prefix("expect-rejected:"))
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "{} does not start with a `# expect-rejected: <substring>` line",
                shown(path)
            )
        })
}

fn is_invalid_example(path: &Path) -> bool {
    path.starts_with(repo().join("examples/invalid"))
}

/// Checks every shipped resource under `rel` except examples/invalid/: each must be accepted.
/// Returns (YAML files, kubesbc.io documents, kinds seen).
fn accept_all(rel: &str) -> (usize, usize, Vec<String>) {
    let crds = crds();
    let files: Vec<PathBuf> = yaml_files(rel)
        .into_iter()
        .filter(|f| !is_invalid_example(f))
        .collect();
    let mut docs = 0;
    let mut kinds = Vec::new();
    let mut problems = Vec::new();
    for f in &files {
        for (i, obj) in kubesbc_docs(f).iter().enumerate() {
            docs += 1;
            kinds.push(obj["kind"].as_str().unwrap_or("").to_string());
            for p in refusals(&crds, obj) {
                problems.push(format!("{} (kubesbc.io document {i}): {p}", shown(f)));
            }
        }
        let text = std::fs::read_to_string(f).expect("readable");
        if text.contains("expect-rejected:") {
            problems.push(format!(
                "{}: has an expect-rejected line but is not under examples/invalid/",
                shown(f)
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "shipped resources the API server would refuse:\n  {}",
        problems.join("\n  ")
    );
    (files.len(), docs, kinds)
}

#[test]
fn every_example_is_accepted() {
    let (files, docs, kinds) = accept_all("examples");
    // A moved or emptied directory must not make this test pass vacuously.
    assert!(files >= 8, "only {files} YAML files under examples/");
    assert!(
        docs >= 6,
        "only {docs} kubesbc.io documents under examples/"
    );
    for kind in [
        "SbcCluster",
        "DispatcherSet",
        "TenantThrottle",
        "AccessList",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "examples/ has no {kind}");
    }
}

#[test]
fn every_resource_under_scripts_is_accepted() {
    let (files, docs, _) = accept_all("scripts");
    assert!(files >= 2, "only {files} YAML files under scripts/");
    assert!(docs >= 1, "no kubesbc.io document under scripts/");
}

#[test]
fn the_charts_plain_yaml_is_accepted() {
    // The chart's own kubesbc.io resources are templates (templates/examples.yaml), rendered and
    // checked by scripts/chart-check.sh; the plain YAML (Chart.yaml, values.yaml, crds/) has
    // none today, but one added there is checked here.
    let (files, _, _) = accept_all("charts");
    assert!(files >= 3, "only {files} plain YAML files under charts/");
}

#[test]
fn every_invalid_example_is_refused_for_its_reason() {
    let crds = crds();
    let files = yaml_files("examples/invalid");
    assert!(
        files.len() >= 5,
        "only {} files in examples/invalid/",
        files.len()
    );
    let mut problems = Vec::new();
    for f in &files {
        let expect = expected_rejection(f);
        let docs = kubesbc_docs(f);
        if docs.is_empty() {
            problems.push(format!("{}: no kubesbc.io document", shown(f)));
        }
        for obj in &docs {
            let why = refusals(&crds, obj);
            if why.is_empty() {
                problems.push(format!("{}: accepted, expected a refusal", shown(f)));
            } else if !why.iter().any(|w| w.to_lowercase().contains(&expect)) {
                problems.push(format!(
                    "{}: refused, but no message contains {expect:?}: {why:?}",
                    shown(f)
                ));
            }
        }
    }
    assert!(problems.is_empty(), "\n  {}", problems.join("\n  "));
}

/// The checker itself refuses what the API server refuses, so the tests above can fail.
#[test]
fn the_strict_checker_refuses_what_the_api_server_refuses() {
    let schema = json!({
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["port"],
                "properties": {
                    "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                    "mode": {"type": "string", "enum": ["a", "b"]},
                    "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
                    "alg": {"x-kubernetes-int-or-string": true,
                            "anyOf": [{"type": "integer"}, {"type": "string"}]},
                    "tags": {"type": "array", "items": {"type": "string"},
                             "x-kubernetes-list-type": "set"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    "opt": {"type": "string", "nullable": true},
                },
            },
        },
    });
    let errors = |spec: Value| {
        let mut out = Vec::new();
        strict(&schema, &json!({ "spec": spec }), "", &mut out);
        out
    };
    let good = json!({"port": 5060, "mode": "a", "name": "abc", "alg": 4, "tags": ["x", "y"],
                      "labels": {"k": "v"}, "free": {"anything": {"goes": 1}}, "opt": null});
    assert_eq!(errors(good), Vec::<String>::new());
    for (spec, want) in [
        (json!({}), "spec: 'port' is a required property"),
        (json!({"port": null}), "spec: 'port' is a required property"),
        (
            json!({"port": "5060"}),
            "spec.port: \"5060\" is not of type 'integer'",
        ),
        (
            json!({"port": 1.5}),
            "spec.port: 1.5 is not of type 'integer'",
        ),
        (
            json!({"port": 0}),
            "spec.port: 0 is less than the minimum of 1",
        ),
        (
            json!({"port": 70000}),
            "spec.port: 70000 is greater than the maximum of 65535",
        ),
        (
            json!({"port": 1, "mode": "c"}),
            "spec.mode: \"c\" is not one of [\"a\",\"b\"]",
        ),
        (
            json!({"port": 1, "name": "A"}),
            "spec.name: \"A\" does not match '^[a-z]+$'",
        ),
        (
            json!({"port": 1, "name": "abcdef"}),
            "spec.name: \"abcdef\" is too long",
        ),
        (
            json!({"port": 1, "alg": true}),
            "spec.alg: true is not of type 'integer' or 'string'",
        ),
        (
            json!({"port": 1, "tags": ["x", "x"]}),
            "spec.tags[1]: duplicate entry \"x\"",
        ),
        (
            json!({"port": 1, "tags": [1]}),
            "spec.tags[0]: 1 is not of type 'string'",
        ),
        (
            json!({"port": 1, "labels": {"k": 1}}),
            "spec.labels.k: 1 is not of type 'string'",
        ),
        (
            json!({"port": 1, "prot": 2}),
            "spec: unknown field \"spec.prot\"",
        ),
    ] {
        let got = errors(spec.clone());
        assert!(
            got.iter().any(|g| g == want),
            "{spec}: want {want:?}, got {got:?}"
        );
    }

    // The implicit root fields: a served apiVersion and a known metadata.
    let crds = crds();
    let mut obj: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo().join("examples/tenantthrottle.yaml")).expect("example"),
    )
    .expect("example parses");
    assert_eq!(refusals(&crds, &obj), Vec::<String>::new());
    obj["metadata"]["lables"] = json!({});
    obj["apiVersion"] = json!("kubesbc.io/v9");
    obj["spec"]["hedaer"] = json!("X");
    let got = refusals(&crds, &obj);
    for want in [
        "metadata: unknown field \"metadata.lables\"",
        "is not served for TenantThrottle",
        "spec: unknown field \"spec.hedaer\"",
    ] {
        assert!(
            got.iter().any(|g| g.contains(want)),
            "want {want:?}, got {got:?}"
        );
    }
    obj["kind"] = json!("Nope");
    assert_eq!(
        refusals(&crds, &obj),
        ["no kubesbc.io CRD has kind \"Nope\""]
    );
}
