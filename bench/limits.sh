#!/usr/bin/env bash
# CPU per cached check of hopwarden alone: the bench policy without limits, then with
# a local limit that is never hit (1000000000/s), in alternating rounds (loadgen's
# open loop, server CPU from /proc). Loopback only, bounded (~ROUNDS x 2 x SECONDS s),
# stops what it started. Prints one line per run and the medians.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
RATE=${RATE:-5000}
work=$(mktemp -d)
hw_pid=
cleanup() { [ -z "$hw_pid" ] || kill "$hw_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

cargo build --release --locked --bin hopwarden --example loadgen 2>&1 | tail -1
hopwarden=$root/target/release/hopwarden
loadgen=$root/target/release/examples/loadgen

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/rsa.pem" 2>/dev/null
"$hopwarden" token --key "$work/rsa.pem" --kid bench-rsa --allow-non-dev-key --jwks > "$work/jwks.json"
"$loadgen" mint --key "$work/rsa.pem" --kid bench-rsa --count 1 --out "$work/one.txt"
token=$(cat "$work/one.txt")

mkdir -p "$work/none" "$work/limited"
cp "$root/bench/policies/ledger.yaml" "$work/none/"
cp "$root/bench/policies/ledger.yaml" "$work/limited/"
cat >> "$work/limited/ledger.yaml" <<'YAML'
limits:
  - id: never-hit
    rate: 1000000000/s
YAML

start() { # policy dir
  [ -z "$hw_pid" ] || { kill "$hw_pid"; wait "$hw_pid" 2>/dev/null || true; }
  cat > "$work/hopwarden.yaml" <<YAML
listen: 127.0.0.1:18291
policies: $work/$1
issuers:
  - issuer: https://sts.hopwarden.local
    jwks_file: $work/jwks.json
    algorithms: [RS256]
log: {format: json, level: warn}
worker_threads: 1
dynamic_metadata: false
admin: {listen: "127.0.0.1:18292"}
decision_log: {to: /dev/null}
YAML
  "$hopwarden" serve --config "$work/hopwarden.yaml" >"$work/hopwarden.log" 2>&1 &
  hw_pid=$!
  for _ in $(seq 1 100); do
    curl -fs http://127.0.0.1:18292/readyz >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "error: hopwarden did not start" >&2; cat "$work/hopwarden.log" >&2; return 1
}

for round in $(seq 1 "$ROUNDS"); do
  for policy in none limited; do
    start "$policy"
    "$loadgen" run --addr 127.0.0.1:18291 --token "$token" --requests 5000 >/dev/null
    "$loadgen" run --addr 127.0.0.1:18291 --token "$token" --server-pid "$hw_pid" \
      --label "$policy" --rate "$RATE" --seconds "$SECONDS_PER_RUN" --concurrency 64 \
      | tee -a "$work/runs.jsonl"
  done
done
python3 - "$work/runs.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
med = {}
for label in ("none", "limited"):
    cpu = [r["server_cpu_us_per_check"] for r in runs if r["label"] == label]
    errs = sum(r.get("errors", 0) for r in runs if r["label"] == label)
    med[label] = statistics.median(cpu)
    print(f"{label:8} server CPU per cached check: median {med[label]:.2f} us over {cpu} (errors {errs})")
print(f"a local limit adds {med['limited'] - med['none']:+.2f} us CPU per cached check")
PY
