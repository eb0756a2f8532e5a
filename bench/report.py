#!/usr/bin/env python3
"""Turns bench/run.sh's raw measurements into one table, JSON, Markdown and an SVG chart.

usage: report.py RAW.jsonl OUT_DIR ENVOY_VERSION
Medians over the repetitions; every ratio is against setup b (jwt_authn + rbac,
no cache) in the same scenario of the same run.
"""
import json
import os
import statistics
import sys
import time

SETUPS = {
    "a": "a: no auth (ceiling)",
    "b": "b: jwt_authn + rbac",
    "c": "c: jwt_authn cached + rbac",
    "d": "d: ext_authz gRPC -> hopwarden",
    "e": "e: ext_authz gRPC -> no-op",
    "f": "f: ext_authz HTTP -> hopwarden",
    "g": "g: ext_authz HTTP -> no-op",
    "h": "h: f + a never-hit limit",
}
# The setups the Envoy targets are for: hopwarden on each of Envoy's two protocols.
HOPWARDEN = {"d": "gRPC", "f": "HTTP"}
SCENARIOS = {"reused": "one token reused", "rotating": "every token new"}


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def aggregate_alone(runs):
    """One row per label: the median of each figure over the rounds, as for Envoy.

    Errors and denials are summed (any one of them taints the figure); `runs` keeps
    each round's CPU per check (saturation) or p99 (fixed rate), in round order, and
    `missing` counts the rounds without it (that too taints a target)."""
    rows = []
    for label in dict.fromkeys(r["label"] for r in runs):
        mine = [r for r in runs if r["label"] == label]
        row = {"label": label, "rounds": len(mine)}
        for key in ("throughput", "p50_us", "p99_us", "server_cpu_us_per_check",
                    "engine_p50_us", "engine_p99_us"):
            value = median(r.get(key) for r in mine)
            if value is not None:
                row[key] = value
        for key in ("errors", "denied"):
            row[key] = sum(r.get(key) or 0 for r in mine)
        key = "p99_us" if "rate" in label else "server_cpu_us_per_check"
        row["runs"] = [r.get(key) for r in mine]
        # A round without its figure makes the median one of fewer rounds: say so.
        row["missing"] = sum(v is None for v in row["runs"])
        rows.append(row)
    return rows


