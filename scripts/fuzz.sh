#!/usr/bin/env bash
# Fuzzes hopwarden's parsers and request conversions with cargo fuzz (libFuzzer) on the
# stable toolchain: the targets in fuzz/fuzz_targets/, one at a time, one process each.
#
#   scripts/fuzz.sh                    every target for FUZZ_SECONDS (default 600) each
#   scripts/fuzz.sh grpc_check jwt_parse   only these targets
#   scripts/fuzz.sh --smoke            a few seconds each (FUZZ_SECONDS default 5): the
#                                      seed corpus and a little beyond; scripts/test.sh
#
# Sanitizer: none (`-s none`). hopwarden forbids unsafe code, so the checks that matter
# are the targets' own assertions, panics, timeouts and libFuzzer's memory limit; that
# also means no nightly-only `-Z` flag, so the machine's stable toolchain builds it.
# Inputs that grow coverage go to fuzz/corpus/<target>/ (not committed) beside the
# committed seeds in fuzz/seeds/<target>/; a failing input is saved in
# fuzz/artifacts/<target>/ and reproduced with `cargo fuzz run -s none TARGET FILE`.
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=
targets=()
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) targets+=("$arg") ;;
  esac
done
FUZZ_SECONDS=${FUZZ_SECONDS:-$([ -n "$smoke" ] && echo 5 || echo 600)}
CARGO_FUZZ_VERSION=0.13.2

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION (crates.io)"
  cargo install --locked "cargo-fuzz@$CARGO_FUZZ_VERSION"
fi
# cargo fuzz has no --locked: check that fuzz/Cargo.lock needs no change first.
cargo fetch --locked --manifest-path fuzz/Cargo.toml
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi

echo "== cargo fuzz build (instrumented, release with debug assertions)"
start=$(date +%s)
cargo fuzz build -s none
echo "built in $(( $(date +%s) - start )) s"

failed=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  log=$(mktemp)
  echo "== $t: ${FUZZ_SECONDS} s"
  # One process (no -jobs/-fork): the machine is shared. -max_len covers every seed;
  # -timeout catches a hang, -rss_limit_mb unbounded memory.
  if cargo fuzz run -s none "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
      -max_total_time="$FUZZ_SECONDS" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
    failed+=("$t")
    grep -E "panicked|ERROR|SUMMARY|Test unit written|==[0-9]+==" "$log" | head -20 || true
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  secs=$(sed -n 's/.*Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 || true)
  echo "$t: $result, ${runs:-?} executions in ${secs:-?} s, ${cov:-cov: ?}, corpus $(find "fuzz/corpus/$t" -type f | wc -l) files"
  rm -f "$log"
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: ${#failed[@]} target(s) failed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} target(s), no failure"
