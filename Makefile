# ringcast — the two set-up commands are `make test` and `make bench`.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test setup setup-bench lint unit conformance test-aarch64 peers bench bench-quick bench-codec soak fuzz build release

## Run everything CI runs: formatting, lints, the whole test suite, RFC 6455 conformance.
## Installs what the tests need (tools/setup.sh: a few seconds when it is all there) while the
## lints compile: the installs mostly wait on downloads, the lints on the CPU. The suites then
## run one after the other, so that their time bounds measure ringcast, not each other.
test:
	@$(MAKE) --no-print-directory -j2 --output-sync=target setup lint
	@$(MAKE) --no-print-directory unit conformance

## What `make test` needs: Debian packages (as root), the Python venv, the npm peers, Autobahn.
setup:
	tools/setup.sh test

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps

unit: setup
	$(CARGO) nextest run --workspace --no-fail-fast
	$(CARGO) test --workspace --doc

## Autobahn|Testsuite against the echo example (io_uring and epoll) and the client.
conformance: setup
	$(CARGO) build --release -p ringcast --example echo -p ringcast-client --example autobahn_client
	tools/conformance.sh

## The codec's tests on aarch64 (NEON masking) under qemu-user; needs the aarch64 rust-std,
## gcc-aarch64-linux-gnu and qemu-user (.ci/run installs them when it can).
test-aarch64:
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" \
	$(CARGO) test --target aarch64-unknown-linux-gnu -p ringcast-codec

## Install the independent test peers (Python websockets, Node ws, Chromium driver).
peers:
	peers/setup.sh

## What `make bench` needs besides what it builds itself (cargo, python3, git).
setup-bench:
	tools/setup.sh bench

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --workspace --release

## The broadcast benchmark (benches/bench.py): release build, `make bench-codec`, then
## ringcast (split off, 1/4/16 KiB frames) and the benches/peers baselines under
## ringcast-loadgen at 1k/10k clients × 64 B–64 KiB, then an offered-load sweep. Writes
## results/<UTC time>/ (tables; offered, latency, throughput, cpu and frame-size figures) and
## results/README.md and commits them (BENCH_COMMIT=0: no commit). About 13 minutes on 2 cores.
bench: setup-bench
	python3 benches/bench.py $(BENCH_ARGS)

## A reduced sweep in under 3 minutes: results/<UTC time>-quick/ (README.md untouched).
bench-quick: setup-bench
	python3 benches/bench.py --quick $(BENCH_ARGS)

## The soak (benches/soak.py; not part of `make test`): release build, then per backend
## (SOAK_IO, default io_uring,epoll) SOAK_SECONDS (default 600) of 10,000 subscribers, a steady
## publisher, 600 connections/s of churn (reset, FIN, close handshake), 100 slow consumers and a
## trickle of misbehaving clients against one `ringcast serve`. Samples the server every second
## into results/<UTC time>-soak-<backend>/ and fails unless RSS, descriptors and gauges are
## stable and back to their baseline, and no subscriber lost a message. SOAK_ARGS: more flags.
soak: setup-bench
	python3 benches/soak.py $(SOAK_ARGS)

## Criterion benches of the codec; writes results/codec.md.
bench-codec:
	benches/codec-report.sh

## Fuzz every codec target for FUZZ_SECONDS each (default 600).
fuzz:
	fuzz/run.sh
