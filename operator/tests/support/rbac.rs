//! The fake API server's authorizer: the RBAC rules of the chart (as rendered into
//! manifests/kubesbc.yaml, which scripts/chart-check.sh keeps equal to the chart) applied to
//! every request the operator makes, the way kube-apiserver's RBAC authorizer does:
//!
//! - the verb comes from the method (`GET` one object: get; `GET` a collection: list, or watch
//!   with `watch=true`; `PATCH`: patch; `POST`: create; `PUT`: update; `DELETE`: delete);
//! - a server-side apply that creates the object needs `create` as well as `patch`;
//! - subresources are their own resource (`sbcclusters/status`);
//! - `resourceNames` match named requests only (and list/watch with a
//!   `metadata.name=` field selector), never a create;
//! - a Role (or a RoleBinding to it) can only grant what the granting subject holds itself
//!   (the escalation check).

use serde_json::Value;

/// One RBAC policy rule.
#[derive(Debug, Clone, Default)]
pub struct Rule {
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub verbs: Vec<String>,
    pub resource_names: Vec<String>,
}

impl Rule {
    fn from_value(v: &Value) -> Rule {
        let list = |k: &str| -> Vec<String> {
            v[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        Rule {
            api_groups: list("apiGroups"),
            resources: list("resources"),
            verbs: list("verbs"),
            resource_names: list("resourceNames"),
        }
    }

    fn allows(&self, a: &Attributes) -> bool {
        let any = |l: &[String], x: &str| l.iter().any(|s| s == "*" || s == x);
        let resource = match &a.subresource {
            Some(sub) => format!("{}/{sub}", a.resource),
            None => a.resource.clone(),
        };
        any(&self.verbs, &a.verb)
            && any(&self.api_groups, &a.group)
            && any(&self.resources, &resource)
            && (self.resource_names.is_empty()
                || (a.verb != "create"
                    && a.name
                        .as_ref()
                        .is_some_and(|n| self.resource_names.contains(n))))
    }
}

/// A set of rules granted in a namespace (`None`: cluster-wide).
#[derive(Debug, Clone)]
pub struct Grant {
    pub namespace: Option<String>,
    pub rules: Vec<Rule>,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl std::fmt::Display for Attributes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let res = match &self.subresource {
            Some(s) => format!("{}/{s}", self.resource),
            None => self.resource.clone(),
        };
        write!(
            f,
            "{} {}.{} {}/{}",
            self.verb,
            res,
            if self.group.is_empty() {
                "core"
            } else {
                &self.group
            },
            self.namespace.as_deref().unwrap_or("*"),
            self.name.as_deref().unwrap_or("*")
        )
    }
}

/// The request's attributes, as kube-apiserver's RequestInfo resolver derives them.
pub fn attributes(method: &str, path: &str, query: &str) -> Option<Attributes> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _v, rest @ ..] => (String::new(), rest),
        ["apis", g, _v, rest @ ..] => ((*g).to_owned(), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        rest => (None, rest),
    };
    let (resource, name, subresource) = match rest {
        [r] => ((*r).to_owned(), None, None),
        [r, n] => ((*r).to_owned(), Some((*n).to_owned()), None),
        [r, n, s] => (
            (*r).to_owned(),
            Some((*n).to_owned()),
            Some((*s).to_owned()),
        ),
        _ => return None,
    };
    let params: Vec<(String, String)> = url_params(query);
    let param = |k: &str| params.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
    let verb = match (method, name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) if param("watch").is_some_and(|w| w == "true" || w == "1") => "watch",
        ("GET", false) => "list",
        ("PATCH", _) => "patch",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    };
    // list/watch of one object by field selector is authorized with its name.
    let name = name.or_else(|| {
        param("fieldSelector").and_then(|f| {
            f.split(',')
                .find_map(|s| s.strip_prefix("metadata.name=").map(str::to_owned))
        })
    });
    Some(Attributes {
        verb: verb.to_owned(),
        group,
        resource,
        subresource,
        namespace,
        name,
    })
}

fn url_params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The permissions of one subject.
#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    pub grants: Vec<Grant>,
}

impl Authorizer {
    /// Whether any grant allows `a`.
    pub fn allows(&self, a: &Attributes) -> bool {
        self.grants.iter().any(|g| {
            (g.namespace.is_none() || g.namespace == a.namespace)
                && g.rules.iter().any(|r| r.allows(a))
        })
    }

    /// The operator's permissions as the chart grants them (manifests/kubesbc.yaml: the
    /// ClusterRole bound cluster-wide and the Roles bound in the release namespace).
    pub fn operator() -> Authorizer {
        Authorizer::installed("../manifests/kubesbc.yaml")
    }

    /// The operator's permissions as the chart grants them with `watchNamespace: voip`
    /// (tests/fixtures/kubesbc-watch-voip.yaml, which scripts/chart-check.sh keeps equal to
    /// the chart): Roles only, in `voip` and in the release namespace.
    pub fn operator_watching_voip() -> Authorizer {
        Authorizer::installed("tests/fixtures/kubesbc-watch-voip.yaml")
    }

