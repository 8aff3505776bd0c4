#!/usr/bin/env python3
"""Turns out/bench/results.jsonl into BENCHMARKS.md."""
import json, os, platform, subprocess, sys, datetime

raw, workers = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(raw) if l.strip()]
by = lambda name: [r for r in rows if r["bench"] == name]
echoes = {r["payload"]: r for r in by("echo")}
echo = echoes[200]
# The echo whose body is the size of a job of k rows (msgpack, 30 features).
def echo_for(k):
    return echoes.get({256: 38500, 4096: 615000}.get(k, 200), echo)
echo_lat = by("echo_latency")[0]
lat = by("latency")[0]
tp = {r["rows_per_job"]: r for r in by("throughput")}

def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        return "?"

cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
mem = sh("free -g | awk '/Mem:/{print $2}'")
rmq = sh("rabbitmqctl version")
out = []
w = out.append
w("# Benchmarks\n")
w(f"Measured {datetime.date.today()} by `make bench` (scripts/bench.sh), release build, {workers} worker process(es).\n")
w(f"Machine: {os.cpu_count()} cores ({cpu}), {mem} GiB RAM, RabbitMQ {rmq} on 127.0.0.1, Linux {platform.release()}. "
  "Broker, worker and client share the same cores, so every figure below includes the broker's CPU cost. "
  "These machines are noisy: compare figures from the same run only.\n")
w("## Throughput end to end\n")
w("`score-batch`'s library publishes jobs with confirms → quorum queue → `surge worker` (batches across jobs, "
  "`--max-batch-rows 4096`, `--threads 1`) → results published with confirms → ack → results deduplicated by job id.\n")
w("`--threads 1` is the worker's default for tabular models (text models get every core): measured on this machine, one candle thread beat candle's default pool "
  "(whose workers spin-wait and steal the broker's and client's CPU) at every job size: 4096 rows/job 354k → 458k rows/s, "
  "256 rows/job 248k → 311k, 1 row/job 3.1k → 3.9k jobs/s (measured back to back, one worker; see the closing note of stop 8).\n")
w("| rows per job | rows | jobs | seconds | rows/s | jobs/s | echo of a same-size body, msgs/s | jobs/s ÷ echo |")
w("|---:|---:|---:|---:|---:|---:|---:|---:|")
for k in sorted(tp):
    r = tp[k]
    e = echo_for(k)
    w(f"| {k} | {r['rows']:,} | {r['jobs']:,} | {r['secs']:.2f} | {r['rows_per_s']:,.0f} | {r['jobs_per_s']:,.0f} | {e['msgs_per_s']:,.0f} ({e['payload']:,} B) | {r['jobs_per_s']/e['msgs_per_s']:.2f}× |")
w("")
w("## The ceiling: a no-op echo through the same broker, same run\n")
w("Producer publishes with confirms to a durable quorum queue; an echo consumer publishes each body back with "
  "confirms and acks after the confirm (batches of what is ready, like the worker); a results consumer counts.\n")
w("| what | figure |\n|---|---:|")
for e in sorted(echoes.values(), key=lambda e: e["payload"]):
    w(f"| echo, {e['payload']:,}-byte messages | {e['msgs_per_s']:,.0f} msgs/s ({e['messages']:,} messages) |")
w(f"| echo round trip p50 / p99 (one at a time) | {echo_lat['p50_ms']:.2f} / {echo_lat['p99_ms']:.2f} ms |")
w(f"| surge single-row job round trip p50 / p99 (one at a time) | {lat['p50_ms']:.2f} / {lat['p99_ms']:.2f} ms |")
w("")
w("## Against the targets\n")
w("| target | measured | met |\n|---|---|:-:|")
one = tp.get(1)
if one:
    ratio = one["jobs_per_s"] / echo["msgs_per_s"]
    w(f"| 1 row/job ≥ 0.8× echo msgs/s | {one['jobs_per_s']:,.0f} vs {echo['msgs_per_s']:,.0f} = {ratio:.2f}× | {'yes' if ratio >= 0.8 else 'no'} |")
big = tp.get(4096)
if big:
    ceiling = echo_for(4096)["msgs_per_s"] * 4096
    w(f"| 4096 rows/job ≥ 1M rows/s | {big['rows_per_s']:,.0f} rows/s (the echo of same-size bodies caps it at {ceiling:,.0f} rows/s) | {'yes' if big['rows_per_s'] >= 1e6 else 'no'} |")
r = lat["p50_ms"] / echo_lat["p50_ms"]
w(f"| single-row p50 ≤ 1.5× echo p50 | {lat['p50_ms']:.2f} vs {echo_lat['p50_ms']:.2f} ms = {r:.2f}× | {'yes' if r <= 1.5 else 'no'} |")
w("")
w("Reproduce: `make bench` (raw JSON lines in `out/bench/results.jsonl`).\n")
print("\n".join(out))
