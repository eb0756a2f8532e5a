#!/usr/bin/env bash
# Debian's redis-server for the cluster-wide rate limit tests (tests/limits_redis.rs):
# installed once with apt-get, then found on PATH. Prints the binary's path. The tests
# start their own redis-server on a free 127.0.0.1 port and stop it by pid; this script
# starts nothing.
set -euo pipefail
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: need root to apt-get install redis-server" >&2
    exit 1
  fi
  apt-get update -qq >/dev/null
  # Never start the packaged service: the tests run their own instances.
  RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi
command -v redis-server
