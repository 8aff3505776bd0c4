#!/usr/bin/env bash
# `make run`: two workers, score-batch on the shipped sample, a look at the scores,
# and everything it started stopped again.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/debug
OUT=out
mkdir -p "$OUT"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
for i in 1 2; do
  "$BIN/surge" worker --model breast-cancer --metrics-addr "127.0.0.1:$((9186 + i))" \
    --worker-id "demo-worker-$i" >"$OUT/worker-$i.log" 2>&1 &
  pids+=($!)
done
echo "make run: started 2 workers (logs in $OUT/worker-*.log, metrics on :9187 and :9188)"
"$BIN/score-batch" --model breast-cancer --input models/breast-cancer/sample.csv \
  --output "$OUT/breast-cancer-scores.csv" --rows-per-job 16 --timeout 120
echo
echo "make run: scores written to $OUT/breast-cancer-scores.csv; the first rows:"
python3 - "$OUT/breast-cancer-scores.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print(f"  {'row':>4}  {'mean_radius':>11}  {'worst_area':>10}  malignant_probability")
for i, r in enumerate(rows[:8]):
    print(f"  {i+1:>4}  {r['mean_radius']:>11}  {r['worst_area']:>10}  {float(r['malignant_probability']):.4f}")
print(f"  ... {len(rows)} rows, {sum(1 for r in rows if r['error'])} errors")
PY
echo
echo "make run: stopping the workers (graceful drain)"
