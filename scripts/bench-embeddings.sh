#!/usr/bin/env bash
# `make bench-embeddings`: all-MiniLM-L6-v2 sentences/s in process and through the queue,
# next to sentence-transformers (PyTorch) on the same sentences and threads; worker RSS
# and cold start to first result. Writes the "Text embeddings" section of BENCHMARKS.md
# and out/bench-embeddings/results.jsonl.
#
# Every row runs in the same invocation, so the ratios compare like with like on a noisy
# machine: sentence-transformers and Surge at BENCH_THREADS and at 1 thread, and Surge's
# Candle-op path (SURGE_BERT_KERNELS=generic, the one CUDA takes) next to its fused CPU
# kernels.
#
# sentence-transformers goes into a throwaway virtualenv (.cache/st-venv), made here and
# never used by the tests. Knobs: BENCH_THREADS (2), BENCH_SENTENCES (2000),
# BENCH_BATCH (64), BENCH_ROWS_PER_JOB (64), BENCH_SKIP_ST=1 to leave PyTorch out,
# BENCH_PROFILE=dev to use the dev build (dependencies, Candle included, are built at
# opt-level 3 there too) instead of building a release one, BENCH_DEVICE=cuda to run
# Surge and sentence-transformers on the GPU (needs a build with `--features cuda`;
# BENCH_BIN_DIR points at its binaries; not yet run on a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${BENCH_THREADS:-2}
N=${BENCH_SENTENCES:-2000}
BATCH=${BENCH_BATCH:-64}
PER_JOB=${BENCH_ROWS_PER_JOB:-64}
MODEL=all-minilm-l6-v2
OUT=out/bench-embeddings
PROFILE=${BENCH_PROFILE:-release}
DEVICE=${BENCH_DEVICE:-cpu}
if [[ "$PROFILE" == dev ]]; then BIN=${CARGO_TARGET_DIR:-target}/debug; else BIN=${CARGO_TARGET_DIR:-target}/release; fi
BIN=${BENCH_BIN_DIR:-$BIN}
export BENCH_PROFILE=$PROFILE
mkdir -p "$OUT"
RAW="$OUT/results.jsonl"
: >"$RAW"

bash scripts/fetch-models.sh
if [[ -z "${BENCH_BIN_DIR:-}" ]]; then
  cargo build --profile "$PROFILE" -q -p surge-cli
  cargo build --profile "$PROFILE" -q -p surge-model --example embed_bench
fi
python3 scripts/bench_embeddings.py sentences "$OUT/texts.jsonl" "$N"

if [[ "${BENCH_SKIP_ST:-0}" != 1 ]]; then
  ST=.cache/st-venv/bin/python
  if ! "$ST" -c 'import sentence_transformers' 2>/dev/null; then
    echo "== installing sentence-transformers into .cache/st-venv (throwaway; large: torch)"
    python3 -m venv .cache/st-venv
    .cache/st-venv/bin/pip install -q --disable-pip-version-check sentence-transformers
  fi
  for t in $(printf '%s\n' "$THREADS" 1 | uniq); do
    echo "== sentence-transformers, in process, $t threads, $DEVICE"
    "$ST" scripts/bench_embeddings.py st "$OUT/texts.jsonl" "$t" "$BATCH" "$DEVICE" 2>/dev/null | tee -a "$RAW"
  done
fi

surge_in_process() { # threads, then SURGE_BERT_KERNELS (fused or generic)
  echo "== Surge model runtime, in process, $1 threads, $2 kernels, $DEVICE"
  if [[ "$2" == generic ]]; then export SURGE_BERT_KERNELS=generic; else unset SURGE_BERT_KERNELS; fi
  RAYON_NUM_THREADS=$1 CANDLE_NUM_THREADS=$1 \
    "$BIN/examples/embed_bench" models "$MODEL" "$OUT/texts.jsonl" "$BATCH" "$DEVICE" | tee -a "$RAW"
  unset SURGE_BERT_KERNELS
}
surge_in_process "$THREADS" fused
surge_in_process "$THREADS" generic
[[ "$THREADS" == 1 ]] || surge_in_process 1 fused

PREFIX="bench-emb-$(date +%s)"
pid=""
cleanup() {
  if [[ -n "$pid" ]]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  for q in "$PREFIX.jobs.$MODEL" "$PREFIX.results" "$PREFIX.dead"; do
    rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT

echo "== cold start: one text queued, then the worker starts"
head -n 1 "$OUT/texts.jsonl" >"$OUT/one.jsonl"
RUST_LOG=warn "$BIN/score-batch" --prefix "$PREFIX" --model "$MODEL" --input "$OUT/one.jsonl" \
  --output "$OUT/one.out.jsonl" --timeout 120 2>"$OUT/cold-score-batch.log" &
sb=$!
sleep 2
t0=$(date +%s.%N)
RUST_LOG=info "$BIN/surge" worker --prefix "$PREFIX" --model "$MODEL" --metrics-addr off \
  --threads "$THREADS" --device "$DEVICE" >"$OUT/worker.log" 2>&1 &
pid=$!
wait "$sb"
t1=$(date +%s.%N)
python3 -c "import json,sys; print(json.dumps({'kind':'surge_cold_start','seconds':$t1-$t0}))" | tee -a "$RAW"

echo "== Surge through the queue, $PER_JOB texts per job, $THREADS threads"
t0=$(date +%s.%N)
RUST_LOG=warn "$BIN/score-batch" --prefix "$PREFIX" --model "$MODEL" --input "$OUT/texts.jsonl" \
  --output "$OUT/embeddings.jsonl" --rows-per-job "$PER_JOB" --timeout 600 2>"$OUT/score-batch.log"
t1=$(date +%s.%N)
python3 -c "import json; s=$t1-$t0; print(json.dumps({'kind':'surge_queue','sentences':$N,'threads':'$THREADS','rows_per_job':$PER_JOB,'batch':'≤ --max-batch-tokens','seconds':s,'per_s':$N/s}))" | tee -a "$RAW"
python3 - "$pid" <<'PY' | tee -a "$RAW"
import json, sys
kb = {l.split(':')[0]: int(l.split()[1]) for l in open(f"/proc/{sys.argv[1]}/status") if l.startswith(("VmRSS", "VmHWM"))}
print(json.dumps({"kind": "surge_worker_memory", "rss_mb": kb["VmRSS"] / 1024, "hwm_mb": kb["VmHWM"] / 1024}))
PY
python3 scripts/bench_embeddings.py report "$RAW" >/dev/null
echo "wrote the Text embeddings section of BENCHMARKS.md"