def main():
    raw_path, out_dir, envoy_version = sys.argv[1:4]
    rows = [json.loads(l) for l in open(raw_path) if l.strip()]
    envoy = {}
    for scenario in SCENARIOS:
        for setup in SETUPS:
            runs = [r for r in rows if r["kind"] == "envoy" and r["setup"] == setup and r["scenario"] == scenario]
            if not runs:
                continue
            envoy[(scenario, setup)] = {
                "throughput": median(r["throughput"] for r in runs),
                "p50_us": median(r["p50_us"] for r in runs),
                "p99_us": median(r["p99_us"] for r in runs),
                "runs": [round(r["throughput"]) for r in runs],
                "non_2xx": sum(r["non_2xx"] for r in runs),
                # Where the time goes: Envoy's own CPU per request, and the authorization
                # server's (d and f: hopwarden, e: the no-op server).
                "envoy_cpu_us_per_req": median(r.get("envoy_cpu_us_per_req") for r in runs),
                "authz_cpu_us_per_req": median(r.get("authz_cpu_us_per_req") for r in runs),
            }
    for (scenario, setup), m in envoy.items():
        b = envoy.get((scenario, "b"))
        m["throughput_vs_b"] = m["throughput"] / b["throughput"] if b else None
        # The same ratio taken within each round (b and this setup ran back to back),
        # then the median: less swayed by the machine drifting between rounds. For
        # information; the targets use the ratio of medians above.
        by_rep = {r["rep"]: r["throughput"] for r in rows
                  if r["kind"] == "envoy" and r["setup"] == "b" and r["scenario"] == scenario}
        m["throughput_vs_b_paired"] = median(
            r["throughput"] / by_rep[r["rep"]] for r in rows
            if r["kind"] == "envoy" and r["setup"] == setup and r["scenario"] == scenario and by_rep.get(r["rep"]))
        m["p99_vs_b"] = m["p99_us"] / b["p99_us"] if b and b["p99_us"] else None
    alone = aggregate_alone([r for r in rows if r["kind"] == "alone"])
    floor = {r["label"]: r for r in rows if r["kind"] == "floor"}
    memory = next((r for r in rows if r["kind"] == "memory"), None)
    instructions = {r["setup"]: r for r in rows if r["kind"] == "instructions"}
    # When the run started (recorded by run.sh), else now.
    started = next((r["started"] for r in rows if r["kind"] == "meta"),
                   time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def get(scenario, setup, key):
        return envoy.get((scenario, setup), {}).get(key)

    targets = []

    def target(name, value, limit, ok, runs=()):
        # A figure from runs with failed or denied requests measured something else.
        clean = all(not (r.get("errors") or r.get("denied") or r.get("non_2xx") or r.get("missing")) for r in runs)
        targets.append({"target": name, "value": value, "limit": limit,
                        "met": bool(ok and clean) if value is not None else None,
                        **({} if clean else {"note": "runs had errors, denials, non-2xx answers or a round without the figure"})})

    def runs_of(*keys):
        return [r for r in rows if r["kind"] == "envoy" and (r["scenario"], r["setup"]) in keys]

    for h, protocol in HOPWARDEN.items():
        if (("reused", h)) not in envoy:
            continue
        name = f"{h} ({protocol})"
        t = get("reused", h, "throughput_vs_b")
        target(f"reused: {name} throughput >= 1.0x b", t, 1.0, t is not None and t >= 1.0, runs_of(("reused", "b"), ("reused", h)))
        t = get("reused", h, "p99_vs_b")
        target(f"reused: {name} p99 <= 1.2x b", t, 1.2, t is not None and t <= 1.2, runs_of(("reused", "b"), ("reused", h)))
        c = get("reused", "c", "throughput")
        d = get("reused", h, "throughput")
        t = d / c if c and d else None
        target(f"stretch, reused: {name} throughput >= 0.5x c", t, 0.5, t is not None and t >= 0.5, runs_of(("reused", "c"), ("reused", h)))
        t = get("rotating", h, "throughput_vs_b")
        target(f"rotating: {name} throughput >= 0.9x b", t, 0.9, t is not None and t >= 0.9, runs_of(("rotating", "b"), ("rotating", h)))
    by_label = {r["label"]: r for r in alone}
    hit = by_label.get("saturation-hit", {}).get("server_cpu_us_per_check")
    target("alone: server CPU per check, cache hit <= 20 us", hit, 20, hit is not None and hit <= 20, [by_label.get("saturation-hit", {})])
    miss = by_label.get("saturation-miss", {}).get("server_cpu_us_per_check")
    target("alone: server CPU per check, RS256 miss <= 60 us", miss, 60, miss is not None and miss <= 60, [by_label.get("saturation-miss", {})])
    for label in ("rate-5000-hit", "rate-5000-miss"):
        p99 = by_label.get(label, {}).get("p99_us")
        target(f"alone: p99 <= 1 ms at 5,000 checks/s ({label.split('-')[-1]})", p99, 1000, p99 is not None and p99 <= 1000, [by_label.get(label, {})])
        if "floor-5000" in floor:
            # Not a target: the same pacing with a bare loopback TCP echo, for scale.
            targets[-1]["floor_p99_us"] = floor["floor-5000"]["p99_us"]

    if memory:
        growth = (memory["rss_after"] - memory["rss_caches_full"]) / 2**20
        target(f"memory: RSS growth after caches fill, {memory['tokens']:,} tokens <= 64 MiB", growth, 64, growth <= 64)

    # Not targets: how hopwarden compares with a server that does no work, through
    # Envoy (e) and alone (the gRPC floor), and what each setup asks of Envoy.
    info = []
    for scenario in SCENARIOS:
        d, e = get(scenario, "d", "throughput"), get(scenario, "e", "throughput")
        e_vs_b = get(scenario, "e", "throughput_vs_b")
        if d and e and e_vs_b is not None:
            info.append(f"{SCENARIOS[scenario]}: d throughput = {d / e:.2f}x e (the no-op server); e = {e_vs_b:.2f}x b")
        f = get(scenario, "f", "throughput")
        if d and f:
            info.append(f"{SCENARIOS[scenario]}: f (HTTP) throughput = {f / d:.2f}x d (gRPC)")
        g = get(scenario, "g", "throughput")
        if f and g:
            info.append(f"{SCENARIOS[scenario]}: f throughput = {f / g:.2f}x g (the HTTP no-op server)")
        h = get(scenario, "h", "throughput")
        if f and h:
            # Also within each repetition (f and h ran back to back).
            by_rep = {r["rep"]: r["throughput"] for r in rows
                      if r["kind"] == "envoy" and r["setup"] == "f" and r["scenario"] == scenario}
            paired = median(r["throughput"] / by_rep[r["rep"]] for r in rows
                            if r["kind"] == "envoy" and r["setup"] == "h" and r["scenario"] == scenario
                            and by_rep.get(r["rep"]))
            hf, ff = get(scenario, "h", "authz_cpu_us_per_req"), get(scenario, "f", "authz_cpu_us_per_req")
            info.append(f"{SCENARIOS[scenario]}: h (f + a never-hit limit) throughput = {h / f:.3f}x f"
                        + (f", paired by repetition {paired:.3f}x" if paired is not None else "")
                        + (f"; hopwarden CPU {hf:.0f} vs {ff:.0f} us/req" if hf and ff else ""))
    floor_sat = by_label.get("floor-grpc-saturation", {}).get("server_cpu_us_per_check")
    rounds = max((r["rounds"] for r in alone), default=0)
    if hit and floor_sat:
        # Also within each round (the no-op server and hopwarden ran back to back).
        floors = {r.get("rep"): r.get("server_cpu_us_per_check") for r in rows
                  if r["kind"] == "alone" and r["label"] == "floor-grpc-saturation"}
        paired = median(r["server_cpu_us_per_check"] - floors[r.get("rep")] for r in rows
                        if r["kind"] == "alone" and r["label"] == "saturation-hit"
                        and r.get("server_cpu_us_per_check") and floors.get(r.get("rep")))
        info.append(f"alone, cache hit: {hit:.1f} us of CPU per check, the no-op server {floor_sat:.1f} ({hit - floor_sat:+.1f} us)"
                    + (f" (median within a round: {paired:+.1f} us)" if paired is not None and rounds > 1 else ""))
    floor_rate = by_label.get("floor-grpc-rate-5000", {}).get("p99_us")
    if floor_rate:
        info.append(f"alone, p99 at 5,000/s: the no-op server's is {floor_rate:.0f} us")
    b_instr = instructions.get("b", {}).get("instructions_per_req")
    if b_instr:
        for setup, r in instructions.items():
            info.append(f"Envoy instructions per request, {SETUPS[setup]}: {r['instructions_per_req']:,.0f} ({r['instructions_per_req'] / b_instr:.2f}x b)")

    # ---- text table
    lines = []
    lines.append(f"hopwarden benchmark, Envoy {envoy_version}, started {started.replace('T', ' ')[:16]} UTC, {os.cpu_count()} cores")
    lines.append("")
    lines.append(f"{'scenario':<18}{'setup':<32}{'req/s':>9}{'p50 us':>9}{'p99 us':>9}{'x b thr':>9}{'paired':>8}{'x b p99':>9}{'envoy us':>9}{'authz us':>9}  runs")
    for (scenario, setup), m in envoy.items():
        f = lambda v, fmt: (fmt % v) if v is not None else "-"
        lines.append(
            f"{SCENARIOS[scenario]:<18}{SETUPS[setup]:<32}{f(m['throughput'], '%.0f'):>9}{f(m['p50_us'], '%.0f'):>9}"
            f"{f(m['p99_us'], '%.0f'):>9}{f(m['throughput_vs_b'], '%.2f'):>9}{f(m['throughput_vs_b_paired'], '%.2f'):>8}{f(m['p99_vs_b'], '%.2f'):>9}"
            f"{f(m['envoy_cpu_us_per_req'], '%.0f'):>9}{f(m['authz_cpu_us_per_req'], '%.0f'):>9}  {m['runs']}"
            + (f"  non-2xx {m['non_2xx']}" if m["non_2xx"] else "")
        )
    lines.append("")
    lines.append(f"{'server alone':<22}{'checks/s':>10}{'p50 us':>9}{'p99 us':>9}{'cpu us/check':>14}{'errors':>8}{'denied':>8}{'engine p50':>12}{'engine p99':>12}  runs")
    for r in alone:
        cpu = r.get("server_cpu_us_per_check")
        f = lambda v: "-" if v is None else "%.0f" % v
        runs = ", ".join("-" if v is None else ("%.1f" % v if "rate" not in r["label"] else "%.0f" % v) for v in r["runs"])
        lines.append(f"{r['label']:<22}{r['throughput']:>10.0f}{f(r['p50_us']):>9}{f(r['p99_us']):>9}{('%.1f' % cpu) if cpu else '-':>14}{r['errors']:>8}{r.get('denied', 0):>8}{f(r.get('engine_p50_us')):>12}{f(r.get('engine_p99_us')):>12}  [{runs}]")
    if rounds > 1:
        lines.append(f"  (medians of {rounds} rounds; runs: each round's cpu us/check at saturation, p99 us at a fixed rate;"
                     " results.json keeps every round's figures under alone_runs)")
    if any(r["label"].startswith("floor-grpc") for r in alone):
        lines.append("  (floor-grpc-*: the no-op server of setup e, not hopwarden)")
    if any("engine_p99_us" in r for r in alone):
        lines.append("  (engine: hopwarden's own time per check, from its decision log; the rest of the latency is transport and machine)")
    for r in floor.values():
        lines.append(f"{r['label'] + ' (no server)':<22}{r['throughput']:>10.0f}{r['p50_us']:>9}{r['p99_us']:>9}{'-':>14}{'-':>8}")
    if memory:
        mib = lambda b: b / 2**20
        lines.append("")
        lines.append(
            f"memory: idle {mib(memory['rss_idle']):.0f} MiB, caches full (200,000 tokens) {mib(memory['rss_caches_full']):.0f} MiB, "
            f"after {memory['tokens']:,} tokens {mib(memory['rss_after']):.0f} MiB"
        )
    lines.append("")
    lines.append("for scale (not targets):")
    lines.extend(f"  {i}" for i in info)
    lines.append("")
    lines.append("targets:")
    for t in targets:
        v = "-" if t["value"] is None else f"{t['value']:.2f}"
        extra = f" (floor: loopback TCP echo at 5,000/s, p99 {t['floor_p99_us']})" if "floor_p99_us" in t else ""
        extra += f" ({t['note']})" if "note" in t else ""
        lines.append(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']}: {v}{extra}")
    text = "\n".join(lines)
    print(text)

    os.makedirs(out_dir, exist_ok=True)
    data = {
        "envoy_version": envoy_version,
        "date": started,
        "cores": os.cpu_count(),
        "envoy": [{"scenario": s, "setup": k, **m} for (s, k), m in envoy.items()],
        "alone": alone,
        # Every round's record, as the load generator gave it.
        "alone_runs": [r for r in rows if r["kind"] == "alone"],
        "floor": list(floor.values()),
        "memory": memory,
        "instructions": list(instructions.values()),
        "info": info,
        "targets": targets,
    }
    json.dump(data, open(os.path.join(out_dir, "results.json"), "w"), indent=2)

    md = ["# hopwarden benchmark results", "", "```", text, "```", ""]
    md.append("| scenario | setup | req/s | p50 µs | p99 µs | × b throughput | × b, paired by round | × b p99 | Envoy CPU µs/req | authz server CPU µs/req (d, f, h: hopwarden; e, g: no-op) |")
    md.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (scenario, setup), m in envoy.items():
        f = lambda v, fmt: (fmt % v) if v is not None else "–"
        md.append(f"| {SCENARIOS[scenario]} | {SETUPS[setup]} | {f(m['throughput'], '%.0f')} | {f(m['p50_us'], '%.0f')} | {f(m['p99_us'], '%.0f')} | {f(m['throughput_vs_b'], '%.2f')} | {f(m['throughput_vs_b_paired'], '%.2f')} | {f(m['p99_vs_b'], '%.2f')} | {f(m['envoy_cpu_us_per_req'], '%.0f')} | {f(m['authz_cpu_us_per_req'], '%.0f')} |")
    md.append("")
    md.append("![throughput and p99 per setup](chart.svg)")
    open(os.path.join(out_dir, "results.md"), "w").write("\n".join(md) + "\n")
    open(os.path.join(out_dir, "chart.svg"), "w").write(chart(envoy, envoy_version))


def chart(envoy, envoy_version):
    """Grouped bars: throughput (left panel) and p99 (right panel) per scenario and setup."""
    colors = {"a": "#9e9e9e", "b": "#1f77b4", "c": "#6baed6", "d": "#d62728", "e": "#ff9896", "f": "#2ca02c", "g": "#98df8a", "h": "#9467bd"}
    width, height, pad = 960, 420, 60
    panel_w = (width - 3 * pad) / 2
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">']
    out.append(f'<rect width="{width}" height="{height}" fill="white"/>')
    out.append(f'<text x="{width/2}" y="22" text-anchor="middle" font-size="15">hopwarden vs Envoy jwt_authn+rbac (Envoy {envoy_version}, --concurrency 1, median of runs)</text>')
    for panel, (key, title, unit) in enumerate([("throughput", "throughput", "req/s"), ("p99_us", "p99 latency", "µs")]):
        x0 = pad + panel * (panel_w + pad)
        y0, plot_h = 50, height - 120
        values = [m[key] for m in envoy.values() if m.get(key)]
        top = max(values) * 1.15 if values else 1
        out.append(f'<text x="{x0 + panel_w/2}" y="{y0 - 8}" text-anchor="middle" font-size="13">{title} ({unit})</text>')
        out.append(f'<line x1="{x0}" y1="{y0 + plot_h}" x2="{x0 + panel_w}" y2="{y0 + plot_h}" stroke="black"/>')
        group_w = panel_w / len(SCENARIOS)
        bar_w = group_w / (len(SETUPS) + 1.5)
        for g, scenario in enumerate(SCENARIOS):
            gx = x0 + g * group_w + bar_w * 0.75
            out.append(f'<text x="{x0 + g*group_w + group_w/2}" y="{y0 + plot_h + 18}" text-anchor="middle">{SCENARIOS[scenario]}</text>')
            for i, setup in enumerate(SETUPS):
                m = envoy.get((scenario, setup))
                if not m or m.get(key) is None:
                    continue
                h = m[key] / top * plot_h
                x = gx + i * bar_w
                out.append(f'<rect x="{x:.1f}" y="{y0 + plot_h - h:.1f}" width="{bar_w*0.9:.1f}" height="{h:.1f}" fill="{colors[setup]}"/>')
                out.append(f'<text x="{x + bar_w*0.45:.1f}" y="{y0 + plot_h - h - 4:.1f}" text-anchor="middle" font-size="10">{m[key]:.0f}</text>')
    for i, (setup, name) in enumerate(SETUPS.items()):
        # Two rows of four.
        x, y = pad + (i % 4) * 225, height - 46 + (i // 4) * 20
        out.append(f'<rect x="{x}" y="{y}" width="12" height="12" fill="{colors[setup]}"/>')
        out.append(f'<text x="{x + 18}" y="{y + 10}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
