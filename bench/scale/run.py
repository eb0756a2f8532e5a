#!/usr/bin/env python3
"""bench/scale.sh's measurements: how a check's cost, the load, memory and a reload
grow with the number of rules and services. hopwarden alone, driven by the project's
loadgen over gRPC on 127.0.0.1. Every figure is printed with its target.

Environment (bench/scale.sh sets the paths):
  HOPWARDEN, LOADGEN, WORK   binaries and a scratch directory
  RULES="10 100 1000 10000 100000"   rule counts for one service
  SERVICES="1000 10000"      estate sizes (10 rules a service)
  ROUTES="10 1000 10000"     rules of one caller, each for its own path
  CHECKS=3000                checks per loadgen run (each run is bounded by it)
  CONCURRENCY=4
  LOAD_RUNS=3                `hopwarden validate` runs per load figure (best time, highest peak)
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

HW = os.environ["HOPWARDEN"]
LOADGEN = os.environ["LOADGEN"]
WORK = os.environ["WORK"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RULES = [int(n) for n in os.environ.get("RULES", "10 100 1000 10000 100000").split()]
SERVICES = [int(n) for n in os.environ.get("SERVICES", "1000 10000").split()]
ROUTES = [int(n) for n in os.environ.get("ROUTES", "10 1000 10000").split()]
CHECKS = int(os.environ.get("CHECKS", "3000"))
CONCURRENCY = int(os.environ.get("CONCURRENCY", "4"))
LOAD_RUNS = int(os.environ.get("LOAD_RUNS", "3"))
PLAIN = "HOPWARDEN_DEV_PLAIN_SCAN"
started = []
CPU_S = {}  # validate's CPU time (user + system) by config: wall time on a shared machine waits for the CPU


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def estate(name, services, rules, match, *more):
    d = os.path.join(WORK, name)
    if not os.path.isdir(d):
        subprocess.run([sys.executable, os.path.join(ROOT, "bench/scale/estate.py"), d,
                        "--services", str(services), "--rules", str(rules), "--match", match,
                        *more], check=True)
    return d


def config(policies):
    port, admin = free_port(), free_port()
    path = os.path.join(WORK, f"hopwarden-{os.path.basename(policies)}.yaml")
    with open(path, "w") as f:
        f.write(f"""listen: 127.0.0.1:{port}
policies: {policies}
issuers:
  - issuer: https://sts.hopwarden.local
    jwks_file: {WORK}/jwks.json
