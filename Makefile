# Kestrel's build and test entry points. `make help` lists them.
#
# `cargo test` alone runs the fast tests and needs no guest; `make test` is the
# whole suite as CI runs it (.ci/run). The test guest (resources/guest/) is built
# once and cached outside the repo; see resources/guest/README.md.

SHELL := /bin/bash
CARGO ?= cargo
GUEST_DIR := target/guest
KESTREL := target/release/kestrel
STAGE := resources/stage.sh
export KESTREL_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/kestrel

# For the integration tests under tests/ (they may also find these by their
# default places, target/guest and target/release/kestrel).
export KESTREL_GUEST_DIR := $(CURDIR)/$(GUEST_DIR)
export KESTREL_BIN := $(CURDIR)/$(KESTREL)
export KESTREL_PYTHON := $(KESTREL_CACHE)/venv/bin/python3

# make run: the test guest on the terminal. MEM, SMP and extra kernel words
# (APPEND="guest.run=..." etc.) can be set on the command line.
MEM ?= 256
SMP ?= 2
APPEND ?=
# The QMP socket of `make run` (qmp-shell /tmp/kestrel-qmp.sock, or any QMP client).
QMP ?= -qmp unix:/tmp/kestrel-qmp.sock,server=on,wait=off

# Every recipe runs its steps in order; cargo and the kernel build use both cores themselves.
.NOTPARALLEL:
.DEFAULT_GOAL := build
.PHONY: build guest run test lint deps bench clean-guest help

build: ## cargo build --release --bins
	$(CARGO) build --release --bins

guest: ## build the test guest into target/guest (cached; 3-6 minutes the first time)
	@resources/guest/make-guest.sh $(GUEST_DIR)

run: build guest ## boot the test guest (busybox shell) in Kestrel, console on this terminal
	$(KESTREL) -m $(MEM) -smp $(SMP) -nographic -kernel $(GUEST_DIR)/vmlinux \
	    -initrd $(GUEST_DIR)/initramfs-busybox.cpio \
	    -append "$$(cat $(GUEST_DIR)/cmdline)$(if $(APPEND), $(APPEND))" $(QMP)

deps: ## install the test prerequisites (Debian packages, rustfmt/clippy, QMP client venv)
	@resources/setup-test-deps.sh

lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test: ## the whole suite: deps, lint, guest, release build, cargo test --release
	@$(STAGE) deps resources/setup-test-deps.sh
	@$(STAGE) lint $(MAKE) --no-print-directory lint
	@$(STAGE) guest resources/guest/make-guest.sh $(GUEST_DIR)
	@$(STAGE) build $(CARGO) build --release --bins
	@$(STAGE) "cargo test" $(CARGO) test --workspace --release -- --include-ignored

bench: deps guest ## benchmarks against QEMU on this machine (see docs/performance.md)
	$(CARGO) bench -p vmm --bench boot
	$(CARGO) bench -p vmm --bench qmp
	$(CARGO) bench -p vmm --bench blk

clean-guest: ## remove target/guest (the cache in $KESTREL_CACHE/guest stays)
	rm -rf $(GUEST_DIR)

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14
