#!/usr/bin/env bash
# score-batch at scale: peak RSS and wall rows/s for a CSV and a Parquet file of
# SURGE_BATCH_ROWS rows (default 10,000,000) at 256 rows per job through one release
# worker, against the in-memory throughput (`surge-bench throughput`) of the same rows
# in the same run (SURGE_BATCH_ROUNDS rounds, default 1). The files go to $TMPDIR
# (default /tmp) and are removed on exit.
# Each file run is bracketed by an in-memory run just before and just after it, and
# compared with their mean (a `ratio` line per file run): these hosts' speed drifts by
# tens of percent over minutes, and a baseline measured two runs away (as this bench
# did before) moved the ratio by as much as the code did.
# Peak RSS is score-batch's, from the kernel when it exits (ru_maxrss; `timed`).
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

# timed CMD...: runs CMD (its stdout to stderr) and prints its wall seconds and peak RSS
# in kB. The peak is the kernel's (wait4's ru_maxrss for the one child), not a poll of
# /proc: polling VmHWM printed 0.5 MB once for a Parquet run whose neighbours peaked at
# ~105 MB (most likely read while the child was still being exec'd, its loop then
# ended), and a poll misses what happens between two reads.
timed() {
  python3 -c 'import resource, subprocess, sys, time
t0 = time.monotonic()
rc = subprocess.call(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=sys.stderr)
t1 = time.monotonic()
print(t1 - t0, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(rc)' "$@"
}

gen_input() { # gen_input FORMAT: the round's input, at rest before any clock starts
  "$BIN/surge-bench" gen-rows --rows "$ROWS" --out "$TMP/rows.$1"
}

run_batch() { # run_batch FORMAT: one file->file run; prints its JSON line, keeps its rows/s
  local fmt=$1 in="$TMP/rows.$1" out="$TMP/scores.$1"
  local size_mb=$(( $(stat -c %s "$in") / 1048576 ))
  local timing secs kb
  # The input back in the page cache, as gen_input left it: on these hosts DAMON pages
  # out file pages unused for a minute or so, and a CSV input that sat through two
  # in-memory runs was read partly from disk (649 MB of 2 GB: 282k rows/s against
  # 322k-329k with all of it cached). This bench measures the client's work, not the
  # disk.
  cat "$in" >/dev/null
  timing=$(RUST_LOG=warn timed "$BIN/score-batch" --model breast-cancer --prefix "$PREFIX" \
    --rows-per-job "$PER_JOB" --quiet --input "$in" --output "$out")
  read -r secs kb <<<"$timing"
  # A figure counts only if the output holds every row once, in order, scored.
  "$BIN/surge-bench" check-scores --rows "$ROWS" --file "$out" >/dev/null
  file_rate=$(python3 -c 'import json,sys; f,rows,per_job,mb,kb,s,raw=sys.argv[1:]; s=float(s); d={"bench":"score_batch","format":f,"rows":int(rows),"rows_per_job":int(per_job),"input_mb":int(mb),"peak_rss_mb":round(int(kb)/1024,1),"wall_s":round(s,2),"wall_rows_per_s":round(int(rows)/s)}; open(raw,"a").write(json.dumps(d)+"\n"); print(json.dumps(d), file=sys.stderr); print(d["wall_rows_per_s"])' \
    "$fmt" "$ROWS" "$PER_JOB" "$size_mb" "$kb" "$secs" "$RAW")
  rm -f "$in" "$out"
}

in_memory() { # in_memory [warm-up]: the baseline, once; keeps its rows/s
  local line
  line=$(RUST_LOG=warn "$BIN/surge-bench" --prefix "$PREFIX" throughput --rows "$ROWS" \
    --rows-per-job "$PER_JOB")
  if [ "${1:-}" = warm-up ]; then echo "warm-up (not counted): $line" >&2; return; fi
  echo "$line" | tee -a "$RAW" >&2
  mem_rate=$(echo "$line" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["rows_per_s"]))')
}

ratio() { # ratio FORMAT FILE_RATE BEFORE AFTER: the file run against its bracket's mean
  python3 -c 'import json,sys; f,x,a,b=sys.argv[1:]; m=(int(a)+int(b))/2; print(json.dumps({"bench":"score_batch_ratio","format":f,"wall_rows_per_s":int(x),"in_memory_before":int(a),"in_memory_after":int(b),"ratio":round(int(x)/m,3)}))' \
    "$@" | tee -a "$RAW"
}

# Each round: both inputs written and synced first (a file at rest, as a user's is:
# its 2 GB of dirty pages written back before any clock starts, not while score-batch
# reads it and writes its own output; that writeback took 10-25% off the CSV rounds
# when it overlapped them), an in-memory warm-up, then in memory, CSV, in
# memory, Parquet, in memory: every file run has an in-memory run on each side.
for round in $(seq 1 "${SURGE_BATCH_ROUNDS:-1}"); do
  echo "round $round" >&2
  gen_input csv
  gen_input parquet
  sync
  # Not counted: without it, the first run after writing the inputs was the slowest
  # of its round in 3 of 3 rounds (291k-307k rows/s in memory against 343k-392k later
  # in the round, on an Emerald Rapids), which flattered the CSV run that followed.
  in_memory warm-up
  in_memory
  m0=$mem_rate
  run_batch csv
  csv=$file_rate
  in_memory
  m1=$mem_rate
  run_batch parquet
  pq=$file_rate
  in_memory
  m2=$mem_rate
  ratio csv "$csv" "$m0" "$m1"
  ratio parquet "$pq" "$m1" "$m2"
done
# Over all rounds: each format's median ratio and how many rounds reached 0.8x.
python3 - "$RAW" <<'PY' | tee -a "$RAW"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"score_batch_ratio"' in l]
for f in ("csv", "parquet"):
    r = [d["ratio"] for d in rows if d["format"] == f]
    if r:
        print(json.dumps({"bench": "score_batch_ratio_summary", "format": f, "rounds": len(r),
                          "median": round(statistics.median(r), 3), "min": min(r), "max": max(r),
                          "at_least_0_8": sum(x >= 0.8 for x in r)}))
PY
