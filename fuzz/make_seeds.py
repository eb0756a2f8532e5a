#!/usr/bin/env python3
"""Writes the committed seed corpus (fuzz/seeds/<target>/) from the project's test cases.

Run from the repository root after `cargo build` (it uses target/debug/hopwarden to
mint one development token, expired, so no seed is ever a valid credential):

    python3 fuzz/make_seeds.py

The seeds are small and readable; libFuzzer grows its own corpus from them
(fuzz/corpus/, not committed).
"""
import base64
import json
import pathlib
import shutil
import struct
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "seeds"


def write(target, name, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


# --- protobuf, by hand: only what a CheckRequest needs -----------------------------
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(tag, payload):
    payload = payload.encode() if isinstance(payload, str) else payload
    return varint(tag << 3 | 2) + varint(len(payload)) + payload


def string_map(tag, pairs):
    return b"".join(field(tag, field(1, k) + field(2, v)) for k, v in pairs)


def check_request(method="GET", path="/transactions/42", host="ledger.internal",
                  headers=(), peer=None, dest=None, ext=(("service", "ledger"),),
                  raw_headers=None):
    http = field(2, method) + string_map(3, headers) + field(4, path) + field(5, host)
    if raw_headers is not None:
        hm = b"".join(field(1, field(1, k) + field(3, v)) for k, v in raw_headers)
        http += field(13, hm)
    attrs = b""
    if peer is not None:
        attrs += field(1, field(4, peer))
    if dest is not None:
        attrs += field(2, field(4, dest))
    attrs += field(4, field(2, http))
    attrs += string_map(10, ext)
    return field(1, attrs)


def framed(message, compressed=0):
    return bytes([compressed]) + struct.pack(">I", len(message)) + message


def b64(s):
    return base64.urlsafe_b64encode(s.encode()).rstrip(b"=").decode()


def main():
    if SEEDS.exists():
        shutil.rmtree(SEEDS)
    hopwarden = ROOT / "target" / "debug" / "hopwarden"
    expired = subprocess.run(
        [str(hopwarden), "token", "--sub", "svc-dev", "--aud", "ledger",
         "--scope", "ledger.read", "--claim", "exp=1000000000", "--claim", "iat=999999000"],
        check=True, capture_output=True, text=True).stdout.strip()
    claims = json.loads(base64.urlsafe_b64decode(expired.split(".")[1] + "=="))
    assert claims["exp"] == 1000000000, claims  # never a valid credential

    peer = "spiffe://fuzz.local/ns/payments/sa/reader"
    # grpc_check: control byte (encoding, frame count), then the body.
    grpc = {
        "peer_read": check_request(peer=peer),
        "peer_read_gateway": check_request(peer=peer, ext=(("service", "ledger"), ("hop", "gateway"))),
        "peer_admin": check_request(peer=peer, path="/admin/x"),
        "bearer_expired": check_request(headers=(("authorization", "Bearer " + expired),)),
        "bearer_garbage": check_request(headers=(("authorization", "Bearer a.b.c"),), peer=peer),
        "grpc_call": check_request(method="POST", path="/ledger.v1.Ledger/Get",
                                   headers=(("content-type", "application/grpc"),)),
        "raw_header_map": check_request(raw_headers=(("X-Tenant", "acme"), ("x-tenant", "evil"))),
        "by_spiffe": check_request(ext=(), dest="spiffe://hopwarden.local/ns/ledger/sa/ledger", peer=peer),
        "non_canonical": check_request(peer=peer, path="/transactions/%2e%2e/admin"),
        "forged_own_header": check_request(peer=peer, headers=(("x-hopwarden-principal", "evil"),)),
        "empty": b"",
    }
    for name, msg in grpc.items():
        write("grpc_check", name, b"\x00" + framed(msg))
    write("grpc_check", "three_frames_identity", b"\x09" + framed(grpc["peer_read"]))
    write("grpc_check", "gzip", b"\x02" + framed(grpc["peer_read"]))
    write("grpc_check", "compressed_flag", b"\x00" + framed(grpc["peer_read"], 1))
    write("grpc_check", "two_messages", b"\x00" + framed(grpc["peer_read"]) * 2)

    # http_request: "METHOD URI" then header lines (from http_authz/convert.rs tests).
    http = {
        "gateway_ledger": "GET /gateway/ledger/transactions/42?x=1\nhost: ledger.internal\nauthorization: Bearer t\nx-hopwarden-extra: a\nx-hopwarden-extra: b",
        "by_host": "GET http://email.internal:80/gateway/-/x",
        "no_prefix": "GET /transactions",
        "mesh_without_service": "GET /mesh/-/x\nhost: email.internal",
        "mesh_nested": "POST /mesh/ledger/gateway/billing/x\ncontent-type: application/grpc",
        "admin": "GET /mesh/ledger/admin/users\nauthorization: Bearer " + expired,
        "dot_segments": "GET /gateway/ledger/a/%2e%2e/admin",
        "root": "DELETE /mesh/ledger/",
    }
    for name, text in http.items():
        write("http_request", name, text)

    # path_match: pattern, newline, path (request.rs and matcher.rs tables).
    paths = ["/", "/transactions/42", "/transactions/42?x=1&y=/../admin", "/a#frag", "/a/",
             "/a//", "/%61dmin", "/a%20b", "/a/../admin", "/a/./b", "//admin", "/a%2Fb",
             "/a%5Cb", "/a\\b", "/%2e%2e/admin", "/a%", "/a%zz", "/a%00", "/%ff",
             "/a%2525", "/a/..;/b", "/admin;x", "/a%3bb", "admin", "*", "/ADMIN/x"]
    patterns = ["/transactions/{id}", "/transactions/{id}/status", "/refunds/**", "/admin/**",
                "/", "/products/*", "/a/*/c", "/{a}/{b}"]
    for i, path in enumerate(paths):
        write("path_match", f"p{i:02}", patterns[i % len(patterns)] + "\n" + path)

    # jwt_parse: mode byte; even = a whole token, odd = header JSON \n claims JSON (signed).
    write("jwt_parse", "dev_expired", b"\x00" + expired.encode())
    write("jwt_parse", "not_compact", b"\x00a.b")
    write("jwt_parse", "alg_none", b"\x00" + (b64('{"alg":"none"}') + "." + b64('{"iss":"https://sts.fuzz.local","sub":"svc-writer"}') + ".").encode())
    good = {"iss": "https://sts.fuzz.local", "sub": "svc-writer", "aud": "ledger",
            "scope": "ledger.write", "exp": 4000000000, "iat": 1700000000}
    signed = {
        "valid": ({"alg": "HS256", "typ": "JWT"}, good),
        "typ_dpop": ({"alg": "HS256", "typ": "dpop+jwt"}, good),
        "crit": ({"alg": "HS256", "crit": ["b64"]}, good),
        "kid_number": ({"alg": "HS256", "kid": 5}, good),
        "expired": ({"alg": "HS256"}, {**good, "exp": 1000}),
        "exp_string": ({"alg": "HS256"}, {**good, "exp": "soon"}),
        "no_exp": ({"alg": "HS256"}, {k: v for k, v in good.items() if k != "exp"}),
        "nbf_future": ({"alg": "HS256"}, {**good, "nbf": 4000000000}),
        "sub_control": ({"alg": "HS256"}, {**good, "sub": "svc\nx"}),
        "scp_array": ({"alg": "HS256"}, {**good, "scp": ["a", "b"], "scope": None}),
        "act": ({"alg": "HS256"}, {**good, "sub": "user-1", "act": {"sub": "svc-writer"}}),
        "rs256_header": ({"alg": "RS256", "kid": "hopwarden-dev-1"}, good),
    }
    for name, (h, c) in signed.items():
        write("jwt_parse", name, b"\x01" + (json.dumps(h) + "\n" + json.dumps(c)).encode())

    # policy_compile: the example policies, the benchmark's, and broken ones.
    for p in sorted((ROOT / "policies").glob("*.yaml")) + sorted((ROOT / "bench" / "policies").glob("*.yaml")):
        if not p.name.endswith("_test.yaml"):
            write("policy_compile", p.parent.parent.name + "_" + p.name if p.parent.parent != ROOT else p.name, p.read_text())
    write("policy_compile", "unknown_key", "service: x\nrules:\n  - id: a\n    form: {}\n")
    write("policy_compile", "duplicate_id", "service: x\nrules:\n  - id: a\n  - id: a\n")
    write("policy_compile", "anchors", "service: &s x\naudiences: [*s]\nrules: []\n")

    # config_load: the example config and small variations.
    write("config_load", "hopwarden", (ROOT / "hopwarden.yaml").read_text())
    write("config_load", "secret_issuer", "listen: 127.0.0.1:0\npolicies: ./policies\nissuers:\n  - issuer: https://sts.fuzz.local\n    secret_file: ./secret\n    algorithms: [HS256]\n")
    write("config_load", "two_sources", "listen: 127.0.0.1:0\npolicies: ./p\nissuers:\n  - issuer: a\n    jwks_file: x\n    jwks_uri: https://a/jwks\n")
    write("config_load", "alg_none", "listen: 127.0.0.1:0\npolicies: ./p\nissuers:\n  - issuer: a\n    jwks_file: x\n    algorithms: [none]\n")
    write("config_load", "minimal", "policies: ./p\n")


if __name__ == "__main__":
    sys.exit(main())