cache: {{max_entries: 200000, token_max_entries: 200000, ttl: 60s, deny_ttl: 5s}}
log: {{format: json, level: info}}
decision_log: {{to: /dev/null}}
worker_threads: 1
admin: {{listen: "127.0.0.1:{admin}"}}
""")
    return path, port, admin


def validate(cfg, plain=False):
    """Load time (s) and peak RSS (MB) of `hopwarden validate`: the best wall and CPU
    time of LOAD_RUNS runs (the first run after a pause is often slower on a shared
    VM), and the highest peak."""
    env = dict(os.environ)
    env.pop(PLAIN, None)
    if plain:
        env[PLAIN] = "1"
    walls, cpus, peaks = [], [], []
    for _ in range(LOAD_RUNS):
        out = subprocess.run(["/usr/bin/time", "-v", HW, "validate", "-c", cfg], env=env,
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"validate failed: {out.stderr[-2000:]}")
        wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", out.stderr)
        h, m, s = wall.groups()
        walls.append(int(h or 0) * 3600 + int(m) * 60 + float(s))
        peaks.append(int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1)))
        cpus.append(sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", out.stderr).group(1))
                        for k in ("User", "System")))
    CPU_S[cfg] = min(cpus)
    return min(walls), max(peaks) / 1024


class Server:
    def __init__(self, cfg, port, admin, plain=False):
        env = dict(os.environ)
        env.pop(PLAIN, None)
        if plain:
            env[PLAIN] = "1"
        self.log = open(cfg + ".log", "w")
        self.proc = subprocess.Popen([HW, "serve", "-c", cfg], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        started.append(self.proc)
        self.port, self.admin, self.logpath = port, admin, cfg + ".log"
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"hopwarden exited; see {self.logpath}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1)
                return
            except Exception:
                time.sleep(0.1)
        raise SystemExit(f"hopwarden not ready in 120 s; see {self.logpath}")

    def rss_mb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            kb = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
        return kb / 1024

    def metric(self, prefix):
        page = urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics").read().decode()
        return sum(float(l.rsplit(" ", 1)[1]) for l in page.splitlines() if l.startswith(prefix))

    def series(self):
        page = urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics").read().decode()
        return sum(1 for l in page.splitlines() if l and not l.startswith("#"))

    def run(self, *args):
        out = subprocess.run([LOADGEN, "run", "--addr", f"127.0.0.1:{self.port}",
                              "--server-pid", str(self.proc.pid), *args],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def miss(self):
        return self.run("--tokens", f"{WORK}/tokens.txt", "--concurrency", str(CONCURRENCY),
                        "--requests", str(CHECKS))

    def hit(self):
        self.run("--token", TOKEN, "--concurrency", "1", "--requests", "10")
        return self.run("--token", TOKEN, "--concurrency", str(CONCURRENCY),
                        "--requests", str(CHECKS))

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


results = {"rules": [], "services": [], "reload": None, "lines": {}}
lines = []
RESULTS = os.path.join(ROOT, "bench/results/scale.json")
PARTS = os.environ.get("PARTS", "rules services reload routes").split()
# A run of some parts keeps the other parts' last figures.
if os.path.exists(RESULTS):
    with open(RESULTS) as f:
        kept = json.load(f)
    for part in ("rules", "services", "reload", "routes"):
        if part not in PARTS and part in kept:
            results[part] = kept[part]
            results["lines"][part] = kept.get("lines", {}).get(part, [])


def report(what, value, unit, target=None, ok=None):
    mark = "" if ok is None else ("met" if ok else "MISSED")
    tgt = f"target {target}" if target else ""
    line = f"  {what:<58} {value:>10.2f} {unit:<6} {tgt:<22} {mark}"
    print(line, flush=True)
    lines.append(line)


def one_service():
    print("== one service, N rules (CPU per check from /proc, us; loadgen, "
          f"{CHECKS} checks, concurrency {CONCURRENCY})", flush=True)
    base = {}
    for n in RULES:
        for match in ("last", "first"):
            d = estate(f"rules-{n}-{match}", 1, n, match)
            cfg, port, admin = config(d)
            row = {"rules": n, "match": match}
            if match == "last":
                row["load_s"], row["peak_mb"] = validate(cfg)
            for mode, plain in (("index", False), ("scan", True)):
                if plain and n > 10000 and match == "first":
                    continue
                s = Server(cfg, port, admin, plain)
                try:
                    if mode == "index":
                        row["rss_mb"] = s.rss_mb()
                    m = s.miss()
                    h = s.hit()
                    if m["errors"] or m["denied"] or h["errors"] or h["denied"]:
                        raise SystemExit(f"unexpected errors or denials: {m} {h}")
                    row[f"{mode}_miss_us"] = m["server_cpu_us_per_check"]
                    row[f"{mode}_hit_us"] = h["server_cpu_us_per_check"]
                    row[f"{mode}_miss_p99_us"] = m["p99_us"]
                finally:
                    s.stop()
            results["rules"].append(row)
            if n == RULES[0] and match == "last":
                base = row
            tag = f"{n} rules, match {match}"
            report(f"{tag}: CPU per miss (index)", row["index_miss_us"], "us",
                   "<= 1.1x 10 rules", row["index_miss_us"] <= 1.1 * base["index_miss_us"])
            if "scan_miss_us" in row:
                report(f"{tag}: CPU per miss (plain scan, before)", row["scan_miss_us"], "us")
            report(f"{tag}: CPU per hit (index)", row["index_hit_us"], "us",
                   "<= 1.1x 10 rules", row["index_hit_us"] <= 1.1 * base["index_hit_us"])
            if match == "last":
                report(f"{tag}: load (validate), wall", row["load_s"], "s",
                       "<= 1 s" if n >= 100000 else "", row["load_s"] <= 1 if n >= 100000 else None)
                row["load_cpu_s"] = CPU_S[cfg]
                report(f"{tag}: load (validate), CPU user+sys", row["load_cpu_s"], "s",
                       "<= 1 s" if n >= 100000 else "", row["load_cpu_s"] <= 1 if n >= 100000 else None)
                report(f"{tag}: peak memory (validate)", row["peak_mb"], "MB",
                       "< 300 MB" if n >= 100000 else "", row["peak_mb"] < 300 if n >= 100000 else None)
                if n > RULES[0]:
                    per_rule = (row["rss_mb"] - base["rss_mb"]) * 1024 / (n - RULES[0])
                    row["kb_per_rule"] = per_rule
                    report(f"{tag}: resident per compiled rule", per_rule, "KB",
                           "<= 1 KB", per_rule <= 1)


def many_services():
    print("== many services, 10 rules each", flush=True)
    for n in SERVICES:
        d = estate(f"services-{n}", n, 10, "last")
        cfg, port, admin = config(d)
        load, peak = validate(cfg)
        s = Server(cfg, port, admin)
        try:
            rss = s.rss_mb()
            m = s.miss()
            h = s.hit()
            series = s.series()
        finally:
            s.stop()
        ok = not (m["errors"] or m["denied"] or h["errors"] or h["denied"])
        results["services"].append({"services": n, "load_s": load, "peak_mb": peak, "rss_mb": rss,
                                    "miss_us": m["server_cpu_us_per_check"],
                                    "hit_us": h["server_cpu_us_per_check"],
                                    "metric_series": series, "served": ok})
        report(f"{n} services: load (validate), wall", load, "s")
        report(f"{n} services: load (validate), CPU user+sys", CPU_S[cfg], "s")
        report(f"{n} services: peak memory (validate)", peak, "MB")
        report(f"{n} services: resident after load", rss, "MB")
        report(f"{n} services: CPU per miss", m["server_cpu_us_per_check"], "us")
        report(f"{n} services: CPU per hit", h["server_cpu_us_per_check"], "us")
        report(f"{n} services: /metrics series after checks", series, "", "bounded", series < 2000)
        report(f"{n} services: checks served without error", 1.0 if ok else 0.0, "", "1", ok)


def reload():
    print("== reload of one changed file in 1,000 services", flush=True)
    d = estate("reload-1000", 1000, 10, "last")
    cfg, port, admin = config(d)
    s = Server(cfg, port, admin)
    try:
        s.hit()  # warm: the ledger decision is cached
        hits0 = s.metric('hopwarden_cache_requests_total{cache="decision",result="hit"}')
        misses0 = s.metric('hopwarden_cache_requests_total{cache="decision",result="miss"}')
        other = os.path.join(d, "svc00001.yaml")
        with open(other, "a") as f:
            f.write("  - {id: svc00001-added, from: {principals: [added]}, to: [{paths: [/added]}]}\n")
        elapsed = None
        deadline = time.time() + 30
        while elapsed is None and time.time() < deadline:
            time.sleep(0.1)
            for line in open(s.logpath):
                if "policies reloaded" in line:
                    record = json.loads(line)
                    elapsed = record.get("elapsed_ms", record.get("fields", {}).get("elapsed_ms"))
        if elapsed is None:
            raise SystemExit(f"no reload seen; see {s.logpath}")
        h = s.run("--token", TOKEN, "--concurrency", str(CONCURRENCY), "--requests", str(CHECKS))
        hits = s.metric('hopwarden_cache_requests_total{cache="decision",result="hit"}') - hits0
        misses = s.metric('hopwarden_cache_requests_total{cache="decision",result="miss"}') - misses0
    finally:
        s.stop()
    rate = hits / max(hits + misses, 1)
    results["reload"] = {"elapsed_ms": elapsed, "hit_rate_after": rate, "hit_us": h["server_cpu_us_per_check"]}
    report("reload of one file in 1,000 services", elapsed, "ms", "<= 50 ms", elapsed <= 50)
    report("decision cache hit rate after the reload (other service)", rate * 100, "%", "~100 %", rate > 0.99)


def routes():
    print("== one caller with N routes in one service (match last; the caller index "
          "selects them all)", flush=True)
    results["routes"] = []
    for n in ROUTES:
        d = estate(f"routes-{n}", 1, n, "last", "--routes")
        cfg, port, admin = config(d)
        row = {"routes": n}
        # The plain scan is what the caller index alone gives here (every rule is
        # this caller's): the before of the first-segment prefilter.
        for mode, plain in (("index", False), ("scan", True)):
            s = Server(cfg, port, admin, plain)
            try:
                m = s.miss()
            finally:
                s.stop()
            if m["errors"] or m["denied"]:
                raise SystemExit(f"unexpected errors or denials: {m}")
            row[f"{mode}_miss_us"] = m["server_cpu_us_per_check"]
        results["routes"].append(row)
        report(f"{n} routes of one caller: CPU per miss (index)", row["index_miss_us"], "us")
        report(f"{n} routes of one caller: CPU per miss (plain scan)", row["scan_miss_us"], "us")


def chart():
    rows = [r for r in results["rules"] if r["match"] == "last" and "scan_miss_us" in r]
    if len(rows) < 2:
        return
    import math
    w, h, pad = 640, 360, 60
    xs = [math.log10(r["rules"]) for r in rows]
    ymax = max(max(r["scan_miss_us"], r["index_miss_us"]) for r in rows) * 1.1
    X = lambda v: pad + (v - xs[0]) / max(xs[-1] - xs[0], 1e-9) * (w - 2 * pad)
    Y = lambda v: h - pad - v / ymax * (h - 2 * pad)
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w/2}" y="20" text-anchor="middle">hopwarden: server CPU per cache miss vs rules in one service (match last)</text>',
           f'<line x1="{pad}" y1="{h-pad}" x2="{w-pad}" y2="{h-pad}" stroke="black"/>',
           f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h-pad}" stroke="black"/>',
           f'<text x="{w/2}" y="{h-15}" text-anchor="middle">rules (log scale)</text>',
           f'<text x="15" y="{h/2}" transform="rotate(-90 15 {h/2})" text-anchor="middle">CPU per miss (us)</text>']
    for r, x in zip(rows, xs):
        svg.append(f'<text x="{X(x)}" y="{h-pad+15}" text-anchor="middle">{r["rules"]:,}</text>')
    for k in range(5):
        v = ymax * k / 4
        svg.append(f'<text x="{pad-5}" y="{Y(v)+4}" text-anchor="end">{v:.0f}</text>')
    for key, color, name in (("scan_miss_us", "#c0392b", "before: plain scan"),
                             ("index_miss_us", "#2471a3", "after: index")):
        pts = " ".join(f"{X(x):.1f},{Y(r[key]):.1f}" for r, x in zip(rows, xs))
        svg.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>')
        for r, x in zip(rows, xs):
            svg.append(f'<circle cx="{X(x):.1f}" cy="{Y(r[key]):.1f}" r="3" fill="{color}"/>')
    svg.append(f'<text x="{w-pad}" y="{pad}" text-anchor="end" fill="#c0392b">before: plain scan</text>')
    svg.append(f'<text x="{w-pad}" y="{pad+16}" text-anchor="end" fill="#2471a3">after: index</text>')
    svg.append("</svg>")
    out = os.path.join(ROOT, "bench/results/scale.svg")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write("\n".join(svg) + "\n")
    print(f"chart: {out}")


TOKEN = open(f"{WORK}/one.txt").read().strip()
try:
    for part, run in (("rules", one_service), ("services", many_services), ("reload", reload),
                      ("routes", routes)):
        if part in PARTS:
            lines.clear()
            run()
            results["lines"][part] = list(lines)
    chart()
finally:
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(ROOT, "bench/results/scale.txt"), "w") as f:
        for part in ("rules", "services", "reload", "routes"):
            f.write("\n".join(results["lines"].get(part, [])) + "\n")
