#!/usr/bin/env python3
"""Writes a policy estate for bench/scale.sh.

estate.py DIR --services N --rules R [--match first|last]

Each service (`ledger`, the one the loadgen checks, then `svc00001`...) gets R
allow rules, one caller each, the least-privilege shape a shared platform
API has: `from.principals` names one caller, `to` names GET on one path, and a scope.
One of them is the benchmark caller's (payments, what `loadgen mint` puts in
`sub`): the first rule or the last (the worst case for a scan).

With --routes, every rule is the benchmark caller's, each for a path of its own
(`/route-R/{id}`, the matching one `/transactions/{id}`): one caller with many
routes, whose rules the caller index cannot tell apart.
"""
import argparse
import os

p = argparse.ArgumentParser()
p.add_argument("dir")
p.add_argument("--services", type=int, default=1)
p.add_argument("--rules", type=int, default=10)
p.add_argument("--match", choices=["first", "last"], default="last")
p.add_argument("--routes", action="store_true")
a = p.parse_args()
os.makedirs(a.dir, exist_ok=True)
for s in range(a.services):
    # The first service is `ledger`, the one the loadgen checks.
    name = "ledger" if s == 0 else f"svc{s:05d}"
    lines = [f"service: {name}", f"audiences: [ledger, {name}]", "rules:"]
    match_at = 0 if a.match == "first" else a.rules - 1
    for r in range(a.rules):
        caller = "spiffe://hopwarden.local/ns/payments/sa/payments" if r == match_at else f"spiffe://hopwarden.local/ns/team{r}/sa/caller-{r}"
        path = "/transactions/{id}"
        if a.routes:
            caller = "spiffe://hopwarden.local/ns/payments/sa/payments"
            path = path if r == match_at else f"/route-{r}/{{id}}"
        lines += [
            f"  - id: {name}-caller-{r}",
            f"    description: caller {r} reads transactions",
            f"    from: {{principals: ['{caller}']}}",
            f"    to: [{{methods: [GET], paths: ['{path}']}}]",
            "    scopes: [ledger.read]",
        ]
    with open(os.path.join(a.dir, f"{name}.yaml"), "w") as f:
        f.write("\n".join(lines) + "\n")
