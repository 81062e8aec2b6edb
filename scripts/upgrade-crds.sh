#!/usr/bin/env bash
# Upgrades the kubesbc CRDs in the current kubectl context: Helm installs charts/kubesbc/crds
# once and never upgrades them. Server-side apply, forcing conflicts so that fields Helm set
# at install move to this field manager. Run before `helm upgrade`. See docs/kubernetes.md.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v kubectl >/dev/null || { echo "upgrade-crds: kubectl is required" >&2; exit 1; }
kubectl apply --server-side --force-conflicts --field-manager=kubesbc-crds -f manifests/crds.yaml
kubectl wait --for=condition=Established --timeout=60s \
    crd/sbcclusters.kubesbc.io crd/dispatchersets.kubesbc.io \
    crd/tenantthrottles.kubesbc.io crd/accesslists.kubesbc.io
