#!/usr/bin/env bash
# docker-compose without Docker: Debian's docker-compose driving podman's Docker-compatible
# API (`podman system service`), with the project's podman settings
# (deploy/compose/containers.conf; the machine's own config is left alone).
#
# usage: scripts/podman.sh compose ARGS...  docker-compose ARGS against podman, e.g.
#                                           scripts/podman.sh compose up --no-build
#        scripts/podman.sh stop             stop the podman service this script started
# Build the images first (scripts/images.sh). Sourced by scripts/images.sh for
# podman_tools_installed.

PODMAN_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONTAINERS_CONF="$PODMAN_REPO/deploy/compose/containers.conf"
export CONTAINERS_CONF

# Installs podman, runc (containers.conf picks it), debootstrap and docker-compose from
# Debian's packages when missing (root only; otherwise a clear error, never a silent skip).
podman_tools_installed() {
  local need=() tool
  for tool in podman runc debootstrap docker-compose; do
    command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: ${need[*]} missing: apt-get install ${need[*]} (as root)" >&2
    return 1
  fi
  echo "== installing ${need[*]} (Debian packages)" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  state="$PODMAN_REPO/target/podman"
  sock="$state/podman.sock"
  pidfile="$state/service.pid"
  running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
  case ${1:-} in
    compose)
      shift
      podman_tools_installed
      if ! running; then
        mkdir -p "$state"
        rm -f "$sock"
        # --time=0: no idle timeout; `scripts/podman.sh stop` ends it.
        setsid podman system service --time=0 "unix://$sock" >"$state/service.log" 2>&1 &
        echo $! >"$pidfile"
        for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
        [ -S "$sock" ] || { cat "$state/service.log" >&2; exit 1; }
      fi
      cd "$PODMAN_REPO"
      export DOCKER_HOST="unix://$sock"
      # podman 4.3 can refuse to remove a container while the ones sharing its network
      # (network_mode: service:…) are being removed; a second `down` finishes the job.
      if [[ " $* " == *" down "* ]]; then
        docker-compose "$@" || docker-compose "$@"
      else
        exec docker-compose "$@"
      fi
      ;;
    stop)
      if running; then kill "$(cat "$pidfile")"; fi
      rm -f "$pidfile" "$sock"
      ;;
    *)
      sed -n '6,9p' "$0" >&2
      exit 2
      ;;
  esac
fi
