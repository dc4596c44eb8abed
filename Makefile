# ringcast — the two set-up commands are `make test` and `make bench`.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test lint unit peers bench bench-quick bench-codec fuzz build release

## Run everything CI runs: formatting, lints, the whole test suite.
test: lint unit

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) nextest run --workspace --no-fail-fast
	$(CARGO) test --workspace --doc

## Install the independent test peers (Python websockets, Node ws, Chromium driver).
peers:
	peers/setup.sh

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --workspace --release

## Criterion benches of the codec; writes results/codec.md.
bench-codec:
	benches/codec-report.sh

## Fuzz every codec target for FUZZ_SECONDS each (default 600).
fuzz:
	fuzz/run.sh
