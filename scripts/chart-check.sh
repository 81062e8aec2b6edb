#!/usr/bin/env bash
# Lints and renders the Helm chart, validates every rendered manifest against Kubernetes 1.33,
# validates examples/ against the generated CRD schemas, checks manifests/ is not stale and
# that bad values are rejected. Prints `N passed, N failed`; exits non-zero on any failure.
#
#   scripts/chart-check.sh            # check
#   scripts/chart-check.sh --update   # regenerate manifests/kubesbc.yaml, then check
#
# The tools live in a venv at .venv (ignored by git), installed from PyPI on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
fail_missing() {
    echo "FAIL tools: $1"
    echo "0 passed, 1 failed"
    exit 1
}

if ! command -v python3 >/dev/null 2>&1; then
    if [ "${CI:-}" = "true" ]; then fail_missing "python3 not found"; fi
    echo "SKIP: python3 not found (a failure under CI=true)"
    exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" || fail_missing "cannot create $venv"
fi
if ! "$venv/bin/python" -c 'import helm_python, kubernetes_validate, jsonschema, yaml' 2>/dev/null; then
    if ! "$venv/bin/pip" install --quiet --disable-pip-version-check \
        helm-python-sdk kubernetes-validate jsonschema PyYAML; then
        if [ "${CI:-}" = "true" ]; then fail_missing "pip install failed"; fi
        echo "SKIP: could not install helm-python-sdk/kubernetes-validate/jsonschema (a failure under CI=true)"
        exit 0
    fi
fi
exec "$venv/bin/python" charts/tests/chart_check.py "$@"
