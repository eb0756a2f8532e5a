#!/usr/bin/env bash
# First the limits stage alone, in process (examples/limit_cost.rs): nanoseconds per
# check with no limits, one local limit, three limits and the Redis store (this
# script's redis-server, and a store that never answers), each with its target from
# issue #20 and met/MISSED. COST_ONLY=1 stops there (about 30 s).
#
# Then CPU per cached check of hopwarden alone: the bench policy without limits, with a local
# limit that is never hit (1000000000/s), and with the same limit shared through Redis
# (rate_limits.store: redis, a redis-server of the script's own), in alternating rounds
# (loadgen's open loop, server CPU from /proc). Then the overshoot of a shared budget
# that is hit: two replicas sharing one Redis, each driven at twice the limit for
# OVERSHOOT_SECONDS. Loopback only, bounded (~ROUNDS x 3 x SECONDS_PER_RUN +
# OVERSHOOT_SECONDS s), stops what it started (by pid). Prints one line per run and
# the medians.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
RATE=${RATE:-5000}
OVERSHOOT_SECONDS=${OVERSHOOT_SECONDS:-10}
LIMIT_RATE=${LIMIT_RATE:-1000}   # the hit limit, per second; each replica is driven at twice it
LIMIT_BURST=${LIMIT_BURST:-100}
REDIS_PORT=${REDIS_PORT:-18295}
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

redis_server=$("$root/scripts/install-redis.sh")
cargo build --release --locked --bin hopwarden --example loadgen --example limit_cost 2>&1 | tail -1
hopwarden=$root/target/release/hopwarden
loadgen=$root/target/release/examples/loadgen

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/rsa.pem" 2>/dev/null
"$hopwarden" token --key "$work/rsa.pem" --kid bench-rsa --allow-non-dev-key --jwks > "$work/jwks.json"
"$loadgen" mint --key "$work/rsa.pem" --kid bench-rsa --count 1 --out "$work/one.txt"
token=$(cat "$work/one.txt")

mkdir -p "$work/none" "$work/limited" "$work/hit" "$work/redis"
cp "$root/bench/policies/ledger.yaml" "$work/none/"
cp "$root/bench/policies/ledger.yaml" "$work/limited/"
cat >> "$work/limited/ledger.yaml" <<'YAML'
limits:
  - id: never-hit
    rate: 1000000000/s
YAML
cp "$root/bench/policies/ledger.yaml" "$work/hit/"
cat >> "$work/hit/ledger.yaml" <<YAML
limits:
  - id: hit
    rate: $LIMIT_RATE/s
    burst: $LIMIT_BURST
YAML

"$redis_server" --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$work/redis" >"$work/redis.log" 2>&1 &
redis_pid=$!
pids+=("$redis_pid")
shared="rate_limits: {store: redis, redis: {url: \"redis://127.0.0.1:$REDIS_PORT\", prefix: \"bench:\"}}"
for _ in $(seq 1 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null && break
  sleep 0.1
done

"$root/target/release/examples/limit_cost" --redis "redis://127.0.0.1:$REDIS_PORT"
[ -z "${COST_ONLY:-}" ] || exit 0

hw_pid=
start() { # name policy-dir port admin-port [extra config line]; sets hw_pid
  cat > "$work/$1.yaml" <<YAML
listen: 127.0.0.1:$3
policies: $work/$2
issuers:
  - issuer: https://sts.hopwarden.local
    jwks_file: $work/jwks.json
    algorithms: [RS256]
log: {format: json, level: warn}
worker_threads: 1
dynamic_metadata: false
admin: {listen: "127.0.0.1:$4"}
decision_log: {to: /dev/null}
${5:-}
YAML
  "$hopwarden" serve --config "$work/$1.yaml" >"$work/$1.log" 2>&1 &
  hw_pid=$!
  pids+=("$hw_pid")
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$4/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "error: hopwarden $1 did not start" >&2; cat "$work/$1.log" >&2; return 1
}
stop() { kill "$1"; wait "$1" 2>/dev/null || true; }

for round in $(seq 1 "$ROUNDS"); do
  for label in none limited redis; do
    case $label in
      redis) start "$label" limited 18291 18292 "$shared" ;;
      *) start "$label" "$label" 18291 18292 ;;
    esac
    "$loadgen" run --addr 127.0.0.1:18291 --token "$token" --requests 5000 >/dev/null
    "$loadgen" run --addr 127.0.0.1:18291 --token "$token" --server-pid "$hw_pid" \
      --label "$label" --rate "$RATE" --seconds "$SECONDS_PER_RUN" --concurrency 64 \
      | tee -a "$work/runs.jsonl"
    if [ "$label" = redis ] && ! curl -fs http://127.0.0.1:18292/metrics | grep -q '^hopwarden_rate_limit_store_fallback 0'; then
      echo "error: the redis run fell back to local limits" >&2; cat "$work/redis.log" >&2; exit 1
    fi
    stop "$hw_pid"
  done
done

# Overshoot: two replicas, one shared budget of LIMIT_RATE/s (burst LIMIT_BURST).
start a hit 18291 18292 "$shared"; a_pid=$hw_pid
start b hit 18293 18294 "$shared"; b_pid=$hw_pid
drive=$((LIMIT_RATE * 2))
"$loadgen" run --addr 127.0.0.1:18291 --token "$token" --label overshoot-a \
  --rate "$drive" --seconds "$OVERSHOOT_SECONDS" --concurrency 16 > "$work/over-a.json" &
la=$!
"$loadgen" run --addr 127.0.0.1:18293 --token "$token" --label overshoot-b \
  --rate "$drive" --seconds "$OVERSHOOT_SECONDS" --concurrency 16 > "$work/over-b.json" &
lb=$!
wait "$la" "$lb"
cat "$work/over-a.json" "$work/over-b.json"
stop "$a_pid"; stop "$b_pid"

python3 - "$work/runs.jsonl" "$work/over-a.json" "$work/over-b.json" "$LIMIT_RATE" "$LIMIT_BURST" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
med = {}
for label in ("none", "limited", "redis"):
    cpu = [r["server_cpu_us_per_check"] for r in runs if r["label"] == label]
    errs = sum(r.get("errors", 0) for r in runs if r["label"] == label)
    med[label] = statistics.median(cpu)
    print(f"{label:8} server CPU per cached check: median {med[label]:.2f} us over {cpu} (errors {errs})")
print(f"a local limit adds {med['limited'] - med['none']:+.2f} us CPU per cached check")
print(f"the redis store adds {med['redis'] - med['none']:+.2f} us CPU per cached check "
      f"({med['redis'] - med['limited']:+.2f} us over a local limit)")
a, b = (json.load(open(p)) for p in sys.argv[2:4])
rate, burst = int(sys.argv[4]), int(sys.argv[5])
allowed = sum(r["checks"] - r["denied"] for r in (a, b))
errors = sum(r["errors"] for r in (a, b))
seconds = max(a["seconds"], b["seconds"])
budget = rate * seconds + burst
print(f"two replicas, one budget of {rate}/s burst {burst} over {seconds:.2f} s = {budget:.0f}: "
      f"allowed {allowed} (a {a['checks'] - a['denied']}, b {b['checks'] - b['denied']}; "
      f"{a['checks'] + b['checks']} checks, errors {errors}), overshoot {allowed - budget:+.0f} "
      f"({(allowed - budget) / budget * 100:+.2f}% of the budget)")
PY
