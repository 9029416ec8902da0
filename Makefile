# Keel's entry points. A newcomer needs two: `make demo` and `make test`.
# Every cargo call goes through scripts/cargo: one target dir outside the clone, shared by CI
# and sessions, and RocksDB's C++ built once into a cache (scripts/rocksdb) and linked from
# there. Calls select the whole workspace with all targets, so the Rust side is built once.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/keel/target
CARGO := scripts/cargo
KEEL := $(CARGO_TARGET_DIR)/debug/keel
CARGO_TEST := $(CARGO) test --workspace --locked

.PHONY: demo test test-down lint build bootstrap stack-up stack-down

## demo: install prerequisites, bring the local stack up, verify every server, then run one
## real checkout through Keel (scripts/demo: keel run + keel psp-mock + keel scenario).
demo: bootstrap build stack-up
	$(KEEL) smoke
	scripts/demo

## test: the test suite against the real local stack (brought up if needed).
test: bootstrap stack-up
	$(CARGO_TEST) --all-targets

## test-down: take the stack down and prove no server process is left behind.
test-down:
	$(CARGO_TEST) --test stack_down -- --ignored

## lint: formatting and clippy, warnings are errors.
lint:
	cargo fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

build:
	$(CARGO) build --workspace --all-targets --locked

bootstrap:
	scripts/bootstrap

stack-up:
	stack/keel-stack up

stack-down:
	stack/keel-stack down
