#!/usr/bin/env bash
# `make bench`: Surge end to end against its ceiling through the same broker, same run.
#
# The ceiling is `surge-bench noop-worker`: it consumes the model's queue exactly as a
# worker does (prefetch, confirms, ack after the confirm) and answers every job,
# without decoding it, with a result body the size of Surge's real one. The client is
# the same (score-batch's library, packed rows) on both sides, so the ratio is what
# Surge's own work (decode, batch, score, encode) costs. Sides alternate, twice per
# job size, and each run prints the CPU seconds of the client, the worker (or noop)
# and the broker. Writes BENCHMARKS.md and out/bench/results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX="bench-$(date +%s)"
# Knobs for comparisons (the defaults are what `make bench` measures):
# SURGE_BENCH_RAW (where the JSON lines go), SURGE_BENCH_WORKER (another build's
# `surge` binary), SURGE_BENCH_ARGS (e.g. --no-pack), SURGE_BENCH_NO_REPORT=1.
RAW="${SURGE_BENCH_RAW:-out/bench/results.jsonl}"
source scripts/bench-lib.sh
BROKER_PID=$(pgrep -o -f 'beam.smp.*-s rabbit' || pgrep -o beam.smp || echo 0)
ROUNDS=${SURGE_BENCH_ROUNDS:-2}
cpu() { [ -r "/proc/$1/stat" ] && awk '{print ($14+$15)/100}' "/proc/$1/stat" || echo 0; }

start_side() { # side rows_per_job -> sets $side_pid
  if [ "$1" = ceiling ]; then
    RUST_LOG=warn "$BIN/surge-bench" --prefix "$PREFIX" noop-worker --rows-per-job "$2" \
      >"$OUT/noop.log" 2>&1 &
  else
    RUST_LOG=warn "${SURGE_BENCH_WORKER:-$BIN/surge}" worker --prefix "$PREFIX" --model breast-cancer --metrics-addr off \
      --max-batch-rows 4096 >"$OUT/worker.log" 2>&1 &
  fi
  side_pid=$!
  pids+=("$side_pid")
  # Until it consumes the model's queue.
  for _ in $(seq 1 100); do
    rabbitmqctl -q list_queues name consumers 2>/dev/null \
      | awk -v q="$PREFIX.jobs.breast-cancer" '$1==q && $2>0 {found=1} END {exit !found}' && break
    sleep 0.1
  done
}

measure() { # side rows_per_job rows | latency side
  local side=$1 k=$2 rows=$3 line b0 w0
  start_side "$side" "$k"
  b0=$(cpu "$BROKER_PID"); w0=$(cpu "$side_pid")
  if [ "$rows" = latency ]; then
    line=$(RUST_LOG=warn "$BIN/surge-bench" --prefix "$PREFIX" ${SURGE_BENCH_ARGS:-} latency --samples 500)
  else
    line=$(RUST_LOG=warn "$BIN/surge-bench" --prefix "$PREFIX" ${SURGE_BENCH_ARGS:-} throughput --rows "$rows" --rows-per-job "$k")
  fi
  local b1 w1
  b1=$(cpu "$BROKER_PID"); w1=$(cpu "$side_pid")
  stop_started
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r.update(side=sys.argv[2], worker_cpu_s=round(float(sys.argv[4])-float(sys.argv[3]),2), broker_cpu_s=round(float(sys.argv[6])-float(sys.argv[5]),2)); print(json.dumps(r))' \
    "$line" "$side" "$w0" "$w1" "$b0" "$b1" | tee -a "$RAW"
}

for spec in 1:20000 16:160000 256:1024000 4096:2048000; do
  k=${spec%%:*}; rows=${spec##*:}
  echo "== $k rows per job, $rows rows"
  for _ in $(seq 1 "$ROUNDS"); do
    measure ceiling "$k" "$rows"
    measure surge "$k" "$rows"
  done
done
echo "== single-row latency"
measure ceiling 1 latency
measure surge 1 latency
[ "${SURGE_BENCH_NO_REPORT:-0}" = 1 ] && exit 0
python3 scripts/bench_report.py "$RAW" > "$OUT/BENCHMARKS.core.md"
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
