#!/usr/bin/env bash
# How hopwarden's costs grow with the estate: CPU per check (miss and hit) for one
# service with 10 to 100,000 rules (the matching rule first and last; the index and,
# via HOPWARDEN_DEV_PLAIN_SCAN, the plain scan it replaced, in the same run), load
# time and memory, 1,000 and 10,000 services, and the reload of one changed file in
# 1,000 services with the decision cache's hit rate after it, and one caller with 10 to
# 10,000 routes (rules the caller index cannot tell apart). hopwarden alone, driven
# by the project's loadgen on 127.0.0.1; every run is bounded by a check count.
#
#   bench/scale.sh                       everything (about 5 minutes on 2 cores)
#   RULES="10 1000" SERVICES=1000 CHECKS=1000 bench/scale.sh     a short run
#   PARTS="reload" bench/scale.sh        only some parts (rules, services, reload, routes)
#
# Prints every figure with its target; writes bench/results/scale.{json,txt,svg}.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
BENCH_PROFILE=${BENCH_PROFILE:-release}
export WORK=${WORK:-$root/bench/work/scale}
mkdir -p "$WORK" "$root/bench/results"
cargo build --profile "$BENCH_PROFILE" --locked --bin hopwarden --example loadgen 2>&1 | tail -1
bin_dir=$root/target/$([ "$BENCH_PROFILE" = dev ] && echo debug || echo "$BENCH_PROFILE")
export HOPWARDEN=$bin_dir/hopwarden LOADGEN=$bin_dir/examples/loadgen
CHECKS=${CHECKS:-3000}
export CHECKS

# Keys and tokens, minted now.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/rsa.pem" 2>/dev/null
"$HOPWARDEN" token --key "$WORK/rsa.pem" --kid scale-rsa --allow-non-dev-key --jwks > "$WORK/jwks.json"
"$LOADGEN" mint --key "$WORK/rsa.pem" --kid scale-rsa --count 1 --out "$WORK/one.txt"
"$LOADGEN" mint --key "$WORK/rsa.pem" --kid scale-rsa --count "$CHECKS" --out "$WORK/tokens.txt"
# Estates are generated once per run (they depend on nothing minted).
find "$WORK" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
exec python3 "$root/bench/scale/run.py"
