#!/usr/bin/env bash
# `make bench`: Surge end to end vs a no-op echo through the same broker, same run.
# Writes BENCHMARKS.md (the figures) and out/bench/*.jsonl (the raw lines).
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX="bench-$(date +%s)"
RAW="out/bench/results.jsonl"
mkdir -p out/bench
source scripts/bench-lib.sh
WORKERS=${SURGE_BENCH_WORKERS:-1}
for i in $(seq 1 "$WORKERS"); do
  RUST_LOG=warn "$BIN/surge" worker --prefix "$PREFIX" --model breast-cancer --metrics-addr off \
    --max-batch-rows 4096 >"$OUT/worker-$i.log" 2>&1 &
  pids+=($!)
done
sleep 2
echo "== echo ceiling (1-row-sized messages) and its latency"
bench echo --messages 30000 --payload 200
# Echoes the size of a 256-row and a 4096-row job's body: the broker's own ceiling there.
bench echo --messages 3000 --payload 38500
bench echo --messages 300 --payload 615000
bench echo-latency --samples 500
echo "== surge end to end"
bench throughput --rows 30000 --rows-per-job 1
bench throughput --rows 200000 --rows-per-job 16
bench throughput --rows 1000000 --rows-per-job 256
bench throughput --rows 2000000 --rows-per-job 4096
bench latency --samples 500
python3 scripts/bench_report.py "$RAW" "$WORKERS" > "$OUT/BENCHMARKS.core.md"
# Keep the sections other benches wrote (between <!-- name:begin|start ... --> and
# <!-- name:end --> markers): this script owns only the part above them.
python3 - "$OUT/BENCHMARKS.core.md" <<'PY'
import re, sys, os
core = open(sys.argv[1]).read().rstrip("\n") + "\n"
old = open("BENCHMARKS.md").read() if os.path.exists("BENCHMARKS.md") else ""
blocks = [m.group(0) for m in re.finditer(r"<!-- (\w[\w-]*):(?:begin|start).*?<!-- \1:end -->\n?", old, re.S)]
open("BENCHMARKS.md", "w").write(core + "".join("\n" + b.rstrip("\n") + "\n" for b in blocks))
PY
echo "wrote BENCHMARKS.md"
