# realtime-mirror: the two commands a newcomer needs are `make demo` and `make test`.
CARGO ?= cargo
BIN := target/debug

.PHONY: help setup build demo test unit chaos chaos-short bench fuzz fuzz-short lint fmt clean

help:
	@echo "make demo    install/start PostgreSQL + NATS if needed, migrate, seed the fixtures, run the writer until drained, print row counts"
	@echo "make test    the whole test suite against real local PostgreSQL and NATS"
	@echo "make chaos   the full chaos scenarios (kill -9, server restarts, poison, duplicates) with a summary table"
	@echo "make bench   throughput and latency benchmarks, printed as figures and ratios"
	@echo "make fuzz    fuzz the event decoders for 60 s"

setup:
	@bash deploy/local/setup.sh

build:
	$(CARGO) build --workspace --bins

demo: setup build
	$(BIN)/mirrorctl migrate
	$(BIN)/mirrorctl seed
	$(BIN)/sql-writer --exit-when-idle
	$(BIN)/mirrorctl counts

test: setup
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

unit:
	$(CARGO) test --workspace --lib

chaos: setup
	CHAOS=full $(CARGO) test -p mirror-tests --test chaos -- --nocapture --test-threads 1

bench: setup
	$(CARGO) run --release -p mirrorctl -- bench

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
