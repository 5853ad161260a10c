# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint typecheck unit interop test-rabbitmq test-crash bench bench-api-poll clean
.PHONY: fuzz soak
.PHONY: compile clean-compiled test-pure test-compiled
.PHONY: image-test

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "amqpd needs Python >= 3.11 (found $$($(PYTHON) --version))"; exit 1; }
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
		echo "python3-venv is missing; installing it with apt-get"; \
		apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip
	# The package itself installs as pure Python; the build in place is $(MYPYC_STAMP)'s job.
	AMQPD_MYPYC=0 $(BIN)/python -m pip install -q -e '.[test,dev,fast]'
	@touch $(STAMP)

# The hot path compiled with mypyc (setup.py, HOT_PATH): extension modules next to their .py
# files, which Python imports first; rebuilt when one of those sources changes. Without a C
# compiler or Python.h (Debian: apt-get install gcc python3-dev) it says so and amqpd runs
# as pure Python. AMQPD_MYPYC=0 removes the build and runs pure Python; =1 fails instead of
# falling back.
AMQPD_MYPYC ?= auto
HOT_PATH := $(shell sed -n 's/^    "\(.*\.py\)",.*/\1/p' setup.py)
MYPYC_STAMP := $(VENV)/.mypyc-$(AMQPD_MYPYC)-stamp
$(MYPYC_STAMP): $(STAMP) setup.py $(HOT_PATH)
	@rm -f $(VENV)/.mypyc-*-stamp
	@if [ "$(AMQPD_MYPYC)" = 0 ]; then $(MAKE) --no-print-directory clean-compiled; \
	else AMQPD_MYPYC=$(AMQPD_MYPYC) $(BIN)/python setup.py -q build_ext --inplace; fi
	@touch $@

# Explicitly asked for: always rebuilds (e.g. after installing gcc and python3-dev).
compile: $(STAMP)
	@rm -f $(VENV)/.mypyc-*-stamp
	@$(MAKE) --no-print-directory $(MYPYC_STAMP)

clean-compiled:
	find amqpd exchanges -name '*.so' -delete
	rm -f $(VENV)/.mypyc-*-stamp
	rm -rf build

# Start the broker in the foreground on localhost:5672, 127.0.0.1 and ::1 (guest/guest, data
# in ./data).
run: $(MYPYC_STAMP)
	$(BIN)/amqpd --host localhost --port 5672 --data-dir ./data

# Node.js and amqplib for interop/test_node_amqplib.py: Debian's nodejs and npm when node is
# missing (root), then `npm ci` from the lock file; once, until the lock file changes. When
# this cannot install them, that test is skipped and says why.
NODE_STAMP := interop/node/node_modules/.installed-stamp
$(NODE_STAMP): interop/node/package.json interop/node/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "npm is missing; installing nodejs and npm with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm \
		>/dev/null; } || echo "could not install nodejs and npm: the Node interop test is skipped"
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix interop/node --no-audit --no-fund --loglevel=error && touch $@; fi

# Chromium for tests/test_dashboard.py, which renders the web dashboard in a real browser:
# Debian's chromium when no browser is there (root); once. When this cannot install it,
# those tests are skipped and say why.
CHROMIUM_STAMP := $(VENV)/.chromium-stamp
$(CHROMIUM_STAMP): | $(STAMP)
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		{ echo "chromium is missing; installing it with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
		>/dev/null; } || echo "could not install chromium: the dashboard browser tests are skipped"
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; \
		then touch $@; fi

# Debian's rabbitmqadmin (in the rabbitmq-server package) for interop/test_management_tools.py,
# which drives amqpd's management API with it; once. Only the package is installed (its
# server is not needed: the tests talk to amqpd). When this cannot install it, that test is
# skipped and says why.
RABBITMQADMIN_STAMP := $(VENV)/.rabbitmqadmin-stamp
$(RABBITMQADMIN_STAMP): | $(STAMP)
	@command -v rabbitmqadmin >/dev/null 2>&1 || \
		{ echo "rabbitmqadmin is missing; installing Debian's rabbitmq-server with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		rabbitmq-server >/dev/null; } || echo "could not install rabbitmqadmin: its test is skipped"
	@if command -v rabbitmqadmin >/dev/null 2>&1; then touch $@; fi

# Every test: lint, types, unit tests and the interop suite against a fresh broker, on
# whatever `make compile` left (compiled where a compiler is, else pure Python).
test: $(MYPYC_STAMP) $(NODE_STAMP) $(CHROMIUM_STAMP) $(RABBITMQADMIN_STAMP) lint typecheck
	$(BIN)/python -m pytest -q

# CI runs both paths: the full suite on pure Python, then the suite without the slow
# process-level tests (crash, soak) on the compiled build, which must really be compiled.
test-pure:
	$(MAKE) --no-print-directory test AMQPD_MYPYC=0

test-compiled:
	$(MAKE) --no-print-directory compile AMQPD_MYPYC=1
	AMQPD_EXPECT_COMPILED=1 $(BIN)/python -m pytest -q tests interop

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The interop suite against Debian's RabbitMQ (installed if missing), for differential checks.
test-rabbitmq: $(STAMP) $(NODE_STAMP)
	$(BIN)/python interop/rabbitmq.py run -- $(BIN)/python -m pytest -q interop

# The kill -9 crash test, many rounds (make test runs two of each).
test-crash: $(STAMP)
	AMQPD_CRASH_ROUNDS=$${AMQPD_CRASH_ROUNDS:-50} $(BIN)/python -m pytest -q tests/test_crash.py tests/test_stream_crash.py

# Frame fuzzing of the sans-IO connection, long run (make test runs a few seconds of it):
# FUZZ_FRAMES mutated frames, then frames/s and the findings; exit 1 when anything is found.
fuzz: $(STAMP)
	$(BIN)/python -m tests.fuzz.run --frames $${FUZZ_FRAMES:-1000000}

# The soak, by hand (minutes; not part of make test): 10,000 connections with heartbeats for
# SOAK_SECONDS, 1,000 channels, 100,000 queues, control-client latency. See README, Reliability.
soak: $(STAMP)
	$(BIN)/python interop/soak.py --seconds $${SOAK_SECONDS:-600}

# amqpd and Debian's RabbitMQ (installed if missing) side by side, medians of 3 rounds, every
# scenario; the table goes to interop/results/. Not a test: timings never fail a build.
bench: $(STAMP)
	$(BIN)/python interop/bench_all.py --rounds 3

# What a management API poll every second costs the AMQP hot path (publish, consume, end to
# end with and without a polling process, interleaved on one broker; README, Management API).
bench-api-poll: $(MYPYC_STAMP)
	$(BIN)/python interop/bench_api_poll.py poll --start

# Build the Dockerfile's image with buildah on a local Debian base and run it: pika, the
# HEALTHCHECK, SIGTERM drain (root; installs buildah and debootstrap when missing).
image-test: $(STAMP)
	PYTHON=$(BIN)/python bash deploy/image_test.sh

clean: clean-compiled
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
