# Two commands do all set-up on a fresh machine:
#   make demo   - run the word-count demo on embedded defaults (no servers)
#   make test   - install everything the tests need and run the whole suite
PYTHON ?= python3
VENV := .venv
TOOLS := .tools
UV := $(TOOLS)/bin/uv
PY := $(VENV)/bin/python
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: demo test lint bench compare soak services stop-services clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q uv==0.13.8

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PYTHON) -q
	touch $@

demo: $(VENV)/.synced
	$(PY) examples/demo_wordcount.py

# The real servers the tests use: PostgreSQL (Debian package, installed when missing) and
# Apache Kafka (KRaft, jars from Maven Central), both on 127.0.0.1 only; SeaweedFS (an
# S3-compatible object store, built once from its Go module, 127.0.0.1 only); and headless
# Chromium + chromedriver (Debian packages, installed when missing) for the dashboard test;
# openssl makes the SASL_SSL test broker's own CA and certificate.
services:
	scripts/postgres start
	scripts/kafka start
	scripts/kafka prune || echo "kafka: warning: prune failed (see above); the tests run anyway"
	scripts/s3 start
	scripts/browser install
	@command -v unshare >/dev/null && command -v ip >/dev/null && command -v ss >/dev/null \
		&& command -v openssl >/dev/null \
		|| (apt-get update -q && apt-get install -y -q util-linux iproute2 openssl)

stop-services:
	-scripts/kafka stop
	-scripts/postgres stop
	-scripts/s3 stop

test: $(VENV)/.synced services
	$(PY) -m ruff check onceflow tests benchmarks examples
	$(PY) -m mypy onceflow
	$(PY) -m pytest -q -n 3 --dist loadfile --durations=30 --doctest-modules onceflow tests
	scripts/netns-run $(PY) -m pytest -q -m "ray and not soak" tests/test_ray.py

# The Ray executor's tests alone: a simulated cluster in a loopback-only network namespace.
.PHONY: test-ray
test-ray: $(VENV)/.synced
	scripts/netns-run $(PY) -m pytest -q -m "ray and not soak" tests/test_ray.py

lint: $(VENV)/.synced
	$(PY) -m ruff check onceflow tests benchmarks examples
	$(PY) -m mypy onceflow

bench: $(VENV)/.synced
	$(PY) benchmarks/w1.py
	$(PY) benchmarks/filesink.py

# W3 large-state checkpoints (RocksDB incremental/full, memory changelog/full; ~30 min).
.PHONY: bench-w3
bench-w3: $(VENV)/.synced
	$(PY) benchmarks/w3.py

# W2 on this machine: the plain Kafka client loop (ceiling), onceflow exactly-once and
# at-least-once at parallelism 1 and 2, and end-to-end latency at 20,000 records/s
# (results: benchmarks/results/w2.json + w2.md; W2_RECORDS, W2_ROUNDS to change the size).
.PHONY: bench-w2
bench-w2: $(VENV)/.synced
	scripts/kafka start
	$(PY) benchmarks/w2.py

# W5 Nexmark (not part of make test): q0-q3 in-process, p1/p2, memory/RocksDB, exactly-once
# checkpoints every 10 s, 3 interleaved runs; NEXMARK_ARGS="--events 300000 --runs 1" for less,
# NEXMARK_ARGS="--input kafka" to read pre-filled Kafka topics and write results to Kafka.
.PHONY: nexmark
nexmark: $(VENV)/.synced
	$(PY) benchmarks/nexmark/run.py $(NEXMARK_ARGS)

# Nexmark over Kafka against the peers (Flink SQL via PyFlink, Bytewax, Quix), same topic, 3
# interleaved runs (benchmarks/results/nexmark-peers.*; builds compare's peer venvs).
.PHONY: nexmark-peers
nexmark-peers: $(VENV)/.synced
	$(PY) benchmarks/nexmark/peers.py $(NEXMARK_PEERS_ARGS)

# onceflow against PyFlink, Bytewax and Quix Streams on W1 and W2 (not part of make test;
# installs each peer in benchmarks/compare/.venvs/, needs Java 17 + mvn and the Kafka broker).
compare: $(VENV)/.synced
	scripts/kafka start
	$(PY) benchmarks/compare/run.py

# Long chaos run: random shapes and kills for ONCEFLOW_SOAK_MINUTES (default 10) on the
# embedded path, and with a Kafka broker and a PostgreSQL server of its own (broker and
# database restarts too); results in benchmarks/results/soak-servers.json
# (ONCEFLOW_SOAK_RESULTS).
soak: $(VENV)/.synced
	$(PY) -m pytest -q tests -m soak
	scripts/netns-run $(PY) -m pytest -q -m "ray and soak" tests/test_ray.py

clean:
	rm -rf $(VENV) $(TOOLS)
