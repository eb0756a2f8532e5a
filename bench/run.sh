#!/usr/bin/env bash
# hopwarden through Envoy against Envoy's own jwt_authn + RBAC, side by side, and
# hopwarden alone under a gRPC load generator. Loopback only; stops by itself.
#
#   bench/run.sh            full run (about 20 minutes on 2 cores)
#   QUICK=1 bench/run.sh    one repetition, shorter runs (a smoke test of the harness)
#   SETUP_ONLY=1 bench/run.sh   start every setup, check each answers as it should, stop
#   BENCH_PROFILE=dev ...   debug binaries (harness checks only: no figure means anything)
#
# Every port is picked free at the start (loopback, distinct), so a port some other
# process holds cannot make a setup look broken; a server that still cannot start
# (its port taken since) is reported with its port and log.
#
# Prints one table and writes bench/results/results.{json,md} and chart.svg.
# Setups (same Envoy, --concurrency 1, same route, same rule: GET /transactions/{id}
# needs issuer https://sts.hopwarden.local, audience ledger, scope ledger.read):
#   a  no authorization (the ceiling)
#   b  jwt_authn + rbac
#   c  jwt_authn with jwt_cache_config + rbac
#   d  ext_authz -> hopwarden
#   e  ext_authz -> a server that allows everything unread (`loadgen allow-all`, with
#      hopwarden's transport): what the hop costs before any server does any work
#   f  ext_authz over Envoy's HTTP service -> hopwarden's `http_listen`, over HTTP/2
#   g  ext_authz over Envoy's HTTP service -> a server that allows everything unread
#      (`loadgen allow-all-http`, on hopwarden's HTTP transport): the floor for f as e
#      is for d
#   h  f with a rate limit that matches every request and is never hit (service
#      ledger-limited: ledger's policy plus `never-hit: 1000000000/s`, on the same
#      hopwarden), run beside f: the report prints h's throughput as a ratio of f's
# Envoy's instructions per request (callgrind) for a, b, d, e and f: a figure the VM's
# noise does not move.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$root/bench/work
results=$root/bench/results
hw_pid=
noop_pid=
noop_http_pid=
declare -A envoy_pid=()
shm=
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
cleanup() {
  # Only the processes still current: earlier pids may have been reused.
  for p in $hw_pid $noop_pid $noop_http_pid "${envoy_pid[@]}"; do stop "$p"; done
  [ -z "$shm" ] || rm -rf "$shm"
}
trap cleanup EXIT

# Distinct free loopback ports, all held open together while they are picked.
free_ports() { # count
  python3 -c '
import socket, sys
held = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    held.append(s)
print(" ".join(str(s.getsockname()[1]) for s in held))' "$1"
}
read -r hw_port hw_http_port hw_admin_port noop_port noop_http_port \
  port_a port_b port_c port_d port_e port_f port_g port_h \
  admin_a admin_b admin_c admin_d admin_e admin_f admin_g admin_h <<<"$(free_ports 21)"
shm=$(mktemp -d /dev/shm/hopwarden-bench.XXXXXX)
mkdir -p "$work" "$results"
# When the run started: the report's date, even when it is regenerated later.
echo "{\"kind\":\"meta\",\"started\":\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\"}" > "$work/raw.jsonl"

QUICK=${QUICK:-}
SETUP_ONLY=${SETUP_ONLY:-}
BENCH_PROFILE=${BENCH_PROFILE:-release}
REPS=${REPS:-$([ -n "$QUICK" ] && echo 1 || echo 5)}
ALONE_REPS=${ALONE_REPS:-$([ -n "$QUICK" ] && echo 1 || echo 3)}
DURATION=${DURATION:-$([ -n "$QUICK" ] && echo 4 || echo 6)}
CONNS=${CONNS:-32}
TOKENS=${TOKENS:-$([ -n "$QUICK" ] && echo 60000 || echo 200000)}
MEMORY_TOKENS=${MEMORY_TOKENS:-$([ -n "$QUICK" ] && echo 250000 || echo 1000000)}

echo "== tools"
envoy=$(scripts/install-envoy.sh)
missing=()
if [ -z "$SETUP_ONLY" ]; then
  command -v wrk >/dev/null 2>&1 || missing+=(wrk)
  command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
