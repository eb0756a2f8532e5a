#!/usr/bin/env bash
# CPU per check with an API key (decision cache miss and hit) against a JWT, hopwarden
# alone under the project's load generator (examples/loadgen.rs). Loopback only,
# bounded (each run a few seconds), stops by itself.
#
#   bench/apikeys.sh                  release binaries (cargo build --release --bin hopwarden --example loadgen)
#   BIN_DIR=/path/to/target/release bench/apikeys.sh
#   N=20000 bench/apikeys.sh          distinct keys / tokens for the miss runs (default 20000)
#
# Miss runs send each key (or token) once to a fresh server, so every check misses the
# decision cache (and, for JWTs, the token cache: a signature check each). Hit runs send
# one key (or token) over and over. One worker thread, decision log off, closed loop at
# concurrency 16. Prints one line per run: server CPU per check from /proc.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin_dir=${BIN_DIR:-$root/target/release}
hopwarden=$bin_dir/hopwarden
loadgen=$bin_dir/examples/loadgen
n=${N:-20000}
for b in "$hopwarden" "$loadgen"; do
  [ -x "$b" ] || { echo "error: $b is missing (cargo build --release --bin hopwarden --example loadgen)" >&2; exit 1; }
done
work=$(mktemp -d)
pid=
cleanup() { [ -z "$pid" ] || { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }; rm -rf "$work"; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/rsa.pem" 2>/dev/null
"$hopwarden" token --key "$work/rsa.pem" --kid bench-rsa --allow-non-dev-key --jwks > "$work/jwks.json"
"$loadgen" mint --key "$work/rsa.pem" --kid bench-rsa --count "$n" --out "$work/tokens.txt"
"$loadgen" mint-keys --count "$n" --keys-out "$work/keys.txt" --file-out "$work/keys.yaml"
head -1 "$work/tokens.txt" > "$work/one-token.txt"
head -1 "$work/keys.txt" > "$work/one-key.txt"
mkdir "$work/policies"
cat > "$work/policies/ledger.yaml" <<'YAML'
service: ledger
rules:
  - id: payments-read-transactions
    from: { issuers: ["https://sts.hopwarden.local"] }
    to: [{ methods: [GET], paths: ["/transactions/{id}"] }]
    scopes: [ledger.read]
  - id: partner-reads-with-key
    from: { principals: [bench-partner], credentials: [api_key] }
    to: [{ methods: [GET], paths: ["/transactions/{id}"] }]
    scopes: [ledger.read]
YAML
cat > "$work/hopwarden.yaml" <<YAML
listen: 127.0.0.1:$port
policies: policies
worker_threads: 1
log: {format: json, level: warn}
decision_log: {to: "off"}
issuers:
  - issuer: https://sts.hopwarden.local
    jwks_file: jwks.json
    algorithms: [RS256]
    max_lifetime: 24h
api_keys:
  - file: keys.yaml
YAML

start() {
  [ -z "$pid" ] || { kill "$pid"; wait "$pid" 2>/dev/null || true; }
  "$hopwarden" serve --config "$work/hopwarden.yaml" > "$work/server.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),0.1)" 2>/dev/null && return
    sleep 0.1
  done
  echo "error: hopwarden did not start:" >&2; cat "$work/server.log" >&2; exit 1
}
run() { # label file requests
  "$loadgen" run --addr "127.0.0.1:$port" --server-pid "$pid" --label "$1" --tokens "$2" \
    --concurrency 16 --requests "$3" \
    | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%-10s %7d checks  %8.0f checks/s  cpu/check %6.2f us  p50 %4d us  errors %d  denied %d" % (r["label"], r["checks"], r["throughput"], r["server_cpu_us_per_check"], r["p50_us"], r["errors"], r.get("denied", 0)))'
}
hits=$((n * 2))
start; run key-miss "$work/keys.txt" "$n"
run key-hit "$work/one-key.txt" "$hits"
start; run jwt-miss "$work/tokens.txt" "$n"
run jwt-hit "$work/one-token.txt" "$hits"
