# mailgate developer commands. See README.md.
CARGO ?= cargo
PYTHON ?= python3
# Parallel integration tests: each test picks its own free loopback ports.
PYTEST_JOBS ?= 2

.PHONY: all build release run test test-deps unit integration bench lint fmt clippy clean fuzz

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

# Fuzz every target for FUZZ_SECONDS each (cargo-fuzz, nightly; see
# fuzz/). libFuzzer first runs the seeds (fuzz/seeds/) and every input that
# once found a bug (fuzz/regressions/), then mutates. Debug assertions on
# (integer overflow panics); no sanitizer: the code under test is safe
# Rust, and twice the executions find more. `cargo test --manifest-path
# fuzz/Cargo.toml` replays the same files on stable.
FUZZ_SECONDS ?= 30
FUZZ_TARGETS ?= smtp_server pop3_server config multidrop_route dns_response smtp_client pop3_client
FUZZ_FLAGS ?= --debug-assertions --sanitizer none

fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	$(CARGO) +nightly fuzz build $(FUZZ_FLAGS)
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/corpus/$$t fuzz/artifacts && \
	  if ! $(CARGO) +nightly fuzz run $(FUZZ_FLAGS) $$t fuzz/corpus/$$t fuzz/seeds/$$t \
	      $$(test -d fuzz/regressions/$$t && echo fuzz/regressions/$$t) -- \
	      -max_total_time=$(FUZZ_SECONDS) -timeout=10 -max_len=16384 \
	      >fuzz/artifacts/$$t.log 2>&1; then \
	    tail -n 60 fuzz/artifacts/$$t.log; echo "fuzz: $$t FAILED (log: fuzz/artifacts/$$t.log)"; exit 1; \
	  fi; \
	  echo "fuzz: $$t: $$(grep -E '^Done' fuzz/artifacts/$$t.log)"; \
	done

clean:
	$(CARGO) clean
	rm -rf data
