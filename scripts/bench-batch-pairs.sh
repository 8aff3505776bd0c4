#!/usr/bin/env bash
# score-batch file->file and the in-memory bench back to back, for A/B work on a noisy
# host: `bash scripts/bench-batch-pairs.sh ROWS ROUNDS [SCORE_BATCH...]`. Each round runs
# every given score-batch binary (default: the release build's) on one CSV of ROWS rows
# (made once, in $TMPDIR; read back into the page cache before each run), then
# `surge-bench throughput` on the same rows; one release worker serves all. Each line
# gives the wall, the CPU seconds of the broker, the worker and score-batch
# (user/system, peak RSS), and the machine's idle and iowait seconds, read from /proc
# around the run. The in-memory line's ratio base is its own `secs` (the bench's
# clock, as `make bench-batch` uses it).
# Output files are checked (`surge-bench check-scores`) and removed. Rows per job:
# SURGE_PAIRS_ROWS_PER_JOB (default 256, as `make bench-batch`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:?rows}
ROUNDS=${2:-3}
PER_JOB=${SURGE_PAIRS_ROWS_PER_JOB:-256}
shift $(($# < 2 ? $# : 2))
PREFIX=bench-pairs-$$
RAW=out/bench/batch-pairs.jsonl
source scripts/bench-lib.sh
SBS=("$@")
[ ${#SBS[@]} -gt 0 ] || SBS=("$BIN/score-batch")
IN=${TMPDIR:-/tmp}/bench-pairs-rows-$ROWS.csv
OUTF=$(mktemp "${TMPDIR:-/tmp}/bench-pairs-out.XXXXXX.csv")
trap 'cleanup; rm -f "$OUTF"' EXIT
[ -f "$IN" ] || "$BIN/surge-bench" gen-rows --rows "$ROWS" --out "$IN"
sync
RUST_LOG=warn "$BIN/surge" worker --prefix "$PREFIX" --model breast-cancer --metrics-addr off \
  >"$OUT/pairs-worker.log" 2>&1 &
WPID=$!
pids+=("$WPID")
sleep 2
BEAM=$(pgrep -f beam.smp | head -1)
cpu() { awk '{print ($14+$15)/100}' "/proc/$1/stat"; }
stat_cpu() { awk '/^cpu /{print ($5+$6)/100, $6/100}' /proc/stat; }
# Where a run's clock stops: the wall and the CPU counters it is measured by.
stop_clock() { t1=$(date +%s.%N); b1=$(cpu "$BEAM"); w1=$(cpu "$WPID"); read -r i1 io1 < <(stat_cpu); }
for r in $(seq 1 "$ROUNDS"); do
  for sb in "${SBS[@]}" in-memory; do
    # The input back in the page cache (DAMON pages out what sat unused; see
    # bench-batch.sh): the client's work is measured, not the disk.
    [ "$sb" = in-memory ] || cat "$IN" >/dev/null
    b0=$(cpu "$BEAM"); w0=$(cpu "$WPID"); read -r i0 io0 < <(stat_cpu); t0=$(date +%s.%N)
    if [ "$sb" = in-memory ]; then
      client=$(RUST_LOG=warn "$BIN/surge-bench" --prefix "$PREFIX" throughput --rows "$ROWS" \
        --rows-per-job "$PER_JOB" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("cpu %.2f secs %.2f" % (d["client_cpu_s"], d["secs"]))')
      stop_clock
    else
      /usr/bin/time -f '%U %S %M' -o "$OUTF.time" env RUST_LOG=warn "$sb" --model breast-cancer \
        --prefix "$PREFIX" --rows-per-job "$PER_JOB" --quiet --input "$IN" --output "$OUTF"
      # The clock stops here: checking the output is not part of the run.
      stop_clock
      read -r u s m <"$OUTF.time"
      "$BIN/surge-bench" check-scores --rows "$ROWS" --file "$OUTF" >/dev/null
      client="cpu u$u/s$s rss $((m / 1024)) MB"
      rm -f "$OUTF.time"
    fi
    python3 -c 'import sys; r,n,t0,t1,b0,b1,w0,w1,i0,i1,io0,io1,c=sys.argv[1:]; f=float
print(f"round {r} {n}: wall {f(t1)-f(t0):.2f} s, broker {f(b1)-f(b0):.2f}, worker {f(w1)-f(w0):.2f}, client {c}, idle {f(i1)-f(i0):.2f} (iowait {f(io1)-f(io0):.2f}) CPU-s")' \
      "$r" "$sb" "$t0" "$t1" "$b0" "$b1" "$w0" "$w1" "$i0" "$i1" "$io0" "$io1" "$client" | tee -a "$RAW"
  done
done
