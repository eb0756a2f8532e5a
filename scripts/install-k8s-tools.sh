#!/usr/bin/env bash
# Installs the offline Kubernetes tools the chart tests use (tests/helm.rs), all from
# package registries, idempotently, and prints the Python that runs them:
#   - PyPI helm-python-sdk: Helm's own Go SDK (v4) as a library in the wheel; renders,
#     lints and checks values.schema.json with no helm binary and no cluster;
#   - PyPI kubernetes-validate: Kubernetes' JSON schemas, strict mode;
#   - npm @kubernetes-models/istio and @kubernetes-models/prometheus-operator (tarballs
#     only, never run): their sources embed the OpenAPI schemas of Istio's
#     AuthorizationPolicy CRD and the Prometheus Operator's ServiceMonitor CRD, which
#     scripts/k8s_check.py extracts to validate those resources.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_SDK_VERSION=0.2.2
KUBERNETES_VALIDATE_VERSION=1.37.0
# Versions whose CommonJS sources hold the CRD schema as a JSON literal.
ISTIO_MODELS_VERSION=2.3.0
PROMETHEUS_MODELS_VERSION=1.6.3
venv=.venv
crds=$venv/k8s-crds

if [ ! -x "$venv/bin/python" ]; then
  command -v python3 >/dev/null 2>&1 || {
    echo "error: python3 is needed (apt-get install python3 python3-venv)" >&2
    exit 1
  }
  python3 -m venv "$venv" >&2 || {
    echo "error: python3 -m venv failed (apt-get install python3-venv)" >&2
    exit 1
  }
fi

# `python -m pip`, not bin/pip: a copied venv's bin/pip still names the original's python.
have() { "$venv/bin/python" -m pip show "$1" 2>/dev/null | grep -qx "Version: $2"; }
if ! have helm-python-sdk "$HELM_SDK_VERSION" || ! have kubernetes-validate "$KUBERNETES_VALIDATE_VERSION"; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "helm-python-sdk==$HELM_SDK_VERSION" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >&2
fi

fetch_npm() { # package version directory
  local dir=$crds/$3
  [ -f "$dir/.version" ] && [ "$(cat "$dir/.version")" = "$2" ] && return 0
  command -v npm >/dev/null 2>&1 || {
    echo "error: npm is needed to fetch $1 (apt-get install npm)" >&2
    exit 1
  }
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$1@$2" >/dev/null)
  rm -rf "$dir" && mkdir -p "$dir"
  tar xzf "$tmp"/*.tgz -C "$dir" --strip-components=1
  rm -rf "$tmp"
  echo "$2" >"$dir/.version"
}
fetch_npm @kubernetes-models/istio "$ISTIO_MODELS_VERSION" istio
fetch_npm @kubernetes-models/prometheus-operator "$PROMETHEUS_MODELS_VERSION" prometheus-operator

"$venv/bin/python" -c 'import helm_python, kubernetes_validate' >&2
echo "$PWD/$venv/bin/python"
