# Keel's entry points. A newcomer needs two: `make demo` and `make test`.
# Builds share one target dir outside the clone so CI and sessions reuse it. Every cargo call
# selects the whole workspace with all targets: cargo unifies features over the selected
# packages, and a narrower selection (-p crate) changes RocksDB's features and recompiles
# its C++ (~14 min on 2 cores).
export CARGO_TARGET_DIR ?= $(HOME)/.cache/keel/target
KEEL := $(CARGO_TARGET_DIR)/debug/keel
CARGO_TEST := cargo test --workspace --locked

.PHONY: demo test test-down lint build bootstrap stack-up stack-down

## demo: install prerequisites, bring the local stack up, and verify every server.
demo: bootstrap build stack-up
	$(KEEL) smoke

## test: the test suite against the real local stack (brought up if needed).
test: bootstrap stack-up
	$(CARGO_TEST) --all-targets

## test-down: take the stack down and prove no server process is left behind.
test-down:
	$(CARGO_TEST) --test stack_down -- --ignored

## lint: formatting and clippy, warnings are errors.
lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

build:
	cargo build --workspace --all-targets --locked

bootstrap:
	scripts/bootstrap

stack-up:
	stack/keel-stack up

stack-down:
	stack/keel-stack down
