# realtime-mirror: the two commands a newcomer needs are `make demo` and `make test`.
CARGO ?= cargo
# bash: the recipes probe local ports through /dev/tcp.
SHELL := /bin/bash
BIN := target/debug

.PHONY: help setup build demo test unit chaos bench fuzz fuzz-corpus fuzz-short lint fmt clean iac-check

help:
	@echo "make demo    install/start PostgreSQL + NATS if needed, migrate, seed the fixtures, run the writer until drained, print row counts"
	@echo "make test    the whole test suite against real local PostgreSQL and NATS"
	@echo "make chaos   the full chaos scenarios (kill -9, server restarts, poison, duplicates) with a summary table"
	@echo "make bench   throughput and latency benchmarks, printed as figures and ratios"
	@echo "make fuzz    fuzz the event decoders for 60 s"
	@echo "make iac-check  validate the Bicep and Terraform for Service Bus, the Kubernetes and Container Apps definitions and the alert rules"

setup:
	@bash deploy/local/setup.sh

build:
	$(CARGO) build --workspace --bins

demo: setup build
	$(BIN)/mirrorctl migrate
	$(BIN)/mirrorctl seed
	$(BIN)/sql-writer --exit-when-idle
	$(BIN)/mirrorctl counts

# The chaos tests run the sql-writer binary as a child process: build the
# binaries first so the tests never run a stale one.
#
# Also: the IaC syntax/consistency check and a bounded fuzz run of the
# decoders; the test runner goes last so its summary closes the output.
test: setup
	$(CARGO) build --workspace --bins
	@$(MAKE) --no-print-directory iac-check
	@$(MAKE) --no-print-directory fuzz-short
	@if (exec 3<>/dev/tcp/127.0.0.1/8686) 2>/dev/null; then \
		export FIRESTORE_EMULATOR_HOST=$${FIRESTORE_EMULATOR_HOST:-127.0.0.1:8686}; \
		echo "test: Firestore tests run against the emulator at $$FIRESTORE_EMULATOR_HOST"; \
	fi; \
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

unit:
	$(CARGO) test --workspace --lib

chaos: setup
	$(CARGO) build -p sql-writer --bins
	CHAOS=full $(CARGO) test -p mirror-tests --test chaos -- --nocapture --test-threads 1

bench: setup
	$(CARGO) build --release -p sql-writer -p mirrorctl
	$(CARGO) run --release -p mirrorctl -- bench
	$(CARGO) run --release -p mirrorctl -- bench-consistency --rows 1000000

# Fuzzing needs cargo-fuzz (installed from crates.io on first use) and a
# nightly compiler for the sanitizer flags; with only a stable toolchain,
# RUSTC_BOOTSTRAP lets it accept them.
FUZZ_SECS ?= 60
FUZZ_TOOLCHAIN := $(shell rustup toolchain list 2>/dev/null | grep -q '^nightly' && echo +nightly)

fuzz-corpus:
	@mkdir -p fuzz/corpus/decode_structured fuzz/corpus/decode_wire
	@i=0; while IFS= read -r line; do i=$$((i+1)); printf '%s' "$$line" > fuzz/corpus/decode_structured/sample-$$i.json; done < fixtures/events_sample.jsonl
	@i=0; while IFS= read -r line; do i=$$((i+1)); printf '%s' "$$line" > fuzz/corpus/decode_structured/invalid-$$i.json; done < fixtures/events_invalid.jsonl

fuzz: fuzz-corpus
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	@mkdir -p target
	@for t in decode_structured decode_wire; do \
		echo "fuzz: $$t for $(FUZZ_SECS) s (log: target/fuzz-$$t.log)"; \
		(cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) $(FUZZ_TOOLCHAIN) fuzz run $$t corpus/$$t -- -max_total_time=$(FUZZ_SECS)) > target/fuzz-$$t.log 2>&1 \
			|| { tail -n 60 target/fuzz-$$t.log; echo "fuzz: $$t FAILED (artifacts in fuzz/artifacts/$$t)"; exit 1; }; \
		grep -E '^Done' target/fuzz-$$t.log | sed "s/^/fuzz: $$t: /"; \
	done

# The bounded run that `make test` includes.
fuzz-short:
	@$(MAKE) --no-print-directory fuzz FUZZ_SECS=20

# Static checks of deploy/azure (Bicep, Terraform, the emulator config) and of
# the deployment definitions (deploy/k8s against the Kubernetes schemas that
# kubernetes-validate ships; KEDA, Container Apps and Prometheus rules against
# the pinned schemas in deploy/schemas) with validators from PyPI; no Azure,
# cluster, bicep or terraform binary needed.
iac-check:
	@test -x target/iac-venv/bin/python || python3 -m venv target/iac-venv
	@target/iac-venv/bin/pip install -q --disable-pip-version-check -r deploy/azure/requirements-validate.txt
	target/iac-venv/bin/python deploy/azure/validate.py
	@target/iac-venv/bin/pip install -q --disable-pip-version-check -r deploy/requirements-validate-deploy.txt
	target/iac-venv/bin/python deploy/validate_deploy.py

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
