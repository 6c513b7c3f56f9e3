# Everything runs inside .venv, created on first use, so a fresh clone needs only `make demo` / `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install system-deps test lint bench demo prometheus clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,hiredis]'
	touch $(STAMP)

install: $(STAMP)

# Debian's `prometheus` package (prometheus + promtool), needed by tests/test_dashboard.py.
# Installs only when missing; installing needs root (CI runs .ci/run as root).
system-deps:
	@if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then \
		echo "prometheus and promtool: $$(command -v prometheus), $$(command -v promtool)"; \
	else \
		SUDO=; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; \
	fi

test: system-deps $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check gcache tests benchmarks examples
	$(PY) -m ruff format --check gcache tests benchmarks examples
	$(PY) -m mypy
	$(PY) -m gcache._unasync --check

# cashews, aiocache and matplotlib (the bench extra) are installed once, on the first `make bench`.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) -m benchmarks

demo: $(STAMP)
	$(PY) -m gcache demo $(DEMO_ARGS)

# Prometheus on 127.0.0.1:9090 scraping `make demo DEMO_ARGS="--serve --port 9464"`, with the alert rules.
PROMETHEUS_DATA ?= /tmp/gcache-prometheus
prometheus:
	prometheus --config.file=grafana/prometheus/prometheus.yml --storage.tsdb.path=$(PROMETHEUS_DATA) \
		--web.listen-address=127.0.0.1:9090

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
