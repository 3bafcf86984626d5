# mailgate developer commands. See README.md.
CARGO ?= cargo
PYTHON ?= python3
# Parallel integration tests: each test picks its own free loopback ports.
PYTEST_JOBS ?= 2

.PHONY: all build release run test test-deps unit integration bench bench-deps bench-profile lint fmt clippy clean \
	cross cross-deps cross-test install fuzz

all: build

# Examples too: tests/test_imap_store.py drives the mailbox store through
# examples/mailbox_tool until the IMAP server exists.
build:
	$(CARGO) build --bins --examples

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

# Side by side with Postfix (SMTP intake) and Dovecot (POP3) in one run,
# then mailgate alone (relay, SmartPop, memory). Installs its peers first
# (bench/setup.sh: never leaves a system Postfix or Dovecot running).
# 4 to 6 minutes; BENCH_ROUNDS, BENCH_SMTP_MESSAGES, BENCH_SMTP_SESSIONS and
# BENCH_POP3_MESSAGES change its size; `make bench BENCH=smtp` runs one part.
BENCH ?=
bench: release test-deps bench-deps
	MAILGATE_BIN=$(CURDIR)/target/release/mailgate $(PYTHON) bench/bench.py $(BENCH)

bench-deps:
	./bench/setup.sh

# strace -c and perf record -g on mailgate during the 50-session SMTP load
# (bench/profile.py; BENCH_PROFILE=pop3: pipelined POP3 RETR). Same optimisation as release, plus symbols and frame
# pointers, in a target dir of its own. Not part of make test.
PROFILE_TARGET = $(TARGET_DIR)/profile
bench-profile: test-deps bench-deps
	@command -v perf >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; }
	CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
	  RUSTFLAGS="-C force-frame-pointers=yes" $(CARGO) build --release --target-dir $(PROFILE_TARGET)
	MAILGATE_BIN=$(abspath $(PROFILE_TARGET))/release/mailgate $(PYTHON) bench/profile.py $(BENCH_PROFILE)

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
FUZZ_TARGETS ?= smtp_server pop3_server config multidrop_route dns_response smtp_client pop3_client imap_parser imap_mime imap_session oauth_answer
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

# --- Static ARM binaries for routers and NAS boxes ---------------------------
# aarch64: musl, linked by rust-lld; armv7: glibc with +crt-static. Settings
# live in .cargo/config.toml (never in RUSTFLAGS, which would also hit the
# host's build scripts).
CROSS_TARGETS = aarch64-unknown-linux-musl armv7-unknown-linux-gnueabihf
CROSS_APT = gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf \
	libc6-dev-armhf-cross qemu-user-static
TARGET_DIR = $(or $(CARGO_TARGET_DIR),target)
# A box's flash is small: every static binary must fit in this.
CROSS_MAX_BYTES = 4194304

cross: cross-deps
	@for t in $(CROSS_TARGETS); do \
	  $(CARGO) build --release --target $$t || exit 1; \
	done
	@for t in $(CROSS_TARGETS); do \
	  bin=$(TARGET_DIR)/$$t/release/mailgate; \
	  if readelf -lW $$bin | grep -q INTERP || readelf -dW $$bin | grep -q NEEDED; then \
	    echo "$$bin is not static"; exit 1; fi; \
	  size=$$(stat -c %s $$bin); \
	  echo "$$bin: $$size bytes, static"; \
	  [ $$size -le $(CROSS_MAX_BYTES) ] || { echo "$$bin is over $(CROSS_MAX_BYTES) bytes"; exit 1; }; \
	done

# Idempotent: installs only what is missing.
cross-deps:
	@missing=""; for p in $(CROSS_APT); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; \
	fi
	@installed=$$(rustup target list --installed); \
	for t in $(CROSS_TARGETS); do \
	  echo "$$installed" | grep -qx $$t || rustup target add $$t || exit 1; \
	done

# Each ARM binary under qemu-user: SMTP in with STARTTLS, POP3 out with STLS.
cross-test: cross
	$(PYTHON) tests/cross_session.py qemu-aarch64-static $(TARGET_DIR)/aarch64-unknown-linux-musl/release/mailgate
	$(PYTHON) tests/cross_session.py qemu-arm-static $(TARGET_DIR)/armv7-unknown-linux-gnueabihf/release/mailgate

# --- Install -----------------------------------------------------------------
# make install [PREFIX=/usr/local] [DESTDIR=stage] [INSTALL_BIN=path]
# INSTALL_BIN may name a cross build, to stage a box's files with DESTDIR.
PREFIX ?= /usr/local
DESTDIR ?=
SBINDIR = $(PREFIX)/sbin
# /usr installs configure /etc; any other prefix keeps to itself.
SYSCONFDIR ?= $(if $(filter /usr,$(PREFIX)),/etc,$(PREFIX)/etc)
UNITDIR ?= $(PREFIX)/lib/systemd/system
INSTALL_BIN ?= $(TARGET_DIR)/release/mailgate

install:
	@[ -f "$(INSTALL_BIN)" ] || [ "$(INSTALL_BIN)" != "$(TARGET_DIR)/release/mailgate" ] || $(CARGO) build --release
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(SYSCONFDIR)/mailgate $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/init.d
	install -m 0755 $(INSTALL_BIN) $(DESTDIR)$(SBINDIR)/mailgate
	@# Another MTA's sendmail stays; ours is only made where none is.
	@link=$(DESTDIR)$(SBINDIR)/sendmail; \
	if [ ! -e $$link ] && [ ! -L $$link ] || [ "$$(readlink $$link)" = mailgate ]; then \
	  ln -sfn mailgate $$link && echo "$$link -> mailgate"; \
	else echo "kept the existing $$link (another MTA's?)"; fi
	@# The config holds passwords: not readable by every user; never replaced.
	@conf=$(DESTDIR)$(SYSCONFDIR)/mailgate/mailgate.ini; \
	if [ -e $$conf ]; then echo "kept the existing $$conf"; \
	else install -m 0640 etc/mailgate.ini $$conf && echo "installed $$conf (edit it)"; fi
	sed -e 's|/usr/sbin/mailgate|$(SBINDIR)/mailgate|g' -e 's|/etc/mailgate/|$(SYSCONFDIR)/mailgate/|g' \
	  etc/mailgate.service > $(DESTDIR)$(UNITDIR)/mailgate.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/mailgate.service
	sed -e 's|^PROG=.*|PROG=$(SBINDIR)/mailgate|' -e 's|^CONF=.*|CONF=$(SYSCONFDIR)/mailgate/mailgate.ini|' \
	  etc/mailgate.init > $(DESTDIR)$(SYSCONFDIR)/init.d/mailgate
	chmod 0755 $(DESTDIR)$(SYSCONFDIR)/init.d/mailgate