    /// The permissions of the operator's ServiceAccount in a rendering of the chart (`file`
    /// relative to the operator crate).
    pub fn installed(file: &str) -> Authorizer {
        let text = rendered(file);
        // The account the operator's Deployment runs as.
        let account = text
            .split("\n---")
            .filter_map(|d| serde_saphyr::from_str::<Value>(d).ok())
            .find(|d| d["kind"] == "Deployment")
            .and_then(|d| {
                d["spec"]["template"]["spec"]["serviceAccountName"]
                    .as_str()
                    .map(str::to_owned)
            })
            .expect("the operator Deployment names its ServiceAccount");
        Authorizer::from_manifests(&text, &account)
    }

    /// The rules bound (by the RoleBindings and ClusterRoleBindings in `text`) to the
    /// ServiceAccount `account`.
    pub fn from_manifests(text: &str, account: &str) -> Authorizer {
        let docs: Vec<Value> = text
            .split("\n---")
            .filter_map(|d| serde_saphyr::from_str::<Value>(d).ok())
            .filter(|v| v.is_object())
            .collect();
        let role_rules = |kind: &str, name: &str| -> Vec<Rule> {
            docs.iter()
                .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
                .flat_map(|d| d["rules"].as_array().cloned().unwrap_or_default())
                .map(|r| Rule::from_value(&r))
                .collect()
        };
        let mut grants = Vec::new();
        for b in docs
            .iter()
            .filter(|d| d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding")
        {
            let bound = b["subjects"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|s| s["kind"] == "ServiceAccount" && s["name"].as_str() == Some(account))
            });
            if !bound {
                continue;
            }
            let role_kind = b["roleRef"]["kind"].as_str().unwrap_or_default();
            let role_name = b["roleRef"]["name"].as_str().unwrap_or_default();
            let namespace = (b["kind"] == "RoleBinding")
                .then(|| b["metadata"]["namespace"].as_str().map(str::to_owned))
                .flatten();
            grants.push(Grant {
                namespace,
                rules: role_rules(role_kind, role_name),
            });
        }
        assert!(
            !grants.is_empty(),
            "no role is bound to ServiceAccount {account:?}"
        );
        Authorizer { grants }
    }

    /// A subject holding exactly the rules of `role` (a Role object) in its namespace.
    pub fn of_role(role: &Value) -> Authorizer {
        Authorizer {
            grants: vec![Grant {
                namespace: role["metadata"]["namespace"].as_str().map(str::to_owned),
                rules: rules_of(role),
            }],
        }
    }

    /// The escalation check: every permission `rules` grant in `namespace` must be one this
    /// subject holds. Returns the first that is not.
    pub fn covers(&self, namespace: Option<&str>, rules: &[Rule]) -> Result<(), String> {
        for a in expand(namespace, rules) {
            // A rule without names grants every name: the granter needs it for every name,
            // which an unnamed check asks.
            let held = if a.name.is_none() {
                self.allows_all_names(&a)
            } else {
                self.allows(&a)
            };
            if !held {
                return Err(a.to_string());
            }
        }
        Ok(())
    }

    fn allows_all_names(&self, a: &Attributes) -> bool {
        self.grants.iter().any(|g| {
            (g.namespace.is_none() || g.namespace == a.namespace)
                && g.rules.iter().any(|r| {
                    r.resource_names.is_empty()
                        && Rule {
                            resource_names: Vec::new(),
                            ..r.clone()
                        }
                        .allows(a)
                })
        })
    }
}

/// Each permission `rules` grant in `namespace`, one per group, resource, verb and name.
pub fn expand(namespace: Option<&str>, rules: &[Rule]) -> Vec<Attributes> {
    let mut out = Vec::new();
    for r in rules {
        let names: Vec<Option<String>> = if r.resource_names.is_empty() {
            vec![None]
        } else {
            r.resource_names.iter().cloned().map(Some).collect()
        };
        for g in &r.api_groups {
            for res in &r.resources {
                let (resource, subresource) = match res.split_once('/') {
                    Some((a, b)) => (a.to_owned(), Some(b.to_owned())),
                    None => (res.clone(), None),
                };
                for v in &r.verbs {
                    for n in &names {
                        out.push(Attributes {
                            verb: v.clone(),
                            group: g.clone(),
                            resource: resource.clone(),
                            subresource: subresource.clone(),
                            namespace: namespace.map(str::to_owned),
                            name: n.clone(),
                        });
                    }
                }
            }
        }
    }
    out
}

/// The rules of a Role or ClusterRole object.
pub fn rules_of(role: &Value) -> Vec<Rule> {
    role["rules"]
        .as_array()
        .map(|a| a.iter().map(Rule::from_value).collect())
        .unwrap_or_default()
}

/// The text of a rendering of the chart (`file` relative to the operator crate).
pub fn rendered(file: &str) -> String {
    let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every Role and ClusterRole in a rendering, as (kind, namespace, rules).
pub fn roles_in(text: &str) -> Vec<(String, Option<String>, Vec<Rule>)> {
    text.split("\n---")
        .filter_map(|d| serde_saphyr::from_str::<Value>(d).ok())
        .filter(|d| d["kind"] == "Role" || d["kind"] == "ClusterRole")
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or_default().to_owned(),
                d["metadata"]["namespace"].as_str().map(str::to_owned),
                rules_of(&d),
            )
        })
        .collect()
}

/// The 403 the API server answers.
pub fn forbidden(a: &Attributes, why: &str) -> Value {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
        "message": format!("forbidden: {a}: {why}"),
    })
}
