# Shared by the bench scripts (sourced, after they set PREFIX and RAW): a release
# build, the processes they start (stopped gracefully on exit), their queues deleted,
# and `bench ARGS...` (surge-bench, one JSON line per figure, appended to $RAW).
cargo build --release -q -p surge-cli -p surge-bench
BIN=${CARGO_TARGET_DIR:-target}/release
OUT=out/bench
mkdir -p "$OUT" "$(dirname "$RAW")"
: >"$RAW"
pids=()
stop_started() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
cleanup() {
  stop_started
  for q in "$PREFIX.jobs.breast-cancer" "$PREFIX.results" "$PREFIX.dead"; do
    rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT
bench() { RUST_LOG=warn "$BIN/surge-bench" --prefix "$PREFIX" "$@" | tee -a "$RAW"; }