fi
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --profile "$BENCH_PROFILE" --locked --bin hopwarden --example loadgen 2>&1 | tail -1
bin_dir=$root/target/$([ "$BENCH_PROFILE" = dev ] && echo debug || echo "$BENCH_PROFILE")
hopwarden=$bin_dir/hopwarden
loadgen=$bin_dir/examples/loadgen
# awk reads all of it: `head -1` closing the pipe early failed the run (SIGPIPE, pipefail).
"$envoy" --version | awk 'NF && !shown { print; shown = 1 }'

echo "== keys and tokens (minted now)"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/rsa.pem" 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/ec.pem" 2>/dev/null
"$hopwarden" token --key "$work/rsa.pem" --kid bench-rsa --allow-non-dev-key --jwks > "$work/rsa.jwks"
"$hopwarden" token --key "$work/ec.pem" --kid bench-ec --allow-non-dev-key --jwks > "$work/ec.jwks"
python3 - "$work" <<'EOF'
import json, sys
w = sys.argv[1]
keys = [json.load(open(f"{w}/{n}.jwks"))["keys"][0] for n in ("rsa", "ec")]
json.dump({"keys": keys}, open(f"{w}/jwks.json", "w"))
EOF
"$loadgen" mint --key "$work/rsa.pem" --kid bench-rsa --count 1 --out "$work/one.txt"
token=$(cat "$work/one.txt")
"$loadgen" mint --key "$work/rsa.pem" --kid bench-rsa --count "$TOKENS" --out "$work/tokens.txt"
echo "$TOKENS distinct RS256 tokens"
cat > "$work/rotate.lua" <<EOF
-- Every request carries the next of $TOKENS distinct valid tokens.
local tokens = {}
for line in io.lines("$work/tokens.txt") do tokens[#tokens + 1] = line end
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", "/transactions/" .. i, { ["authorization"] = "Bearer " .. tokens[(i - 1) % #tokens + 1] })
end
EOF

# The bench policies, plus ledger-limited for setup h: ledger's policy (the same rule,
# its id suffixed since ids are unique across policies; the same audience) with a
# limit every request counts against and none ever meets.
rm -rf "$work/policies" && mkdir -p "$work/policies"
cp "$root"/bench/policies/*.yaml "$work/policies/"
{
  sed -e 's/^service: ledger$/service: ledger-limited\naudiences: [ledger]/' \
      -e 's/^\(  - id: .*\)$/\1-limited/' "$root/bench/policies/ledger.yaml"
  printf 'limits:\n  - id: never-hit\n    description: Every request counts; none is ever refused.\n    rate: 1000000000/s\n'
} > "$work/policies/ledger-limited.yaml"
grep -q '^service: ledger-limited$' "$work/policies/ledger-limited.yaml" \
  || { echo "error: bench/policies/ledger.yaml no longer has 'service: ledger'" >&2; exit 1; }

cat > "$work/hopwarden.yaml" <<EOF
listen: 127.0.0.1:$hw_port
policies: $work/policies
issuers:
  - issuer: https://sts.hopwarden.local
    jwks_file: $work/jwks.json
    algorithms: [RS256, ES256]
http_listen: 127.0.0.1:$hw_http_port
cache: {max_entries: 100000, token_max_entries: 100000, ttl: 60s, deny_ttl: 5s}
log: {format: json, level: warn}
worker_threads: 1
# b and c give Envoy no metadata either; with it on Envoy runs ~7% more instructions.
dynamic_metadata: false
admin: {listen: "127.0.0.1:$hw_admin_port"}
# On tmpfs: every record is still serialized and written, but the kernel's writeback
# of a fast-growing file on this VM's disk stalled the tails by tens of milliseconds.
decision_log: {to: $shm/decisions.log}
EOF

wait_http() { # port path pid name log
  for _ in $(seq 1 100); do
    if ! kill -0 "$3" 2>/dev/null; then
      echo "error: $4 exited before answering on 127.0.0.1:$1 (is the port busy?); its log:" >&2
      tail -5 "$5" >&2
      return 1
    fi
    curl -fs "http://127.0.0.1:$1$2" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "error: $4 never answered on 127.0.0.1:$1$2; its log:" >&2
  tail -5 "$5" >&2
  return 1
}

start_hopwarden() {
  [ -z "$hw_pid" ] || stop "$hw_pid"
  rm -f "$shm/decisions.log"
  "$hopwarden" serve --config "$work/hopwarden.yaml" >"$work/hopwarden.log" 2>&1 &
  hw_pid=$!
  wait_http "$hw_admin_port" /readyz "$hw_pid" hopwarden "$work/hopwarden.log"
}

start_noop() {
  [ -z "$noop_pid" ] || stop "$noop_pid"
  : > "$work/noop.log"
  "$loadgen" allow-all --listen "127.0.0.1:$noop_port" 2>"$work/noop.log" &
  noop_pid=$!
  for _ in $(seq 1 100); do
    grep -q listening "$work/noop.log" && return 0
    kill -0 "$noop_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "error: loadgen allow-all did not start on 127.0.0.1:$noop_port; its log:" >&2
  tail -5 "$work/noop.log" >&2
  return 1
}

start_noop_http() {
  [ -z "$noop_http_pid" ] || stop "$noop_http_pid"
  : > "$work/noop-http.log"
  "$loadgen" allow-all-http --listen "127.0.0.1:$noop_http_port" 2>"$work/noop-http.log" &
  noop_http_pid=$!
  for _ in $(seq 1 100); do
    grep -q listening "$work/noop-http.log" && return 0
    kill -0 "$noop_http_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "error: loadgen allow-all-http did not start on 127.0.0.1:$noop_http_port; its log:" >&2
  tail -5 "$work/noop-http.log" >&2
  return 1
}

setups=(a b c d e f g h)
declare -A port=([a]=$port_a [b]=$port_b [c]=$port_c [d]=$port_d [e]=$port_e [f]=$port_f [g]=$port_g [h]=$port_h)
declare -A admin=([a]=$admin_a [b]=$admin_b [c]=$admin_c [d]=$admin_d [e]=$admin_e [f]=$admin_f [g]=$admin_g [h]=$admin_h)
declare -A file=([a]=a-none [b]=b-native [c]=c-native-cache [d]=d-hopwarden [e]=e-noop [f]=f-hopwarden-http [g]=g-noop-http [h]=f-hopwarden-http)
envoy_config() { # setup -> $work/envoy-SETUP.yaml
  local s=$1
  # h is f's Envoy asking for service ledger-limited: the one difference is the limit.
  local service=ledger
  [ "$s" != h ] || service=ledger-limited
  sed -e "s/__PORT__/${port[$s]}/" -e "s/__ADMIN__/${admin[$s]}/" \
      -e "s#__JWKS__#$work/jwks.json#" -e "s/__HOPWARDEN__/$hw_port/" -e "s/__HOPWARDEN_HTTP__/$hw_http_port/" -e "s/__NOOP__/$noop_port/" -e "s/__NOOP_HTTP__/$noop_http_port/" \
      -e "s#path_prefix: /gateway/ledger\$#path_prefix: /gateway/$service#" \
      "bench/envoy/${file[$s]}.yaml" > "$work/envoy-$s.yaml"
  [ "$s" != h ] || grep -q 'path_prefix: /gateway/ledger-limited$' "$work/envoy-$s.yaml" \
    || { echo "error: setup h: no 'path_prefix: /gateway/ledger' in bench/envoy/${file[$s]}.yaml" >&2; return 1; }
}
start_envoy() { # setup
  local s=$1
  [ -z "${envoy_pid[$s]:-}" ] || stop "${envoy_pid[$s]}"
  envoy_config "$s"
  "$envoy" -c "$work/envoy-$s.yaml" --concurrency 1 --disable-hot-restart -l error \
    >"$work/envoy-$s.log" 2>&1 &
  envoy_pid[$s]=$!
  wait_http "${admin[$s]}" /ready "${envoy_pid[$s]}" "Envoy ($s)" "$work/envoy-$s.log"
}

# wrk output -> one JSON line in raw.jsonl
record_wrk() { # setup scenario rep outfile envoy_ticks authz_ticks
  python3 - "$@" >> "$work/raw.jsonl" <<'EOF'
import json, re, sys
setup, scenario, rep, path, envoy_ticks, authz_ticks = sys.argv[1:7]
text = open(path).read()
requests = int(re.search(r"(\d+) requests in", text).group(1))
# /proc ticks are 10 ms: CPU time per request in microseconds.
per_req = lambda ticks: int(ticks) * 1e4 / max(requests, 1)
def lat(p):
    m = re.search(r"^\s*%s%%\s+([\d.]+)(us|ms|s)\s*$" % p, text, re.M)
    if not m: return None
    v, unit = float(m.group(1)), m.group(2)
    return v * {"us": 1, "ms": 1e3, "s": 1e6}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
errors = re.search(r"Socket errors:.*", text)
print(json.dumps({"kind": "envoy", "setup": setup, "scenario": scenario, "rep": int(rep),
  "throughput": rps, "p50_us": lat(50), "p99_us": lat(99),
  "non_2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": errors.group(0) if errors else None,
  "envoy_cpu_us_per_req": per_req(envoy_ticks),
  "authz_cpu_us_per_req": per_req(authz_ticks) if setup in ("d", "e", "f", "g", "h") else None}))
EOF
}

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime of a pid

run_wrk() { # setup scenario rep
  local s=$1 scenario=$2 rep=$3 out="$work/wrk-$1-$2-$3.txt"
  local args=(-t1 -c"$CONNS" -d"${DURATION}s" --latency)
  local e0 h0
  # The authorization server's CPU: hopwarden for d, f and h, the no-op servers for e and g.
  local server=$hw_pid
  [ "$s" != e ] || server=$noop_pid
  [ "$s" != g ] || server=$noop_http_pid
  e0=$(ticks "${envoy_pid[$s]}"); h0=$(ticks "$server")
  if [ "$scenario" = reused ]; then
    wrk "${args[@]}" -H "authorization: Bearer $token" "http://127.0.0.1:${port[$s]}/transactions/42" > "$out"
  else
    wrk "${args[@]}" -s "$work/rotate.lua" "http://127.0.0.1:${port[$s]}/transactions/42" > "$out"
  fi
  record_wrk "$s" "$scenario" "$rep" "$out" $(($(ticks "${envoy_pid[$s]}") - e0)) $(($(ticks "$server") - h0))
  tail -1 "$work/raw.jsonl" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("  %s %-8s rep %d: %8.0f req/s  p50 %6.0f us  p99 %6.0f us  non-2xx %d  envoy cpu %5.1f us/req" % (r["setup"], r["scenario"], r["rep"], r["throughput"], r["p50_us"] or -1, r["p99_us"] or -1, r["non_2xx"], r["envoy_cpu_us_per_req"]))'
}

echo "== Envoy: ${setups[*]} interleaved, $REPS repetitions, ${DURATION}s each, $CONNS connections"
start_hopwarden
start_noop
start_noop_http
for s in "${setups[@]}"; do start_envoy "$s"; done
# Sanity: every setup allows the good token; those that check deny a missing one.
for s in "${setups[@]}"; do
  ok=$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $token" "http://127.0.0.1:${port[$s]}/transactions/42")
  no=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${port[$s]}/transactions/42")
  echo "  $s: with token $ok, without $no"
  [ "$ok" = 200 ] || { echo "error: setup $s (Envoy on 127.0.0.1:${port[$s]}) refused a valid token" >&2; exit 1; }
  [ "$s" = a ] || [ "$s" = e ] || [ "$s" = g ] || [ "$no" != 200 ] || { echo "error: setup $s allowed no token" >&2; exit 1; }
done
# h's requests count against its limit (f's do not): hopwarden explain says so.
for s in f h; do
  service=$([ "$s" = h ] && echo ledger-limited || echo ledger)
  counted=$("$hopwarden" explain --config "$work/hopwarden.yaml" --service "$service" --hop gateway \
    --method GET --path /transactions/42 --token "$token" 2>&1 | grep -c 'never-hit' || true)
  want=$([ "$s" = h ] && echo yes || echo no)
  got=$([ "$counted" -gt 0 ] && echo yes || echo no)
  echo "  $s: counts against the never-hit limit: $got"
  [ "$got" = "$want" ] || { echo "error: setup $s: hopwarden explain says never-hit: $got, want $want" >&2; exit 1; }
done
[ -z "$SETUP_ONLY" ] || { echo "== SETUP_ONLY: every setup answers as it should; stopping"; exit 0; }
for scenario in reused rotating; do
  for rep in $(seq 1 "$REPS"); do
    for s in "${setups[@]}"; do
      if [ "$scenario" = rotating ]; then
        # Fresh caches for every run, so each token is new to everyone.
        [ "$s" != d ] && [ "$s" != f ] && [ "$s" != h ] || start_hopwarden
        [ "$s" != c ] || start_envoy c
      else
        # Warm up (caches, connections) outside the measurement.
        wrk -t1 -c"$CONNS" -d1s -H "authorization: Bearer $token" "http://127.0.0.1:${port[$s]}/transactions/42" >/dev/null
      fi
      run_wrk "$s" "$scenario" "$rep"
    done
  done
done
for s in "${setups[@]}"; do stop "${envoy_pid[$s]}"; done
envoy_pid=()

echo "== Envoy's instructions per request (callgrind, one token reused)"
# Instructions, unlike seconds, do not move with the VM's neighbours: what each setup
# asks of Envoy, beside the timings above. The kernel's share is not counted.
for s in a b d e f; do
  envoy_config "$s"
  rm -f "$work/callgrind-$s".*
  valgrind --tool=callgrind --callgrind-out-file="$work/callgrind-$s.out" \
    "$envoy" -c "$work/envoy-$s.yaml" --concurrency 1 --disable-hot-restart -l error \
    >"$work/envoy-cg-$s.log" 2>&1 &
  envoy_pid[$s]=$!
  for _ in $(seq 1 120); do curl -fs -o /dev/null "http://127.0.0.1:${admin[$s]}/ready" && break; sleep 1; done
  curl -fs -o /dev/null "http://127.0.0.1:${admin[$s]}/ready" || { echo "error: Envoy under valgrind ($s) never got ready" >&2; exit 1; }
  url="http://127.0.0.1:${port[$s]}/transactions/42"
  wrk -t1 -c4 -d3s -H "authorization: Bearer $token" "$url" >/dev/null
  callgrind_control -z "${envoy_pid[$s]}" >/dev/null 2>&1
  wrk -t1 -c4 -d"$((DURATION * 2))s" -H "authorization: Bearer $token" "$url" > "$work/wrk-cg-$s.txt"
  callgrind_control -d "${envoy_pid[$s]}" >/dev/null 2>&1
  stop "${envoy_pid[$s]}"
  unset "envoy_pid[$s]"
  # The dump taken after the measured requests (.1), not the one written at exit.
  dump="$work/callgrind-$s.out.1"
  [ -s "$dump" ] || { echo "error: no callgrind dump for $s" >&2; exit 1; }
  python3 - "$s" "$work/wrk-cg-$s.txt" "$dump" >> "$work/raw.jsonl" <<'PY'
import json, re, sys
setup, wrk, dump = sys.argv[1:4]
text = open(wrk).read()
requests = int(re.search(r"(\d+) requests in", text).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
non2xx = int(non2xx.group(1)) if non2xx else 0
if requests == 0 or non2xx:
    sys.exit(f"error: callgrind run of {setup}: {requests} requests, {non2xx} non-2xx")
total = next(int(l.split()[1]) for l in open(dump) if l.startswith(("summary:", "totals:")))
print(json.dumps({"kind": "instructions", "setup": setup, "requests": requests,
  "instructions_per_req": total / requests}))
PY
  tail -1 "$work/raw.jsonl" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("  %s: %8.0f instructions per request (%d requests)" % (r["setup"], r["instructions_per_req"], r["requests"]))'
done

# One run of the gRPC load generator against a server (hopwarden unless told).
# Against hopwarden, also the time its engine took per check (the decision log's
# latency_us: the engine's time from the decoded request to the decision), read from
# the records this run added: what is left of the latency is transport and machine.
alone() { # round label args...
  local round=$1 label=$2; shift 2
  local log="" before=0
  if [ -z "${server_addr:-}" ]; then
    log="$shm/decisions.log"
    before=$(cat "$log" 2>/dev/null | wc -l)
  fi
  "$loadgen" run --addr "${server_addr:-127.0.0.1:$hw_port}" --server-pid "${server_pid:-$hw_pid}" --label "$label" "$@" \
    | python3 -c '
import json, sys, time
r = json.load(sys.stdin); r["kind"] = "alone"; r["rep"] = int(sys.argv[3])
log, before = sys.argv[1], int(sys.argv[2])
if log:
    time.sleep(0.2)  # the decision log writes its batch every 20 ms
    lat = sorted(json.loads(l)["latency_us"] for l in open(log).readlines()[before:])
    if len(lat) < r["checks"]:
        sys.exit("error: %s: %d decision records for %d checks" % (r["label"], len(lat), r["checks"]))
    r["engine_p50_us"] = lat[len(lat) // 2]
    r["engine_p99_us"] = lat[len(lat) * 99 // 100]
print(json.dumps(r))' "$log" "$before" "$round" >> "$work/raw.jsonl"
  tail -1 "$work/raw.jsonl" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("  %-22s %8.0f checks/s  p50 %5d us  p99 %6d us  cpu/check %s us  errors %d  denied %d  engine p99 %s us" % (r["label"], r["throughput"], r["p50_us"], r["p99_us"], "%.1f" % r["server_cpu_us_per_check"] if r["server_cpu_us_per_check"] else "?", r["errors"], r.get("denied", 0), r.get("engine_p99_us", "-")))'
}
n_sat=$([ -n "$QUICK" ] && echo 50000 || echo 200000)

echo "== the machine's floor: loopback TCP echo, same pacing as the fixed-rate runs"
for r in 1000 5000; do
  "$loadgen" floor --rate "$r" --seconds "$DURATION" --concurrency 128 --label "floor-$r" \
    | python3 -c 'import json,sys; r=json.load(sys.stdin); r["kind"]="floor"; print(json.dumps(r))' >> "$work/raw.jsonl"
  tail -1 "$work/raw.jsonl" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("  %-22s %8.0f /s  p50 %5d us  p99 %6d us" % (r["label"], r["throughput"], r["p50_us"], r["p99_us"]))'
done
# In rounds, like the Envoy runs: each round measures the no-op server and then
# hopwarden back to back, and the report takes each figure's median over the rounds
# (a single run reads whatever minute the VM was having). An odd number of rounds
# keeps every median a measured figure.
echo "== hopwarden alone and the gRPC floor (the no-op server, hopwarden's transport), $ALONE_REPS rounds"
start_noop
for round in $(seq 1 "$ALONE_REPS"); do
  echo " round $round"
  # Nothing else of ours running while the no-op server is measured.
  [ -z "$hw_pid" ] || { stop "$hw_pid"; hw_pid=; }
  [ -z "$noop_http_pid" ] || { stop "$noop_http_pid"; noop_http_pid=; }
  server_addr=127.0.0.1:$noop_port server_pid=$noop_pid
  "$loadgen" run --addr "$server_addr" --token "$token" --requests 5000 >/dev/null # warm-up, as for hopwarden
  alone "$round" floor-grpc-saturation --token "$token" --concurrency 64 --requests "$n_sat"
  alone "$round" floor-grpc-rate-5000 --token "$token" --rate 5000 --seconds "$DURATION" --concurrency 128
  unset server_addr server_pid
  start_hopwarden
  "$loadgen" run --addr 127.0.0.1:$hw_port --token "$token" --requests 5000 >/dev/null
  alone "$round" saturation-hit --token "$token" --concurrency 64 --requests "$n_sat"
  alone "$round" rate-1000-hit --token "$token" --rate 1000 --seconds "$DURATION" --concurrency 64
  alone "$round" rate-5000-hit --token "$token" --rate 5000 --seconds "$DURATION" --concurrency 128
  # A fresh hopwarden for each miss run: empty caches, so every token is new.
  start_hopwarden
  alone "$round" saturation-miss --tokens "$work/tokens.txt" --concurrency 64 --requests $((TOKENS / 4))
  start_hopwarden
  alone "$round" rate-1000-miss --tokens "$work/tokens.txt" --rate 1000 --seconds "$DURATION" --concurrency 64
  start_hopwarden
  alone "$round" rate-5000-miss --tokens "$work/tokens.txt" --rate 5000 --seconds "$DURATION" --concurrency 256
done

echo "== memory: $MEMORY_TOKENS distinct tokens"
start_hopwarden
rss() { awk '/VmRSS/ {print $2 * 1024}' "/proc/$hw_pid/status"; }
idle=$(rss)
"$loadgen" run --addr 127.0.0.1:$hw_port --fresh-es256 "$work/ec.pem" --kid bench-ec --threads 2 --concurrency 64 --requests 200000 >/dev/null
full=$(rss)
"$loadgen" run --addr 127.0.0.1:$hw_port --fresh-es256 "$work/ec.pem" --kid bench-ec --threads 2 --concurrency 64 --requests $((MEMORY_TOKENS - 200000)) >/dev/null
after=$(rss)
echo "{\"kind\":\"memory\",\"tokens\":$MEMORY_TOKENS,\"rss_idle\":$idle,\"rss_caches_full\":$full,\"rss_after\":$after}" >> "$work/raw.jsonl"

python3 bench/report.py "$work/raw.jsonl" "$results" "$("$envoy" --version | grep -o '1\.[0-9]*\.[0-9]*' | head -1)"
