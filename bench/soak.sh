#!/usr/bin/env bash
# Soak test (not in CI): hopwarden behind a real Envoy for SOAK_SECONDS (default 600)
# at SOAK_RATE checks a second (default 2000), with a policy reload every 10 s, a JWKS
# rotation every minute (keys minted for the run; the old key kept 20 s after tokens
# moved to the new one), a burst of malformed requests every 30 s and the decision
# log on. Every request's answer is known before it is sent (examples/soak.rs).
#
#   bench/soak.sh                      the full 10 minutes
#   SOAK_SECONDS=120 bench/soak.sh     a shorter run
#
# Prints one line per minute (checks, wrong answers, errors, p50/p99, hopwarden RSS and
# descriptors, Envoy RSS) and a summary with the RSS slope; exits non-zero on any wrong
# answer, any error outside the malformed requests, or a reload that did not apply.
# Loopback only, free ports, release build; stops by itself and ends what it started
# (by pid). Keeps the run's files in bench/work/soak/ (logs, decision log, config).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
SOAK_SECONDS=${SOAK_SECONDS:-600}
SOAK_RATE=${SOAK_RATE:-2000}
work=$root/bench/work/soak
hw_pid=
envoy_pid=
stop() { [ -z "$1" ] || { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }; }
cleanup() { stop "$envoy_pid"; stop "$hw_pid"; }
trap cleanup EXIT

echo "== tools"
envoy=$(scripts/install-envoy.sh)
command -v openssl >/dev/null || { echo "error: openssl is needed (apt-get install openssl)" >&2; exit 1; }
cargo build --release --locked --bin hopwarden --example soak 2>&1 | tail -1
hopwarden=$root/target/release/hopwarden
soak=$root/target/release/examples/soak

rm -rf "$work"
mkdir -p "$work/keys" "$work/policies"
free_ports() { # n: n distinct free ports on 127.0.0.1
  python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}
read -r grpc_port admin_port envoy_port envoy_admin < <(free_ports 4)

echo "== keys (minted now: one per rotation, and one hopwarden never trusts)"
rotations=$((SOAK_SECONDS / 60 + 1))
for n in $(seq 0 "$rotations") stranger; do
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/keys/key-$n.pem" 2>/dev/null
  "$hopwarden" token --key "$work/keys/key-$n.pem" --kid "soak-$n" --allow-non-dev-key --jwks > "$work/keys/key-$n.jwks"
done
mv "$work/keys/key-stranger.pem" "$work/keys/stranger.pem"
cp "$work/keys/key-0.jwks" "$work/jwks.json"

cat > "$work/hopwarden.yaml" <<EOF
listen: 127.0.0.1:$grpc_port
policies: ./policies
issuers:
  - issuer: https://sts.soak.local
    jwks_file: ./jwks.json
    refresh: 1s
    algorithms: [ES256]
    leeway: 5s
    kind: service
cache:
  max_entries: 20000
  token_max_entries: 20000
  ttl: 30s
  deny_ttl: 5s
log: {format: json, level: info}
admin:
  listen: 127.0.0.1:$admin_port
decision_log:
  to: ./decisions.jsonl
EOF
cat > "$work/policies/ledger.yaml" <<'EOF'
# soak policy, generation 0
service: ledger
rules:
  - id: soak-read
    from: { issuers: ["https://sts.soak.local"] }
    to: [{ methods: [GET], paths: ["/transactions/{id}"] }]
    scopes: [ledger.read]
  - id: soak-no-refunds
    effect: deny
    to: [{ paths: ["/refunds/**"] }]
EOF
sed -e "s/__PORT__/$envoy_port/; s/__ADMIN__/$envoy_admin/; s/__HOPWARDEN__/$grpc_port/" \
  bench/soak/envoy.yaml > "$work/envoy.yaml"

wait_http() { # url: up to 30 s for a 2xx
  for _ in $(seq 1 300); do
    curl -fs "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "error: $1 did not answer" >&2
  return 1
}

echo "== hopwarden (release) on 127.0.0.1:$grpc_port, admin :$admin_port"
"$hopwarden" serve --config "$work/hopwarden.yaml" >"$work/hopwarden.log" 2>&1 &
hw_pid=$!
wait_http "http://127.0.0.1:$admin_port/readyz" || { tail -20 "$work/hopwarden.log"; exit 1; }
echo "== Envoy on 127.0.0.1:$envoy_port"
"$envoy" -c "$work/envoy.yaml" --concurrency 1 --log-level warn >"$work/envoy.log" 2>&1 &
envoy_pid=$!
wait_http "http://127.0.0.1:$envoy_admin/ready" || { tail -20 "$work/envoy.log"; exit 1; }

echo "== soak: $SOAK_SECONDS s at $SOAK_RATE checks/s"
status=0
"$soak" --envoy-port "$envoy_port" --grpc-port "$grpc_port" --admin-port "$admin_port" \
  --hopwarden-pid "$hw_pid" --envoy-pid "$envoy_pid" --keys "$work/keys" \
  --jwks "$work/jwks.json" --policy "$work/policies/ledger.yaml" \
  --seconds "$SOAK_SECONDS" --rate "$SOAK_RATE" || status=$?
kill -0 "$hw_pid" 2>/dev/null || { echo "error: hopwarden exited during the soak" >&2; status=1; }
kill -0 "$envoy_pid" 2>/dev/null || { echo "error: Envoy exited during the soak" >&2; status=1; }
lines=$(wc -l < "$work/decisions.jsonl")
echo "  decision log: $lines lines, $(du -h "$work/decisions.jsonl" | cut -f1)"
echo "  hopwarden log: $(grep -c '"level":"ERROR"' "$work/hopwarden.log" || true) ERROR lines, $(grep -c '"level":"WARN"' "$work/hopwarden.log" || true) WARN lines"
# The decision log is large (about 300 bytes a check): keep the run's other files only.
rm -f "$work/decisions.jsonl"
exit "$status"
