#!/usr/bin/env bash
# The local stack without Docker: Envoy from PyPI, hopwarden and the demo services as
# processes on 127.0.0.1, on the ports docker-compose.yml publishes. Ctrl-C (or SIGTERM,
# SIGINT, SIGHUP to this pid, or any of its processes exiting) stops every process it
# started; it refuses to start over a running stack or a port in use.
set -euo pipefail
cd "$(dirname "$0")/.."
envoy=$(scripts/install-envoy.sh)
cargo build --release --locked --bin hopwarden --example demo-service --example local-stack
HOPWARDEN_ENVOY="$envoy" exec target/release/examples/local-stack "$@"   # --dir DIR, --free-ports
