#!/usr/bin/env bash
# score-batch at scale: peak RSS and wall rows/s for a CSV and a Parquet file of
# SURGE_BATCH_ROWS rows (default 10,000,000) at 256 rows per job through one release
# worker, against the in-memory throughput (`surge-bench throughput`) of the same rows
# in the same run (SURGE_BATCH_ROUNDS rounds, default 1). The files go to $TMPDIR
# (default /tmp) and are removed on exit.
# Peak RSS is score-batch's VmHWM, polled from /proc/<pid>/status while it runs.
# Each output is checked (`surge-bench check-scores`: every row once, in order,
# scored) before its figure is printed.
# Release binaries come from ${CARGO_TARGET_DIR:-target}/release (bench-lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${SURGE_BATCH_ROWS:-10000000}
PER_JOB=256
PREFIX=bench-batch-$$
RAW=out/bench/batch.jsonl
source scripts/bench-lib.sh
TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench-batch.XXXXXX")
trap 'cleanup; rm -rf "$TMP"' EXIT

RUST_LOG=warn "$BIN/surge" worker --prefix "$PREFIX" --model breast-cancer --metrics-addr off \
  >"$OUT/batch-worker.log" 2>&1 &
pids+=($!)
sleep 2

peak_kb() { # peak_kb PID: polls VmHWM while PID runs (a zombie has none), prints the last
  # Read with bash builtins: an awk started ten times a second took CPU from the run.
  local pid=$1 kb=0 key v rest found
  while :; do
    found=
    while read -r key v rest; do
      if [ "$key" = VmHWM: ]; then found=$v; break; fi
    done 2>/dev/null <"/proc/$pid/status" || true
    [ -n "$found" ] || break
    kb=$found
    sleep 0.1
  done
  echo "$kb"
}

run_batch() { # run_batch FORMAT
  local fmt=$1 in="$TMP/rows.$1" out="$TMP/scores.$1"
  "$BIN/surge-bench" gen-rows --rows "$ROWS" --out "$in"
  # The input is a file at rest, as a user's is: its 2 GB of dirty pages are written
  # back before the clock starts, not while score-batch reads it and writes its own
  # output (that writeback took 10-25% off the CSV rounds).
  sync
  local size_mb=$(( $(stat -c %s "$in") / 1048576 ))
  local t0 t1 kb
  t0=$(date +%s.%N)
  RUST_LOG=warn "$BIN/score-batch" --model breast-cancer --prefix "$PREFIX" \
    --rows-per-job "$PER_JOB" --quiet --input "$in" --output "$out" &
  local pid=$!
  kb=$(peak_kb "$pid")
  wait "$pid"
  t1=$(date +%s.%N)
  # A figure counts only if the output holds every row once, in order, scored.
  "$BIN/surge-bench" check-scores --rows "$ROWS" --file "$out" >/dev/null
  python3 -c 'import json,sys; f,rows,mb,kb,t0,t1=sys.argv[1:]; s=float(t1)-float(t0); print(json.dumps({"bench":"score_batch","format":f,"rows":int(rows),"rows_per_job":256,"input_mb":int(mb),"peak_rss_mb":round(int(kb)/1024,1),"wall_s":round(s,2),"wall_rows_per_s":round(int(rows)/s)}))' \
    "$fmt" "$ROWS" "$size_mb" "$kb" "$t0" "$t1" | tee -a "$RAW"
  rm -f "$in" "$out"
}

# Rounds alternate CSV, Parquet and the in-memory baseline: this host's speed drifts
# between runs, so each file figure is compared with the baseline of its own round.
for round in $(seq 1 "${SURGE_BATCH_ROUNDS:-1}"); do
  echo "round $round" >&2
  run_batch csv
  run_batch parquet
  bench throughput --rows "$ROWS" --rows-per-job "$PER_JOB"
done
