#!/bin/sh
# Generates a development CA and one SPIFFE certificate per workload, for the Envoy
# sidecars' mTLS. Every certificate carries the URI SAN
#   spiffe://hopwarden.local/ns/<ns>/sa/<name>
# that Envoy reports to hopwarden as attributes.source.principal.
#
# usage: scripts/gen-certs.sh OUT_DIR [name:ns ...]
# default workloads: payments ledger email reconciler(ns ledger) gateway
# Idempotent: an existing CA is reused, so certificates can be added later.
# POSIX sh + openssl only, so it also runs in a minimal container.
set -eu

out=${1:-dev/certs}
shift || true
[ "$#" -gt 0 ] || set -- payments:payments ledger:ledger email:email reconciler:ledger gateway:gateway
td=hopwarden.local
days=${CERT_DAYS:-30}
mkdir -p "$out"

# A CA that is missing or expires within a day is made anew (leaves are signed below).
if [ ! -f "$out/ca.pem" ] || [ ! -f "$out/ca-key.pem" ] ||
   ! openssl x509 -checkend 86400 -noout -in "$out/ca.pem" >/dev/null 2>&1; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$out/ca-key.pem" -out "$out/ca.pem" -days "$days" \
    -subj "/O=hopwarden dev/CN=hopwarden dev CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectAltName=URI:spiffe://$td" 2>/dev/null
fi

for spec in "$@"; do
  name=${spec%%:*}
  ns=${spec#*:}
  [ "$ns" != "$spec" ] || ns=$name
  id="spiffe://$td/ns/$ns/sa/$name"
  ext="$out/$name.ext"
  cat > "$ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=URI:$id,DNS:$name,DNS:localhost,IP:127.0.0.1
EXT
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$out/$name-key.pem" -out "$out/$name.csr" \
    -subj "/O=hopwarden dev/CN=$name" 2>/dev/null
  openssl x509 -req -in "$out/$name.csr" -CA "$out/ca.pem" -CAkey "$out/ca-key.pem" \
    -CAcreateserial -out "$out/$name.pem" -days "$days" -extfile "$ext" 2>/dev/null
  rm -f "$out/$name.csr" "$ext"
  chmod 644 "$out/$name-key.pem"  # Envoy runs as a non-root user in its image
  echo "$out/$name.pem  $id"
done
