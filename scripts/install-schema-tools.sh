#!/usr/bin/env bash
# Installs PyPI's check-jsonschema (a JSON Schema validator that reads YAML) into
# ./.venv, idempotently, and prints its path. tests/schemas.rs validates the example
# policies, suites and configs against schemas/ with it.
set -euo pipefail
cd "$(dirname "$0")/.."

CHECK_JSONSCHEMA_VERSION=0.39.0
venv=.venv

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
if ! "$venv/bin/python" -m pip show check-jsonschema 2>/dev/null | grep -qx "Version: $CHECK_JSONSCHEMA_VERSION"; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "check-jsonschema==$CHECK_JSONSCHEMA_VERSION" >&2
fi
"$venv/bin/python" -m check_jsonschema --version >&2
# The Python that runs it (`python -m check_jsonschema`): a copied venv's scripts name the original's python.
echo "$PWD/$venv/bin/python"
