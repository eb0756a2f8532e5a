#!/usr/bin/env bash
# CPU per cached check with tracing off, on with an unsampled parent, and on with a
# sampled parent: hopwarden alone (one worker thread), the project's gRPC load
# generator, a local OTLP receiver (examples/otlp_sink.rs) taking the spans.
# Short, bounded runs on 127.0.0.1 (docs/tracing.md quotes the figures).
#
#   bench/tracing.sh                 release build, 3 rounds of 100,000 checks each
#   ROUNDS=1 REQUESTS=20000 BENCH_PROFILE=dev bench/tracing.sh   harness check only
#   NO_BUILD=1 bench/tracing.sh      the binaries already built
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
ROUNDS=${ROUNDS:-3}
REQUESTS=${REQUESTS:-100000}
BENCH_PROFILE=${BENCH_PROFILE:-release}

# NO_BUILD=1: use the binaries already in target/ as they are.
if [ -z "${NO_BUILD:-}" ]; then
  cargo build --profile "$BENCH_PROFILE" --locked --bin hopwarden --example loadgen 2>&1 | tail -1
  # The receiver's own CPU is not measured: a debug build is fine.
  cargo build --locked --example otlp-sink 2>&1 | tail -1
fi
bin=target/$([ "$BENCH_PROFILE" = dev ] && echo debug || echo "$BENCH_PROFILE")
hopwarden=$bin/hopwarden
loadgen=$bin/examples/loadgen
sink_bin=target/debug/examples/otlp-sink

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/rsa.pem" 2>/dev/null
"$hopwarden" token --key "$work/rsa.pem" --kid bench-rsa --allow-non-dev-key --jwks >"$work/jwks.json"
"$loadgen" mint --key "$work/rsa.pem" --kid bench-rsa --count 1 --out "$work/one.txt"
token=$(cat "$work/one.txt")

sink_port=$(port)
"$sink_bin" --listen "127.0.0.1:$sink_port" >"$work/sink.log" 2>&1 &
pids+=($!)

start() { # name tracing-yaml
  local hw_port; hw_port=$(port)
  cat >"$work/$1.yaml" <<YAML
listen: 127.0.0.1:$hw_port
policies: $root/bench/policies
issuers:
  - issuer: https://sts.hopwarden.local
    jwks_file: $work/jwks.json
    algorithms: [RS256]
log: {format: json, level: warn}
worker_threads: 1
dynamic_metadata: false
decision_log: {to: off}
$2
YAML
  "$hopwarden" serve --config "$work/$1.yaml" >"$work/$1.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 1 100); do
    "$loadgen" run --addr "127.0.0.1:$hw_port" --token "$token" --requests 10 >/dev/null 2>&1 && break
    sleep 0.1
  done
  eval "${1}_addr=127.0.0.1:$hw_port ${1}_pid=$pid"
}
admin_port=$(port)
tracing="tracing: {otlp: {endpoint: \"http://127.0.0.1:$sink_port\"}}
admin: {listen: \"127.0.0.1:$admin_port\"}"
start off ""
start on "$tracing"

sampled=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01
unsampled=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00
run() { # label addr pid [args]
  local label=$1 addr=$2 pid=$3; shift 3
  "$loadgen" run --addr "$addr" --server-pid "$pid" --token "$token" --concurrency 32 \
    --requests "$REQUESTS" --label "$label" "$@"
}
# Warm-up: caches, connections, the exporter's channel.
run warm "$off_addr" "$off_pid" >/dev/null
run warm "$on_addr" "$on_pid" --traceparent "$sampled" >/dev/null
for round in $(seq 1 "$ROUNDS"); do
  run off "$off_addr" "$off_pid"
  run on-no-parent "$on_addr" "$on_pid"
  run on-unsampled "$on_addr" "$on_pid" --traceparent "$unsampled"
  run on-sampled "$on_addr" "$on_pid" --traceparent "$sampled"
done | tee "$work/raw.jsonl" | python3 -c '
import json, sys
for l in sys.stdin:
    r = json.loads(l)
    print("  %-14s %8.0f checks/s  cpu/check %5.2f us  errors %d" % (r["label"], r["throughput"], r["server_cpu_us_per_check"], r["errors"]))
'
python3 - "$work/raw.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = {}
for label in ("off", "on-no-parent", "on-unsampled", "on-sampled"):
    med[label] = statistics.median(r["server_cpu_us_per_check"] for r in rows if r["label"] == label)
print("median CPU us per cached check:", ", ".join("%s %.2f" % kv for kv in med.items()))
for label in ("on-no-parent", "on-unsampled", "on-sampled"):
    print("  %s - off: %+.2f us" % (label, med[label] - med["off"]))
PY
sleep 1.5
echo "receiver: $(tail -1 "$work/sink.log" | cut -c1-120)"
curl -fs "http://127.0.0.1:$admin_port/metrics" | grep '^hopwarden_trace_spans' || echo "hopwarden_trace_spans_*: none"
