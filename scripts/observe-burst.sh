#!/usr/bin/env bash
# A burst watched the way an operator watches one: `surge autoscale` (0..4 workers for
# breast-cancer, status page and /api/status on 127.0.0.1:$PORT) scaled by the
# backlog, Debian's Prometheus scraping it every second, and score-batch sending
# SURGE_BURST_ROWS rows (default 1,000,000) at 64 rows per job, all of them in flight at
# once (--max-in-flight 16000), so that the backlog is real. Every 5 s the script
# prints what the page's JSON says and what Prometheus answers, then a summary.
# Release binaries; `make observe-burst` runs it. Output: out/observe-burst/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${SURGE_BURST_ROWS:-1000000}
PORT=${SURGE_BURST_PORT:-9388}
PROM_PORT=${SURGE_BURST_PROM_PORT:-9389}
PREFIX=burst-$$
OUT=out/observe-burst
BIN=${CARGO_TARGET_DIR:-target}/release
mkdir -p "$OUT"
command -v prometheus >/dev/null || { echo "prometheus is missing: make prometheus-tools" >&2; exit 2; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for q in $(rabbitmqctl -q list_queues name 2>/dev/null | grep "^$PREFIX\\." || true); do
    rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
  done
}
trap 'cleanup; rm -rf "$TMP"' EXIT
TMP=$(mktemp -d "${TMPDIR:-/tmp}/burst.XXXXXX")

"$BIN/surge-bench" gen-rows --rows "$ROWS" --out "$TMP/rows.csv"
cat >"$TMP/prometheus.yml" <<YML
global: { scrape_interval: 1s, evaluation_interval: 1s }
rule_files: [ "$PWD/deploy/prometheus/rules.yml" ]
scrape_configs:
  - job_name: surge-autoscale
    static_configs: [ { targets: [ "127.0.0.1:$PORT" ] } ]
YML
prometheus --config.file="$TMP/prometheus.yml" --storage.tsdb.path="$TMP/tsdb" \
  --web.listen-address="127.0.0.1:$PROM_PORT" >"$OUT/prometheus.log" 2>&1 &
pids+=($!)
# The workers are slowed on purpose (SURGE_BURST_WORKER_ARGS, default a 20 ms sleep per
# batch of at most 256 rows: about 12,800 rows/s each, a slow model's speed), so that
# one worker cannot keep up with score-batch and the autoscaler has work to do.
read -r -a WORKER_ARGS <<<"${SURGE_BURST_WORKER_ARGS:---batch-delay-ms 20 --max-batch-rows 256}"
RUST_LOG=info "$BIN/surge" autoscale --model breast-cancer --min 0 --max "${SURGE_BURST_MAX:-4}" \
  --prefix "$PREFIX" --metrics-addr "127.0.0.1:$PORT" --worker-bin "$BIN/surge" \
  -- "${WORKER_ARGS[@]}" >"$OUT/autoscale.log" 2>&1 &
pids+=($!)
up=0
for _ in $(seq 100); do curl -sf "127.0.0.1:$PORT/api/status" >/dev/null && { up=1; break; }; sleep 0.2; done
[ "$up" = 1 ] || { echo "surge autoscale did not start:" >&2; tail -n 20 "$OUT/autoscale.log" >&2; exit 1; }

prom() { # prom QUERY: the first value of an instant query, or "-"
  curl -s --get "127.0.0.1:$PROM_PORT/api/v1/query" --data-urlencode "query=$1" \
    | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "-")' 2>/dev/null || echo "-"
}
reading() {
  local page
  page=$(curl -s "127.0.0.1:$PORT/api/status" | python3 -c '
import json,sys
s=json.load(sys.stdin)
for m in s["models"]:
    last=m["decisions"][-1]["reason"] if m["decisions"] else "-"
    print("page: backlog {} in_flight {} running {} draining {} desired {} rate/worker {} drain_s {} last decision: {}".format(
        m["backlog"], m["in_flight"], m["running"], m["draining"], m["desired"], m["rate_per_worker"], m["time_to_drain_s"], last))' 2>/dev/null || echo "page: -")
  echo "t=$(( $(date +%s) - T0 ))s $page"
  echo "      prometheus: backlog $(prom 'sum(surge_queue_backlog)') replicas $(prom 'sum(surge_autoscale_replicas)') desired $(prom 'sum(surge_autoscale_desired_replicas)') drain_s $(prom 'max(surge_time_to_drain_seconds)') jobs/s/worker $(prom 'max(surge_autoscale_jobs_per_second_per_worker)') decisions $(prom 'sum(surge_autoscale_decisions_total)')"
}
T0=$(date +%s)
: >"$OUT/readings.txt"
RUST_LOG=warn "$BIN/score-batch" --model breast-cancer --prefix "$PREFIX" --rows-per-job 64 --max-in-flight 16000 \
  --input "$TMP/rows.csv" --output "$TMP/scores.csv" 2>"$OUT/score-batch.log" &
sb=$!
while kill -0 "$sb" 2>/dev/null; do
  reading | tee -a "$OUT/readings.txt"
  kill -0 "${pids[1]}" 2>/dev/null || { echo "surge autoscale exited:" >&2; tail -n 20 "$OUT/autoscale.log" >&2; exit 1; }
  sleep 5
done
wait "$sb"
reading | tee -a "$OUT/readings.txt"
echo "score-batch: $(tail -n 3 "$OUT/score-batch.log")"
echo "rows written: $(( $(wc -l <"$TMP/scores.csv") - 1 )) of $ROWS"
sleep 3
echo "after the burst:"; reading | tee -a "$OUT/readings.txt"
