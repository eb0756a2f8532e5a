#!/usr/bin/env bash
# Rewrites schemas/*.schema.json from the code (`hopwarden schema policy|suite|config`).
# Run it after adding or changing a key in a `*Spec` struct; tests/schemas.rs fails
# until the committed schemas match what the command prints.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --bin hopwarden
mkdir -p schemas
for kind in policy suite config; do
  target/debug/hopwarden schema "$kind" >"schemas/$kind.schema.json"
  echo "schemas/$kind.schema.json"
done
