"""Checks the Helm chart, the plain manifests and the example resources.

Run through scripts/chart-check.sh (which prepares the venv). Prints one line per check and a
final `N passed, N failed`; exits non-zero on any failure. `--update` rewrites manifests/.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubesbc"
MANIFESTS = ROOT / "manifests"
KUBE_VERSION = "1.33"
RELEASE = "kubesbc"
NAMESPACE = "kubesbc-system"

results = {"passed": 0, "failed": 0}


def check(name, fn):
    """Runs one check; an exception or a False result is a failure."""
    try:
        ok = fn()
        ok = True if ok is None else ok
    except Exception as e:  # noqa: BLE001 - every failure is reported, none is fatal
        ok = False
        print(f"FAIL {name}: {type(e).__name__}: {e}")
        if os.environ.get("CHART_CHECK_DEBUG"):
            traceback.print_exc()
    else:
        print(("ok   " if ok else "FAIL ") + name)
    results["passed" if ok else "failed"] += 1


def rejected(name, fn, expect):
    """A check that `fn` raises, with `expect` in the message."""
    def run():
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            if expect.lower() not in str(e).lower():
                raise AssertionError(f"rejected, but the message does not mention {expect!r}: {e}")
            return True
        raise AssertionError("accepted, expected a rejection")
    check(name, run)


try:
    import helm_python as helm
    import jsonschema
    import kubernetes_validate
    import yaml
except ImportError as e:
    print(f"FAIL tools: {e}")
    results["failed"] += 1
    print(f"{results['passed']} passed, {results['failed']} failed")
    sys.exit(1)


def docs(text):
    return [d for d in yaml.safe_load_all(text) if d]


def crd_schemas():
    out = {}
    for crd in docs((MANIFESTS / "crds.yaml").read_text()):
        kind = crd["spec"]["names"]["kind"]
        out[kind] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return out


SCHEMAS = crd_schemas()


def unknown_fields(schema, value, path=""):
    """Fields the schema does not declare: `kubectl apply --validate=strict` (the default)
    refuses them, and JSON Schema without additionalProperties: false does not."""
    if isinstance(value, list):
        return [u for i, v in enumerate(value) for u in unknown_fields(schema.get("items", {}), v, f"{path}[{i}]")]
    if not isinstance(value, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    props, extra = schema.get("properties", {}), schema.get("additionalProperties")
    out = []
    for k, v in value.items():
        here = f"{path}.{k}" if path else k
        if k in props:
            out += unknown_fields(props[k], v, here)
        elif isinstance(extra, dict):
            out += unknown_fields(extra, v, here)
        elif extra is not True:
            out.append(here)
    return out


def validate_cr(obj):
    """Validates a kubesbc.io resource against the generated CRD schema (CEL rules: see
    crds/tests/shipped.rs, which checks examples/ and scripts/ with kube-cel)."""
    schema = SCHEMAS[obj["kind"]]
    jsonschema.validate(obj, schema, cls=jsonschema.Draft7Validator)
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    unknown = unknown_fields(schema, body)
    if unknown:
        raise jsonschema.ValidationError(f"unknown field(s) {unknown}: kubectl apply refuses them")


def validate_monitoring(obj):
    """monitoring.coreos.com objects: not in the Kubernetes schemas; the fields we use."""
    spec = obj["spec"]
    if obj["kind"] == "PodMonitor":
        assert spec["selector"]["matchLabels"] and spec["podMetricsEndpoints"][0]["port"] == "admin", spec
    elif obj["kind"] == "PrometheusRule":
        alerts = [r["alert"] for g in spec["groups"] for r in g["rules"]]
        assert len(alerts) == len(set(alerts)) and all(r["expr"] for g in spec["groups"] for r in g["rules"]), alerts
    else:
        raise AssertionError(f"unexpected kind {obj['kind']}")


def validate_any(obj):
    if obj.get("apiVersion", "").startswith("kubesbc.io/"):
        validate_cr(obj)
    elif obj.get("apiVersion", "").startswith("monitoring.coreos.com/"):
        validate_monitoring(obj)
    else:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def render(values=None, name=RELEASE):
    chart = helm.Chart.load(str(CHART))
    return chart.render(values or {}, name=name, namespace=NAMESPACE, is_install=True)


# Non-default values: every option on, a release name longer than any name may be.
LONG_RELEASE = "a-release-name-much-longer-than-any-kubernetes-name-may-be-x"
NON_DEFAULT = {
    "replicas": 2,
    "image": {"repository": "registry.example.com/kubesbc/operator", "tag": "1.2.3", "pullPolicy": "Always"},
    "sbcImage": {"repository": "registry.example.com/kubesbc/sbc", "tag": "1.2.3", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "watchNamespace": "voip",
    "redis": {"enabled": True, "urlSecretNamespace": "voip",
              "auth": {"enabled": True}, "persistence": {"enabled": True, "size": "2Gi", "storageClass": "fast"}},
    # The examples live in the release namespace and cannot use a Redis Secret in "voip":
    # EXAMPLES_ELSEWHERE below checks that this combination is refused.
    "examples": {"enabled": False},
    "monitoring": {"podMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                   "grafanaDashboard": {"enabled": True},
                   "labels": {"release": "prometheus"}},
    "networkPolicy": {"enabled": True},
    "rtpengine": {"enabled": True, "portMin": 20000, "portMax": 29999, "advertise": "203.0.113.7",
                  "nodeSelector": {"media": "yes"}},
}


# Every example on, with the chart's Redis beside them (non-default example values).
EXAMPLES_NON_DEFAULT = {
    "redis": {"enabled": True, "auth": {"enabled": False}},
    "examples": {"enabled": True, "serviceType": "LoadBalancer", "replicas": 3},
}


# The merge patches under scripts/kind/ and the example each patches (scripts/kind-e2e.sh).
KIND_PATCHES = {"redis.patch.yaml": "sbccluster.yaml"}


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch, as `kubectl patch --type merge` applies it."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def kind_e2e_fits_the_examples():
    """What scripts/kind-e2e.sh takes from the examples, kind-config.yaml and the chart agrees.

    On a cluster each mismatch is a failed e2e run: a node port kind does not map, a mapping on
    a node without sbc pods under externalTrafficPolicy Local, a Redis Secret the chart does not
    create, an INVITE the AccessList or the TenantThrottle of the examples refuses.
    """
    import re
    import xml.etree.ElementTree as ET
    example = lambda name: docs((ROOT / "examples" / name).read_text())[0]  # noqa: E731
    cluster = example("sbccluster.yaml")
    script = (ROOT / "scripts" / "kind-e2e.sh").read_text()

    def node_ports_mapped():
        nodes = docs((ROOT / "kind-config.yaml").read_text())[0]["nodes"]
        workers = [n for n in nodes if n.get("role") == "worker"]
        assert len(workers) == 1, "one worker: every sbc pod runs where the ports are mapped"
        mapped = {(m["containerPort"], m.get("protocol", "TCP")): m["hostPort"]
                  for m in workers[0].get("extraPortMappings", [])}
        assert not any(n.get("extraPortMappings") for n in nodes if n.get("role") != "worker"), \
            "a port mapped on the control plane reaches no sbc pod under externalTrafficPolicy Local"
        sip = [lst for lst in cluster["spec"]["listeners"] if lst["transport"] in ("udp", "tcp")]
        for lst in sip:
            key = (lst.get("nodePort"), lst["transport"].upper())
            assert key in mapped, f"listener {lst} has no node port kind-config.yaml maps"
            assert mapped[key] == 5060 and "127.0.0.1:5060" in script, (key, mapped[key])
    check("kind: the example's SIP node ports are mapped to 127.0.0.1:5060 on the worker", node_ports_mapped)

    def redis_patch_names_the_charts_secret():
        patch = yaml.safe_load((ROOT / "scripts" / "kind" / "redis.patch.yaml").read_text())
        ref = patch["spec"]["redis"]["urlSecretRef"]
        release = re.search(r"helm upgrade --install (\S+) charts/kubesbc", script).group(1)
        ns = re.search(r"^NS=(\S+)$", script, re.M).group(1)
        assert f"redis.urlSecretNamespace=\"$NS\"" in script and f"-n \"$NS\" patch sbccluster {cluster['metadata']['name']}" in script
        rendered = render({"redis": {"enabled": True, "urlSecretNamespace": ns}}, name=release)
        secret = next(o for o in objects(rendered) if o["kind"] == "Secret"
                      and o["metadata"]["name"] == ref["name"])
        assert secret["metadata"]["namespace"] == ns and ref["key"] in secret["data"], secret["metadata"]
    check("kind: scripts/kind/redis.patch.yaml names the Redis URL Secret the chart creates", redis_patch_names_the_charts_secret)

    def calls_carry_what_the_examples_require():
        invite = next(e.text for e in ET.parse(ROOT / "scripts" / "kind" / "uac.xml").getroot().iter("send")
                      if e.text and e.text.strip().startswith("INVITE"))
        headers = {line.split(":", 1)[0].strip().lower() for line in invite.splitlines() if ":" in line}
        acl, throttle = example("accesslist.yaml"), example("tenantthrottle.yaml")
        wanted = [h["name"] for r in acl["spec"]["rules"] if r["action"] == "deny"
                  and "INVITE" in r.get("methods", ["INVITE"]) for h in r.get("requiredHeaders", [])]
        wanted.append(throttle["spec"]["header"])
        for h in wanted:
            assert h.lower() in headers, f"the INVITE of scripts/kind/uac.xml lacks {h}"
        tenant = re.search(r"-key tenant (\S+)", script).group(1)
        assert tenant in throttle["spec"]["tenants"], f"tenant {tenant} is not in the TenantThrottle"
        assert "-key signature" in script and "secret company-signature" in script
    check("kind: the calls carry the AccessList's required header and a tenant of the TenantThrottle",
          calls_carry_what_the_examples_require)

    def backends_stay_up_and_answer_probes():
        objs = docs((ROOT / "scripts" / "kind" / "backends.yaml").read_text())
        dep = next(o for o in objs if o["kind"] == "Deployment")
        pod = dep["spec"]["template"]["spec"]
        args = pod["containers"][0]["args"]
        # -bg forks and returns: the container would exit at once and be restarted forever.
        assert "-bg" not in args, args
        scenario = args[args.index("-sf") + 1]
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if scenario.startswith(m["mountPath"] + "/"))
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        cm = volume["configMap"]["name"]
        for name in ("kind-e2e.sh", "kind-up.sh"):
            text = (ROOT / "scripts" / name).read_text()
            assert f"create configmap {cm} --from-file={scenario.rsplit('/', 1)[1]}=tests/scenarios/uas.xml" in text, name
        # sipp's built-in uas does not answer OPTIONS: the dispatcher would mark both down.
        uas = ET.parse(ROOT / "tests" / "scenarios" / "uas.xml").getroot()
        assert any(e.get("request") == "OPTIONS" for e in uas.iter("recv")), "uas.xml answers no OPTIONS"
        svc = next(o for o in objs if o["kind"] == "Service")
        dset = example("dispatcherset.yaml")["spec"]["destinations"]["service"]
        assert svc["metadata"]["name"] == dset["name"] and dset["port"] in [p["name"] for p in svc["spec"]["ports"]]
    check("kind: the sipp backends run in the foreground, answer OPTIONS, and are the example's Service",
          backends_stay_up_and_answer_probes)


def manifest_text(rendered):
    parts = [
        "# Generated from charts/kubesbc with default values by scripts/chart-check.sh --update.\n"
        "# Do not edit: change the chart and regenerate. CRDs are in crds.yaml.\n",
        "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: kubesbc-system\n",
    ]
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        body = rendered[path].strip()
        for doc in body.split("\n---\n"):
            doc = doc.strip().removeprefix("---").strip()
            if doc and any(not line.startswith("#") for line in doc.splitlines() if line.strip()):
                parts.append(f"---\n# Source: {path}\n{doc}\n")
    return "".join(parts)


def objects(rendered):
    out = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        out.extend(docs(text))
    return out


def main():
    update = "--update" in sys.argv

    def lint():
        report = helm.lint(str(CHART), strict=True, kube_version=f"v{KUBE_VERSION}.0")
        bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        if report.get("errors") or bad:
            raise AssertionError(f"{report.get('errors')} {bad}")
    check("helm lint --strict", lint)

    def lint_examples():
        report = helm.lint(str(CHART), {"examples": {"enabled": True}, "redis": {"enabled": True}},
                           strict=True, kube_version=f"v{KUBE_VERSION}.0")
        bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        if report.get("errors") or bad:
            raise AssertionError(f"{report.get('errors')} {bad}")
    check("helm lint --strict (examples and redis enabled)", lint_examples)

    default = render()
    full = render({"examples": {"enabled": True}, "redis": {"enabled": True}})
    nondefault = render(NON_DEFAULT, name=LONG_RELEASE)

    def lint_nondefault():
        report = helm.lint(str(CHART), NON_DEFAULT, strict=True, kube_version=f"v{KUBE_VERSION}.0")
        bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        if report.get("errors") or bad:
            raise AssertionError(f"{report.get('errors')} {bad}")
    check("helm lint --strict (non-default values)", lint_nondefault)

    examples_nondefault = render(EXAMPLES_NON_DEFAULT, name=LONG_RELEASE)
    for label, rendered in (("default values", default), ("examples+redis", full),
                            ("non-default values", nondefault),
                            ("non-default examples", examples_nondefault)):
        objs = objects(rendered)
        check(f"render {label}: produces objects", lambda objs=objs: len(objs) > 0)
        for obj in objs:
            name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            check(f"validate {label}: {name} (kubernetes {KUBE_VERSION})", lambda obj=obj: validate_any(obj))

    def names_fit():
        for o in objects(nondefault) + objects(examples_nondefault):
            name = o["metadata"]["name"]
            assert len(name) <= 63, f"{o['kind']}/{name} is {len(name)} characters"
            for k, v in o["metadata"].get("labels", {}).items():
                assert len(str(v)) <= 63, f"{o['kind']}/{name} label {k}={v}"
    check("a long release name gives names and labels of at most 63 characters", names_fit)

    def notes_are_real():
        for rendered in (default, full, nondefault, examples_nondefault):
            notes = next(v for k, v in rendered.items() if k.endswith("NOTES.txt"))
            assert "example.invalid" not in notes, notes
        chart = (CHART / "Chart.yaml").read_text()
        assert "example.invalid" not in chart, "Chart.yaml names a URL that does not exist"
    check("NOTES and Chart.yaml point at nothing that does not exist", notes_are_real)

    def redis_secret_beside_the_clusters():
        objs = objects(nondefault)
        url = next(o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"].endswith("-redis-url"))
        assert url["metadata"]["namespace"] == "voip", url["metadata"]
        import base64
        text = base64.b64decode(url["data"]["url"]).decode()
        assert text.startswith("redis://:") and "@" in text, "the URL carries the password"
        dep = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-redis"))
        vol = dep["spec"]["template"]["spec"]["volumes"][0]
        assert "persistentVolumeClaim" in vol, vol
        assert any(o["kind"] == "PersistentVolumeClaim" for o in objs)
    check("Redis: URL Secret in the SbcClusters' namespace, password, persistence", redis_secret_beside_the_clusters)

    def rtpengine_daemonset():
        ds = next(o for o in objects(nondefault) if o["kind"] == "DaemonSet"
                  and o["metadata"]["name"].endswith("-rtpengine"))
        spec = ds["spec"]["template"]["spec"]
        assert spec["hostNetwork"] is True, spec
        cmd = spec["containers"][0]["args"][0]
        for want in ("--table=-1", "--port-min=20000", "--port-max=29999", "!203.0.113.7", "--listen-ng="):
            assert want in cmd, cmd
        assert spec["nodeSelector"] == {"media": "yes"}, spec
        assert not any(o["kind"] == "DaemonSet" for o in objects(default)), "off by default"
    check("rtpengine: a hostNetwork DaemonSet in userspace with the port range", rtpengine_daemonset)

    rejected("an rtpengine port range upside down is refused",
             lambda: render({"rtpengine": {"enabled": True, "portMin": 40000, "portMax": 30000}}),
             "rtpengine.portMin must not be above rtpengine.portMax")

    rejected("examples with the Redis Secret in another namespace are refused, not rendered without Redis",
             lambda: render({"redis": {"enabled": True, "urlSecretNamespace": "voip"},
                             "examples": {"enabled": True}}),
             "redis.urlSecretNamespace=voip")

    def examples_use_the_redis():
        sbc = next(o for o in objects(examples_nondefault) if o["kind"] == "SbcCluster")
        assert sbc["spec"]["redis"]["urlSecretRef"]["name"].endswith("-redis-url"), sbc["spec"]
        assert sbc["spec"]["service"]["type"] == "LoadBalancer" and sbc["spec"]["replicas"] == 3, sbc["spec"]
    check("the example SbcCluster uses the chart's Redis", examples_use_the_redis)

    def operator_env():
        objs = objects(nondefault)
        dep = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["labels"].get("app.kubernetes.io/component") == "operator")
        env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["KUBESBC_SBC_IMAGE"] == "registry.example.com/kubesbc/sbc:1.2.3", env
        assert env["KUBESBC_SBC_IMAGE_PULL_POLICY"] == "Always", env
        assert env["KUBESBC_SBC_IMAGE_PULL_SECRETS"] == "regcred", env
        assert env["WATCH_NAMESPACE"] == "voip", env
        assert env["LEASE_NAME"] != "kubesbc-operator" and len(env["LEASE_NAME"]) <= 63, env
        d = next(o for o in objects(default) if o["kind"] == "Deployment")
        denv = {e["name"]: e.get("value") for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
        chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
        assert denv["KUBESBC_SBC_IMAGE"] == f"ghcr.io/kubesbc/sbc:{chart['appVersion']}", denv
    check("sbc image values, watch namespace and lease name reach the operator", operator_env)

    def monitoring_and_policies():
        objs = objects(nondefault)
        kinds_ = {o["kind"] for o in objs}
        assert {"PodMonitor", "PrometheusRule", "NetworkPolicy"} <= kinds_, kinds_
        rule = next(o for o in objs if o["kind"] == "PrometheusRule")
        alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
        assert alerts == {"KubesbcDestinationDown", "KubesbcNoDestinationUp", "KubesbcRedisFallback",
                          "KubesbcHigh5xxRate", "KubesbcBanRate"}, alerts
        # The sbc pods' policies come from the operator (one per SbcCluster, with its admin
        # port): the chart tells it who may reach the admin port.
        assert not any(o["kind"] == "NetworkPolicy" and o["metadata"]["name"].endswith("-sbc") for o in objs)
        d = next(o for o in objs if o["kind"] == "Deployment"
                 and o["spec"]["template"]["spec"]["containers"][0]["name"] == "operator")
        env = {e["name"]: e.get("value") for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
        peers = json.loads(env["KUBESBC_NETWORK_POLICY"])
        assert peers["operatorPodLabels"]["app.kubernetes.io/component"] == "operator", peers
        assert peers["prometheusNamespaceSelector"] and peers["prometheusPodSelector"], peers
        assert set(peers) == {"operatorNamespace", "operatorPodLabels", "prometheusNamespaceSelector",
                              "prometheusPodSelector"}, peers
        assert not any(o["kind"] in ("PodMonitor", "PrometheusRule", "NetworkPolicy") for o in objects(default))
    check("monitoring, and NetworkPolicies: the operator told who reaches the admin port", monitoring_and_policies)

    def grafana_dashboard():
        cms = [o for o in objects(nondefault) if o["kind"] == "ConfigMap"
               and o["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
        assert len(cms) == 1, cms
        dash = json.loads(cms[0]["data"]["kubesbc.json"])
        shipped = json.loads((CHART / "dashboards" / "kubesbc.json").read_text())
        assert dash == shipped and dash["panels"], "the ConfigMap carries dashboards/kubesbc.json"
        assert not any(o["kind"] == "ConfigMap" and o["metadata"].get("labels", {}).get("grafana_dashboard")
                       for o in objects(default))
    check("grafana dashboard ConfigMap (optional) carries dashboards/kubesbc.json", grafana_dashboard)

    def kinds(rendered):
        return sorted(o["kind"] for o in objects(rendered))
    check("default values: no Redis, no examples",
          lambda: not any(o["kind"] in ("SbcCluster",) or "redis" in o["metadata"]["name"]
                          for o in objects(default)))
    check("examples enabled: SbcCluster, DispatcherSet, TenantThrottle, AccessList rendered",
          lambda: {"SbcCluster", "DispatcherSet", "TenantThrottle", "AccessList"} <= set(kinds(full)))

    def operator_locked_down():
        dep = next(o for o in objects(default) if o["kind"] == "Deployment")
        pod = dep["spec"]["template"]["spec"]
        c = pod["containers"][0]["securityContext"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert c["readOnlyRootFilesystem"] is True
        assert c["capabilities"]["drop"] == ["ALL"]
        assert c["allowPrivilegeEscalation"] is False
        assert pod["containers"][0]["livenessProbe"] and pod["containers"][0]["readinessProbe"]
    check("operator runs non-root, read-only, without capabilities, with probes", operator_locked_down)

    def least_privilege():
        role = next(o for o in objects(default) if o["kind"] == "ClusterRole")
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
            if "secrets" in rule["resources"]:
                # list/watch serve the operator's metadata-only watch; never write.
                assert rule["verbs"] == ["get", "list", "watch"], rule
            if "delete" in rule["verbs"]:
                assert set(rule["resources"]) <= {"services", "horizontalpodautoscalers",
                                                  "deployments", "daemonsets", "poddisruptionbudgets",
                                                  "serviceaccounts", "roles", "rolebindings",
                                                  "networkpolicies"}, rule
    check("ClusterRole has no wildcards, deletes only what it renders, secrets read-only", least_privilege)

    # With watchNamespace the operator's rules are a Role in that namespace, the same rules
    # as the cluster-wide ClusterRole without it, and nothing is granted cluster-wide.
    watching = render({"watchNamespace": "voip"})

    def rbac_both_ways():
        objs = objects(default)
        cluster_role = next(o for o in objs if o["kind"] == "ClusterRole")
        binding = next(o for o in objs if o["kind"] == "ClusterRoleBinding")
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                      "name": cluster_role["metadata"]["name"]}, binding
        for rendered in (watching, nondefault):
            objs = objects(rendered)
            cluster_wide = [f"{o['kind']}/{o['metadata']['name']}" for o in objs
                            if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
            assert cluster_wide == [], f"granted cluster-wide with watchNamespace: {cluster_wide}"
            roles = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Role"}
            bindings = [o for o in objs if o["kind"] == "RoleBinding"]
            ops = [b for b in bindings if b["metadata"]["namespace"] == "voip"]
            assert len(ops) == 1, bindings
            role = next(o for o in objs if o["kind"] == "Role" and o["metadata"]["namespace"] == "voip")
            assert ops[0]["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                         "name": role["metadata"]["name"]}, ops[0]
            account = ops[0]["subjects"][0]
            assert account["kind"] == "ServiceAccount" and account["namespace"] == NAMESPACE, account
            assert role["rules"] == cluster_role["rules"], "the Role and the ClusterRole differ"
            # The Lease stays in the release namespace.
            leader = next(r for r in roles.values() if r["metadata"]["name"].endswith("-leader"))
            assert leader["metadata"]["namespace"] == NAMESPACE, leader
    check("RBAC: a ClusterRole without watchNamespace, only a Role in that namespace with it", rbac_both_ways)

    # The operator's tests authorize against both renderings: manifests/kubesbc.yaml (every
    # namespace) and this fixture (namespace voip only).
    fixture = ROOT / "operator" / "tests" / "fixtures" / "kubesbc-watch-voip.yaml"
    want_fixture = manifest_text(watching).replace(
        "with default values", "with watchNamespace=voip", 1).replace(
        "CRDs are in crds.yaml.", "The operator's tests authorize against it.", 1)
    if update:
        fixture.parent.mkdir(parents=True, exist_ok=True)
        fixture.write_text(want_fixture)
    check("operator/tests/fixtures/kubesbc-watch-voip.yaml is not stale (run scripts/chart-check.sh --update)",
          lambda: fixture.read_text() == want_fixture)

    # manifests/ is the chart rendered with default values, plus the CRDs.
    want = manifest_text(default)
    target = MANIFESTS / "kubesbc.yaml"
    if update:
        target.write_text(want)
    check("manifests/kubesbc.yaml is not stale (run scripts/chart-check.sh --update)",
          lambda: target.read_text() == want)
    chart_crds = (CHART / "crds" / "kubesbc.io.yaml").read_text()
    check("manifests/crds.yaml equals the chart's CRDs",
          lambda: (MANIFESTS / "crds.yaml").read_text() == chart_crds)
    for obj in docs(target.read_text()):
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        check(f"validate manifests/kubesbc.yaml: {name}", lambda obj=obj: validate_any(obj))

    # The CRDs themselves are valid apiextensions.k8s.io/v1 objects.
    for crd in docs((MANIFESTS / "crds.yaml").read_text()):
        check(f"validate manifests/crds.yaml: CustomResourceDefinition/{crd['metadata']['name']}",
              lambda crd=crd: kubernetes_validate.validate(crd, KUBE_VERSION, strict=True))

    # Example custom resources against the generated CRD schemas.
    examples = sorted((ROOT / "examples").glob("*.yaml")) + sorted((ROOT / "examples").glob("hostnetwork/*.yaml"))
    check("examples/ has an example of each kind",
          lambda: {d["kind"] for f in examples for d in docs(f.read_text())}
          >= {"SbcCluster", "DispatcherSet", "TenantThrottle", "AccessList"})
    for f in examples:
        for obj in docs(f.read_text()):
            check(f"validate examples/{f.relative_to(ROOT / 'examples')}: {obj['kind']}/{obj['metadata']['name']}",
                  lambda obj=obj: validate_any(obj))

    # Every manifest scripts/kind-e2e.sh (and kind-up.sh) applies besides the chart and
    # examples/. A `*.patch.yaml` is a merge patch (`kubectl patch --type merge --patch-file`)
    # of the example KIND_PATCHES names: that example, patched, is validated.
    for f in sorted((ROOT / "scripts" / "kind").glob("*.yaml")):
        if f.name.endswith(".patch.yaml"):
            target = KIND_PATCHES.get(f.name)
            if target is None:
                check(f"scripts/kind/{f.name} is a patch of a known example (KIND_PATCHES)", lambda: False)
                continue
            patched = merge_patch(docs((ROOT / "examples" / target).read_text())[0], yaml.safe_load(f.read_text()))
            check(f"validate examples/{target} patched with scripts/kind/{f.name}",
                  lambda obj=patched: validate_any(obj))
            continue
        for obj in docs(f.read_text()):
            check(f"validate scripts/kind/{f.name}: {obj['kind']}/{obj['metadata']['name']}",
                  lambda obj=obj: validate_any(obj))
    kind_e2e_fits_the_examples()

    # examples/invalid/ holds resources the CRD schemas must refuse, each with the word the
    # refusal must contain on its first line (`# expect-rejected: WORD`).
    for f in sorted((ROOT / "examples" / "invalid").glob("*.yaml")):
        expect = f.read_text().splitlines()[0].split("expect-rejected:", 1)[-1].strip()
        for obj in docs(f.read_text()):
            rejected(f"CRD rejects examples/invalid/{f.name}", lambda obj=obj: validate_cr(obj), expect)

    # The objects the operator renders are valid Kubernetes 1.33 objects too.
    import shutil
    import subprocess
    if shutil.which("cargo"):
        proc = subprocess.run(["cargo", "run", "-q", "-p", "kubesbc-operator", "--example", "render"],
                              cwd=ROOT, capture_output=True, text=True)
        check("operator renders the examples", lambda: proc.returncode == 0 or print(proc.stderr) or False)
        if proc.returncode == 0:
            for obj in docs(proc.stdout):
                name = f"{obj['kind']}/{obj['metadata']['name']}"
                check(f"validate operator output: {name} (kubernetes {KUBE_VERSION})",
                      lambda obj=obj: validate_any(obj))

            def redis_policy_admits_the_sbc_pods():
                # The Redis policy must select the chart's Redis pods and admit the pods the
                # operator renders: a label drift on either side would cut the sbc off Redis.
                objs = objects(nondefault)
                pol = next(o for o in objs if o["kind"] == "NetworkPolicy" and o["metadata"]["name"].endswith("-redis"))
                redis = next(o for o in objs if o["kind"] in ("Deployment", "StatefulSet")
                             and o["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "redis")
                want = pol["spec"]["podSelector"]["matchLabels"]
                have = redis["spec"]["template"]["metadata"]["labels"]
                assert want.items() <= have.items(), (want, have)
                sbc = [o for o in docs(proc.stdout) if o["kind"] in ("Deployment", "DaemonSet")]
                assert sbc, "the operator renders sbc pods"
                peers = pol["spec"]["ingress"][0]["from"]
                for o in sbc:
                    labels = o["spec"]["template"]["metadata"]["labels"]
                    assert any(p["podSelector"]["matchLabels"].items() <= labels.items() for p in peers), (peers, labels)
            check("the Redis NetworkPolicy selects the chart's Redis and admits the operator's sbc pods",
                  redis_policy_admits_the_sbc_pods)
    elif os.environ.get("CI") == "true":
        check("cargo available for the operator output check", lambda: False)

    # Bad values are refused by values.schema.json ...
    chart = helm.Chart.load(str(CHART))
    check("values.schema.json accepts the defaults", lambda: chart.validate_schema({}))
    rejected("values.schema.json rejects replicas: 0",
             lambda: chart.validate_schema({"replicas": 0}), "replicas")
    rejected("values.schema.json rejects metrics.port: 70000",
             lambda: chart.validate_schema({"metrics": {"port": 70000}}), "port")
    rejected("values.schema.json rejects rtpengine.ngPort: 0",
             lambda: chart.validate_schema({"rtpengine": {"ngPort": 0}}), "ngPort")
    rejected("values.schema.json rejects examples.sipPort: 70000",
             lambda: chart.validate_schema({"examples": {"sipPort": 70000}}), "sipPort")
    rejected("values.schema.json rejects an unknown algorithm",
             lambda: chart.validate_schema({"examples": {"algorithm": "roundrobin"}}), "algorithm")
    rejected("render refuses replicas: 0", lambda: render({"replicas": 0}), "replicas")

    # ... and bad resources by the CRD schemas.
    cluster = docs((ROOT / "examples" / "sbccluster.yaml").read_text())[0]
    dset = docs((ROOT / "examples" / "dispatcherset.yaml").read_text())[0]
    throttle = docs((ROOT / "examples" / "tenantthrottle.yaml").read_text())[0]
    acl = docs((ROOT / "examples" / "accesslist.yaml").read_text())[0]

    def with_(obj, path, value):
        o = copy.deepcopy(obj)
        cur = o
        for k in path[:-1]:
            cur = cur[k]
        cur[path[-1]] = value
        return o
    rejected("CRD rejects SbcCluster replicas: 0",
             lambda: validate_cr(with_(cluster, ["spec", "replicas"], 0)), "minimum")
    rejected("CRD rejects SbcCluster listener port 70000",
             lambda: validate_cr(with_(cluster, ["spec", "listeners", 0, "port"], 70000)), "maximum")
    rejected("CRD rejects SbcCluster listener transport sctp",
             lambda: validate_cr(with_(cluster, ["spec", "listeners", 0, "transport"], "sctp")), "sctp")
    rejected("CRD rejects DispatcherSet algorithm roundrobin",
             lambda: validate_cr(with_(dset, ["spec", "algorithm"], "roundrobin")), "roundrobin")
    rejected("CRD rejects DispatcherSet algorithm 7 (not a Kamailio algorithm we implement)",
             lambda: validate_cr(with_(dset, ["spec", "algorithm"], 7)), "7")
    check("CRD accepts DispatcherSet algorithm 4",
          lambda: validate_cr(with_(dset, ["spec", "algorithm"], 4)))
    rejected("CRD rejects TenantThrottle response code 200",
             lambda: validate_cr(with_(throttle, ["spec", "response", "code"], 200)), "minimum")
    rejected("CRD rejects AccessList source that is not a CIDR",
             lambda: validate_cr(with_(acl, ["spec", "rules", 1, "sources"], ["example.com"])), "does not match")
    rejected("CRD rejects AccessList action maybe",
             lambda: validate_cr(with_(acl, ["spec", "rules", 0, "action"], "maybe")), "maybe")
    rejected("CRD rejects AccessList trusted entry that is not a CIDR",
             lambda: validate_cr(with_(acl, ["spec", "trusted"], ["carrier.example.com"])), "does not match")
    rejected("CRD rejects AccessList banResponseCode 200",
             lambda: validate_cr(with_(acl, ["spec", "banResponseCode"], 200)), "minimum")
    rejected("CRD rejects TenantThrottle missingTenant maybe",
             lambda: validate_cr(with_(throttle, ["spec", "missingTenant"], "maybe")), "maybe")
    rejected("CRD rejects TenantThrottle dialogTimeoutSecs 10",
             lambda: validate_cr(with_(throttle, ["spec", "dialogTimeoutSecs"], 10)), "minimum")
    host = docs((ROOT / "examples" / "hostnetwork/sbccluster.yaml").read_text())[0]
    rejected("CRD rejects SbcCluster auth algorithm MD4",
             lambda: validate_cr(with_(host, ["spec", "auth", "algorithms"], ["MD4"])), "MD4")
    rejected("CRD rejects SbcCluster auth nonceLifetimeSecs 1",
             lambda: validate_cr(with_(host, ["spec", "auth", "nonceLifetimeSecs"], 1)), "minimum")
    rejected("CRD rejects SbcCluster auth challenge basic",
             lambda: validate_cr(with_(host, ["spec", "auth", "methods"], {"INVITE": "basic"})), "basic")
    rejected("CRD rejects SbcCluster auth credentialsKey without {user}",
             lambda: validate_cr(with_(host, ["spec", "auth", "credentialsKey"], "subscriber:alice")),
             "does not match")
    rejected("CRD rejects SbcCluster auth without nonceSecretRef",
             lambda: validate_cr(with_(host, ["spec", "auth"], {"realm": "sip.example.com"})), "nonceSecretRef")

    print(f"{results['passed']} passed, {results['failed']} failed")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
