#!/usr/bin/env bash
# Mutation testing of the request path with cargo-mutants (https://mutants.rs): each
# mutant is a small deliberate bug; a mutant the tests let live is a test to write (or
# an equivalent mutant to list, with its reason, in .cargo/mutants.toml).
#
#   scripts/mutants.sh                     every request-path file (.cargo/mutants.toml)
#   scripts/mutants.sh src/request.rs ...  only these files
#   scripts/mutants.sh --diff [BASE]       only the lines changed since BASE (default main)
#
# Options after `--` go to cargo mutants (e.g. `-- --list`, `-- -j 2`). Not part of
# scripts/test.sh: it rebuilds the crate once per mutant (minutes each on a busy
# machine). Results: mutants.out/ (missed.txt lists the survivors).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-mutants >/dev/null 2>&1; then
  echo "== installing cargo-mutants (crates.io)"
  cargo install --locked cargo-mutants
fi

# Each mutant is a rebuild of the crate: build without debug info (a smaller, faster
# link; the results are the same), into a target directory kept between runs
# (cargo-mutants copies the source tree but not ./target, so every run would otherwise
# first rebuild every dependency).
export CARGO_PROFILE_DEV_DEBUG=${CARGO_PROFILE_DEV_DEBUG:-0}
export CARGO_PROFILE_TEST_DEBUG=${CARGO_PROFILE_TEST_DEBUG:-0}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/mutants}

files=()
diff_base=
while [ $# -gt 0 ]; do
  case $1 in
    --) shift; break ;;
    --diff)
      diff_base=main
      if [ $# -gt 1 ] && [ "$2" != -- ]; then diff_base=$2; shift; fi
      ;;
    *) files+=("$1") ;;
  esac
  shift
done

args=(--timeout 120)
config=.cargo/mutants.toml
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ ${#files[@]} -gt 0 ]; then
  # cargo-mutants adds --file globs to the config's examine_globs; to mutate only the
  # files named here, read a copy of the config without them.
  config=$tmp/mutants.toml
  awk '/^examine_globs/ { skip = 1 } skip && /^\]/ { skip = 0; next } !skip' \
    .cargo/mutants.toml >"$config"
  for f in "${files[@]}"; do args+=(--file "$f"); done
fi
if [ -n "$diff_base" ]; then
  patch=$tmp/diff.patch
  git diff "$diff_base" -- src >"$patch"
  args+=(--in-diff "$patch")
fi

echo "== cargo mutants ${args[*]} $*"
start=$(date +%s)
status=0
cargo mutants --config "$config" "${args[@]}" "$@" || status=$?
echo "== wall time: $(($(date +%s) - start)) s"
# 2: some mutants were missed; 3: some timed out (see cargo mutants --help).
exit $status
