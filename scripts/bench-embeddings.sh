#!/usr/bin/env bash
# `make bench-embeddings`: all-MiniLM-L6-v2 throughput swept over text lengths, Surge next
# to PyTorch (sentence-transformers) and ONNX Runtime fp32 at equal threads, on the same
# texts, in one invocation. Writes the "Text embeddings" section of BENCHMARKS.md and the
# raw rows to out/bench-embeddings/results.jsonl.
#
# Texts: buckets of about 16, 32, 64, 128 and 256 tokens ([CLS]/[SEP] included), cut from
# English prose this repository did not write (the Python documentation shipped with the
# interpreter, and the licence texts in /usr/share/common-licenses); the 256 bucket holds
# longer texts that both sides truncate to the model's 256 tokens. Each bucket holds about
# BENCH_TOKENS tokens, so each takes a similar time.
#
# Per bucket: sentence-transformers and ONNX Runtime (texts sorted by length, padded per
# batch, tokenised inside the timing; the model exported by torch.onnx), Surge in process
# (embed_bench) at BENCH_THREADS and at 1 thread, and Surge through the queue
# (score-batch → RabbitMQ → `surge worker`). On a CPU with AVX-512 it adds AVX2 rows for
# both sides: Surge with SURGE_CPU_ISA=avx2 (its GEMMs, int8 included, and fused
# kernels), PyTorch with ATEN_CPU_CAPABILITY=avx2,
# ONEDNN_MAX_CPU_ISA=AVX2 and MKL_ENABLE_INSTRUCTIONS=AVX2. Every row names the CPU and
# its ISA flags. Worker RSS and cold start to the first result are measured once.
#
# This host's speed drifts by ±10% from one minute to the next, so the in-process rows
# are measured BENCH_ROUNDS times, every engine once per round in turn, and the report
# gives each row's median (a single sweep had one row 25% off its repeats).
#
# PyTorch and ONNX Runtime go into a throwaway virtualenv (.cache/st-venv) made here and
# never used by the tests. Knobs: BENCH_THREADS (2), BENCH_BUCKETS ("16 32 64 128 256"),
# BENCH_TOKENS (15000), BENCH_ROUNDS (3), BENCH_BATCH (64), BENCH_ROWS_PER_JOB (64), BENCH_SKIP_REF=1 to
# leave PyTorch and ONNX Runtime out, BENCH_PROFILE=dev to use the dev build,
# BENCH_DEVICE=cuda for the GPU (BENCH_BIN_DIR points at a `--features cuda` build).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${BENCH_THREADS:-2}
BUCKETS=${BENCH_BUCKETS:-16 32 64 128 256}
TOKENS=${BENCH_TOKENS:-15000}
ROUNDS=${BENCH_ROUNDS:-3}
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
  # One invocation: built apart, the two unify features differently and rebuild each other.
  cargo build --profile "$PROFILE" -q -p surge-cli -p surge-model --bins --example embed_bench
fi

PY=.cache/st-venv/bin/python
if ! "$PY" -c 'import sentence_transformers, onnxruntime, onnx' 2>/dev/null; then
  echo "== installing sentence-transformers and onnxruntime into .cache/st-venv (throwaway; large: torch)"
  python3 -m venv .cache/st-venv
  .cache/st-venv/bin/pip install -q --disable-pip-version-check sentence-transformers onnxruntime onnx
fi
"$PY" scripts/bench_embeddings.py buckets "$OUT/texts" "models/$MODEL/tokenizer.json" "$TOKENS" | tee -a "$RAW"
SKIP_REF=${BENCH_SKIP_REF:-0}
[[ "$SKIP_REF" == 1 ]] || "$PY" scripts/bench_embeddings.py export_onnx .cache/minilm.onnx 2>/dev/null

AVX512=0
grep -qw avx512f /proc/cpuinfo && AVX512=1
# Appends one JSON row to RAW with the bucket, ISA and threads it was measured at.
tag() { # bucket isa threads
  python3 -c '
import json, sys
for line in sys.stdin:
    if line.strip().startswith("{"):
        r = json.loads(line); r.update(bucket=int(sys.argv[1]), isa=sys.argv[2], threads=int(sys.argv[3]))
        print(json.dumps(r))' "$@" | tee -a "$RAW"
}
reference() { # bucket threads isa
  local texts="$OUT/texts/texts-$1.jsonl"
  "$PY" scripts/bench_embeddings.py st "$texts" "$2" "$BATCH" "$DEVICE" 2>/dev/null | tag "$1" "$3" "$2"
  [[ "$DEVICE" != cpu ]] ||
    "$PY" scripts/bench_embeddings.py ort "$texts" "$2" "$BATCH" .cache/minilm.onnx 2>/dev/null | tag "$1" "$3" "$2"
}
surge() { # bucket threads isa
  RAYON_NUM_THREADS=$2 "$BIN/examples/embed_bench" models "$MODEL" "$OUT/texts/texts-$1.jsonl" "$BATCH" "$DEVICE" |
    tag "$1" "$3" "$2"
}

