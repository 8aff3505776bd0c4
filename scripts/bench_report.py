#!/usr/bin/env python3
"""Turns out/bench/results.jsonl (written by scripts/bench.sh) into BENCHMARKS.md's core."""
import json, os, platform, subprocess, sys, datetime, statistics

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]

def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        return "?"

cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
flags = sh("grep -m1 '^flags' /proc/cpuinfo")
isa = ", ".join(f for f in ["avx2", "fma", "avx512f", "avx512_vnni", "amx_tile"] if f" {f}" in flags) or "?"
mem = sh("free -g | awk '/Mem:/{print $2}'")
rmq = sh("rabbitmqctl version")
out = []
w = out.append
w("# Benchmarks\n")
w(f"Measured {datetime.date.today()} by `make bench` (scripts/bench.sh), release build, one worker process.\n")
w(f"Machine: {os.cpu_count()} cores ({cpu}; {isa}), {mem} GiB RAM, RabbitMQ {rmq} on 127.0.0.1, Linux {platform.release()}. "
  "Broker, worker and client share the same cores. These machines are noisy: compare figures from the same run only.\n")
w("## Throughput against the ceiling\n")
w("Both sides: `score-batch`'s library publishes packed-row jobs (30 features) with confirms → quorum queue → consumer → "
  "results published with confirms → ack → results deduplicated by job id. **Surge**: `surge worker --max-batch-rows 4096` "
  "(decode, batch across jobs, MLP forward pass, encode). **Ceiling**: `surge-bench noop-worker`, the same consumer without "
  "the model: it answers every job, undecoded, with a result body of Surge's real size for that job size (one output per row). "
  "The sides alternate; every run is listed. CPU seconds are user+system from `/proc/<pid>/stat` over the run.\n")
w("| rows per job | side | rows | jobs/s | rows/s | client CPU s | worker CPU s | broker CPU s |")
w("|---:|---|---:|---:|---:|---:|---:|---:|")
tp = [r for r in rows if r["bench"] == "throughput"]
sizes = sorted({r["rows_per_job"] for r in tp})
for k in sizes:
    for r in [r for r in tp if r["rows_per_job"] == k]:
        w(f"| {k} | {r['side']} | {r['rows']:,} | {r['jobs_per_s']:,.0f} | {r['rows_per_s']:,.0f} | {r.get('client_cpu_s', 0):.2f} | {r['worker_cpu_s']:.2f} | {r['broker_cpu_s']:.2f} |")
w("")
w("## Ratio to the ceiling\n")
w("| rows per job | ceiling jobs/s (runs) | Surge jobs/s (runs) | Surge ÷ ceiling, median (range over pairs) | ≥ 0.8× |")
w("|---:|---|---|---|:-:|")
for k in sizes:
    c = [r["jobs_per_s"] for r in tp if r["rows_per_job"] == k and r["side"] == "ceiling"]
    s = [r["jobs_per_s"] for r in tp if r["rows_per_job"] == k and r["side"] == "surge"]
    pairs = [b / a for a, b in zip(c, s) if a > 0]
    if not pairs:
        continue
    med = statistics.median(pairs)
    w(f"| {k} | {', '.join(f'{x:,.0f}' for x in c)} | {', '.join(f'{x:,.0f}' for x in s)} | {med:.2f}× ({min(pairs):.2f}–{max(pairs):.2f}) | {'yes' if med >= 0.8 else 'no'} |")
w("")
lat = {r["side"]: r for r in rows if r["bench"] == "latency"}
if "ceiling" in lat and "surge" in lat:
    c, s = lat["ceiling"], lat["surge"]
    ratio = s["p50_ms"] / c["p50_ms"]
    w("## Single-row latency\n")
    w("One single-row job at a time, published with confirms, until its result arrives.\n")
    w("| side | p50 ms | p99 ms |\n|---|---:|---:|")
    w(f"| ceiling (noop-worker) | {c['p50_ms']:.2f} | {c['p99_ms']:.2f} |")
    w(f"| Surge | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} |")
    w(f"\nSurge p50 ÷ ceiling p50 = {ratio:.2f}× (target ≤ 1.3×: {'met' if ratio <= 1.3 else 'not met'}).\n")
w("Reproduce: `make bench` (raw JSON lines in `out/bench/results.jsonl`; `SURGE_BENCH_ROUNDS=3` for more pairs).\n")
print("\n".join(out))
