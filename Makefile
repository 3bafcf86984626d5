# mailgate developer commands. See README.md.
CARGO ?= cargo
PYTHON ?= python3
# Parallel integration tests: each test picks its own free loopback ports.
PYTEST_JOBS ?= 2

.PHONY: all build release run test test-deps unit integration bench lint fmt clippy clean

all: build

build:
	$(CARGO) build

release:
	$(CARGO) build --release

# Serve the development config (etc/mailgate.ini: loopback ports, ./data).
run: release
	mkdir -p data
	./target/release/mailgate -c etc/mailgate.ini serve

# Everything CI runs: unit tests, then real clients against the real binary.
test: test-deps build unit integration

# Installs what the tests drive (idempotent; quick when all is there).
test-deps:
	./tests/setup.sh

unit:
	$(CARGO) test --lib --bins

integration: build
	MAILGATE_BIN=$(CURDIR)/target/debug/mailgate $(PYTHON) -m pytest -q -n $(PYTEST_JOBS) tests/

bench: release test-deps
	MAILGATE_BIN=$(CURDIR)/target/release/mailgate $(PYTHON) bench/bench.py

lint: fmt clippy

fmt:
	$(CARGO) fmt --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf data