# The int8 variant (`quantization = "int8"`), as a user makes it: a copy of the folder
# with the line added, the weights hard-linked.
INT8=$OUT/models-int8
rm -rf "$INT8" && mkdir -p "$INT8/$MODEL-int8"
for f in config.json model.safetensors tokenizer.json; do ln -f "models/$MODEL/$f" "$INT8/$MODEL-int8/$f"; done
sed -e "s/^name = .*/name = \"$MODEL-int8\"/" -e 's/^\[bert-embedding\]/[bert-embedding]\nquantization = "int8"/' \
  "models/$MODEL/model.toml" >"$INT8/$MODEL-int8/model.toml"
surge_int8() { # bucket threads isa
  RAYON_NUM_THREADS=$2 "$BIN/examples/embed_bench" "$INT8" "$MODEL-int8" "$OUT/texts/texts-$1.jsonl" "$BATCH" cpu |
    sed 's/"surge_in_process"/"surge_int8"/' | tag "$1" "$3" "$2"
}

ISA=$([[ $AVX512 == 1 ]] && echo avx512 || echo avx2)
for round in $(seq "$ROUNDS"); do
  for b in $BUCKETS; do
    echo "== round $round/$ROUNDS, bucket of about $b tokens: $THREADS threads, then 1"
    [[ "$SKIP_REF" == 1 ]] || reference "$b" "$THREADS" "$ISA"
    surge "$b" "$THREADS" "$ISA"
    [[ "$THREADS" == 1 ]] || surge "$b" 1 "$ISA"
    [[ "$DEVICE" != cpu ]] || surge_int8 "$b" "$THREADS" "$ISA"
    if [[ $AVX512 == 1 && "$DEVICE" == cpu ]]; then
      echo "== bucket of about $b tokens, AVX2 on this AVX-512 machine"
      [[ "$SKIP_REF" == 1 ]] || ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        reference "$b" "$THREADS" avx2
      SURGE_CPU_ISA=avx2 surge "$b" "$THREADS" avx2
      [[ "$THREADS" == 1 ]] || SURGE_CPU_ISA=avx2 surge "$b" 1 avx2
      SURGE_CPU_ISA=avx2 surge_int8 "$b" "$THREADS" avx2
    fi
  done
done

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
head -n 1 "$OUT/texts/texts-16.jsonl" >"$OUT/one.jsonl"
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
python3 -c "import json; print(json.dumps({'kind':'surge_cold_start','seconds':$t1-$t0}))" | tee -a "$RAW"

for b in $BUCKETS; do
  echo "== Surge through the queue, bucket $b, $PER_JOB texts per job, $THREADS worker threads"
  texts="$OUT/texts/texts-$b.jsonl"
  n=$(wc -l <"$texts")
  t0=$(date +%s.%N)
  RUST_LOG=warn "$BIN/score-batch" --prefix "$PREFIX" --model "$MODEL" --input "$texts" \
    --output "$OUT/embeddings-$b.jsonl" --rows-per-job "$PER_JOB" --timeout 600 2>"$OUT/score-batch.log"
  t1=$(date +%s.%N)
  python3 -c "import json; s=$t1-$t0; print(json.dumps({'kind':'surge_queue','sentences':$n,'rows_per_job':$PER_JOB,'seconds':s,'per_s':$n/s}))" |
    tag "$b" "$ISA" "$THREADS"
done
python3 - "$pid" <<'PY' | tee -a "$RAW"
import json, sys
kb = {l.split(':')[0]: int(l.split()[1]) for l in open(f"/proc/{sys.argv[1]}/status") if l.startswith(("VmRSS", "VmHWM"))}
print(json.dumps({"kind": "surge_worker_memory", "rss_mb": kb["VmRSS"] / 1024, "hwm_mb": kb["VmHWM"] / 1024}))
PY
python3 scripts/bench_embeddings.py report "$RAW" >/dev/null
echo "wrote the Text embeddings section of BENCHMARKS.md"
