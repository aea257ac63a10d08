SHELL := /bin/bash
# csi-thin — build, test, demo, bench.
# `make test` is the whole suite: lint, unit tests (-race), csi-sanity and
# integration on real btrfs (loop device), the LVM thin suite in a VM, and
# the e2e suite on a real single-node Kubernetes cluster.

GO        ?= go
BIN       := bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X github.com/csi-thin/csi-thin/pkg/driver.Version=$(VERSION)
# grpcnotrace: gRPC without golang.org/x/net/trace, whose html/template
# makes the linker keep every exported method of every type: -10 MB of
# binary, -9 MiB of the node plugin's RSS (docs/performance.md). hack/image.sh
# builds with the same tags; cmd/csi-thin's TestLinkDropsUnusedMethods checks both.
GOTAGS    := grpcnotrace
export GOFLAGS ?= -mod=mod
export CGO_ENABLED ?= 0
# The benchmark is its own module (its chart libraries stay out of the
# driver's go.mod); it builds against this tree through a replace directive.
BENCH_MOD := cmd/csi-thin-bench

.PHONY: all build lint test cluster-build kube-bin s3-build test-s3 test-chart manifests image test-image test-unit test-btrfs test-reliability test-reliability-lvm fuzz test-lvm test-e2e test-e2e-nodes test-e2e-lvm bench-cluster demo bench clean

all: build

build:
	$(GO) build -trimpath -tags '$(GOTAGS)' -ldflags '$(LDFLAGS)' -o $(BIN)/csi-thin ./cmd/csi-thin

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) -C $(BENCH_MOD) vet ./...
	$(GO) mod tidy -diff
	$(GO) -C $(BENCH_MOD) mod tidy -diff
	@! grep -n gonum.org/v1/plot go.mod || { echo "go.mod: the benchmark's chart libraries belong in $(BENCH_MOD)/go.mod"; exit 1; }

# Unit tests: fast, no root needed (command runners faked).
test-unit:
	CGO_ENABLED=1 $(GO) test -race -count=1 $$($(GO) list ./... | grep -v -e /test/ -e /pkg/export$$ -e /internal/s3test$$ -e /pkg/k8s/snapshotexport$$)
	CGO_ENABLED=1 $(GO) -C $(BENCH_MOD) test -race -count=1 ./...

# Real btrfs on loop devices: backend integration and csi-sanity.
test-btrfs: | $(BIN)
	$(GO) test -count=1 -v ./test/btrfs/ ./test/sanity/ 2>&1 | tee $(BIN)/test-btrfs.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok)|Ran [0-9]+ of|Passed \|' ; exit $${PIPESTATUS[0]}

# Everything, in four lanes side by side (hack/test-stages.sh; each
# stage's log in bin/stage-NAME.log, a time table at the end; test/README.md
# says what runs where):
#   1. the cluster suites, one cluster at a time (the e2e's lock); it
#      starts as soon as the cluster is built;
#   2. the VM's LVM suites (the LVM reliability suite whole: the crash
#      matrices, out of space and metadata in one VM boot), the longest
#      lane on 2026-12-07 (3381 s; test/README.md);
#   3. the cluster's build (cached; cold, it runs alone with lane 2 and 4's
#      start), then the host's suites on btrfs and loop devices;
#   4. the S3 server's build and the export tests, the image built from the
#      Dockerfile, the benchmark's smoke run.
# kube-bin comes before the suites that start a kube-apiserver and etcd
# (test-s3, and the e2e): on a cold machine it waits for the cluster-build
# lane's first tool, not for the whole build.
test:
	hack/test-stages.sh 'packages-host kube-bin test-e2e test-e2e-nodes test-e2e-lvm' \
	  'test-lvm test-reliability-lvm' 'cluster-build packages-host lint test-unit test-btrfs test-reliability' \
	  's3-build kube-bin test-s3 test-image packages-host bench-smoke'

# The cluster's binaries, once per version, into $$K8S_CACHE (test/cluster).
cluster-build:
	bash test/cluster/build.sh all e2e e2e-groups

# Only kube-apiserver, etcd and the rest of Kubernetes' own binaries (the
# first tool cluster-build builds), for the suites that run an API server.
kube-bin:
	bash test/cluster/build.sh k8s

# The VM harness's own test (its boot retry), the LVM suite on the VM's
# kernel (Debian 12's 6.1), then the group snapshot and frozen-snapshot
# tests again on the backports kernel (6.12), where lvcreate takes a frozen
# origin and a group's members are one instant.
test-lvm:
	$(GO) test -count=1 ./test/vm/
	test/vm/run-lvm-suite.sh
	CSI_THIN_VM_KERNEL=backports test/vm/run-lvm-suite.sh -test.run '^(TestGroupSnapshotMembersCleanExt4|TestSnapshotFrozenExt4)$$'

# SeaweedFS's `weed`, the real S3 server of the export tests, once per
# version into /var/cache/csi-thin/seaweedfs (test/s3/build.sh).
s3-build:
	bash test/s3/build.sh

# Snapshot exports (pkg/export) against that S3 server, on loopback.
test-s3: | $(BIN)
	$(GO) test -count=1 -v -parallel 4 -timeout 15m ./pkg/export/ ./internal/s3test/ ./pkg/k8s/snapshotexport/ 2>&1 | tee $(BIN)/test-s3.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok)|skipping|missing' ; exit $${PIPESTATUS[0]}

# A real single-node cluster (built once, cached outside the clone), the
# chart installed from this tree, the csi-thin scenarios and the upstream
# External Storage suite; then teardown.
test-e2e:
	bash test/e2e/run.sh

# Two nodes (each its own network and mount namespace, kubelet, containerd
# and btrfs pool; test/cluster): the placement scenarios across them
# (TestMultiNode) and the upstream suite's multi-node specs (multiVolume,
# topology), ~4 min.
test-e2e-nodes:
	E2E_NODES=2 E2E_RUN=TestMultiNode E2E_ARTIFACTS=$(CURDIR)/_output/e2e-nodes bash test/e2e/run.sh

# The LVM thin backend in the cluster: two more nodes that are QEMU VMs
# (their kernel has dm-thin; test/cluster/vm-node.sh), each with an LVM
# thin pool: snapshot, restore and clone on one, copies to the other (its
# receiving agent SIGKILLed mid-copy, then the sending one), a copy
# cancelled, a snapshot exported to S3 and a second one incrementally,
# restored on the other, the other lost (its kubelet and agent killed)
# and back (TestLVMNodes). Emulated VMs beside the VM lane:
# the test took over 30 minutes in a make test run, hence its timeout.
test-e2e-lvm:
	E2E_NODES=1 E2E_VM_NODES=2 E2E_RUN=TestLVMNodes E2E_UPSTREAM=0 E2E_TEST_TIMEOUT=60m E2E_ARTIFACTS=$(CURDIR)/_output/e2e-lvm bash test/e2e/run.sh

# The cluster benchmark (test/e2e TestBurstBench; docs/performance.md):
# BURST claims at once, as many clones at once, sequential empty vs clone
# latency, where a create's time goes (the driver's stage histograms) and
# the delete of everything; results in bin/bench-cluster.txt.
BURST ?= 50
bench-cluster:
	mkdir -p $(BIN)
	E2E_LOG_LEVEL=2 E2E_UPSTREAM=0 E2E_RUN=TestBurstBench E2E_BENCH_BURST=$(BURST) E2E_BENCH_OUT=$(abspath $(BIN))/bench-cluster.txt \
	  E2E_ARTIFACTS=$(CURDIR)/_output/bench-cluster bash test/e2e/run.sh

# Chart lint/render tests only (helm from the cluster cache).
test-chart:
	$(GO) test -count=1 -run 'Chart|Manifests|Versions' ./test/e2e/

manifests:
	bash hack/manifests.sh

image: build
	bash hack/image.sh

# The Dockerfile built as a user builds it (Debian's buildah), from base
# images made locally with debootstrap (no registry needed; cached in
# /var/cache/csi-thin/image-build), then checked: /csi-thin --version and
# every tool of hack/image.sh run in the image (test/image/build.sh).
test-image:
	bash test/image/build.sh

# Reliability on real btrfs (docs/reliability.md): SIGKILL at every step,
# failing/hanging/garbled tools, 32-way concurrency under -race, a full
# pool, hostile input, socket permissions, secrets in logs, RBAC; then
# every fuzz target for FUZZTIME each.
FUZZTIME ?= 10s
test-reliability: | $(BIN)
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 20m -v ./test/reliability/ ./test/reliability/rbac/ 2>&1 | tee $(BIN)/test-reliability.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok)|^    [a-z]+_test.go:[0-9]+: [a-z][a-z -]+:' ; exit $${PIPESTATUS[0]}
	@$(MAKE) --no-print-directory fuzz

# The LVM thin half (crash at every lvm step, crash at every step of the
# Node calls, out of space, metadata) needs dm-thin: it runs in the VM of
# test/vm when this kernel lacks it. Under TCG on the 2-core machine:
# ~4-5 min of controller crash matrix, ~3.5 min of Node crash matrix and
# ~1.5 min of the rest when the host is quiet, about twice that when it is
# busy (the timeouts leave room for that). RELIABILITY_LVM_RUN selects
# tests, e.g. 'TestOutOfSpace|TestMetadata' or 'TestCrashAtEveryStepLVM/restore'.
RELIABILITY_LVM_RUN ?= .
test-reliability-lvm: | $(BIN)
	CGO_ENABLED=0 $(GO) test -c -o $(BIN)/reliability-lvm.test ./test/reliability/lvm/
	test/vm/run.sh --timeout 2700 $(BIN)/reliability-lvm.test -test.v -test.timeout 40m -test.run '$(RELIABILITY_LVM_RUN)' 2>&1 | tee $(BIN)/test-reliability-lvm.log; exit $${PIPESTATUS[0]}

# Each Fuzz* function in a *_fuzz_test.go file, for FUZZTIME (hack/fuzz.sh:
# a crasher fails the run and is printed; the engine's own flakes do not).
fuzz: | $(BIN)
	FUZZTIME=$(FUZZTIME) GO=$(GO) hack/fuzz.sh

# The demo: the real driver on a fresh loop-file btrfs pool, driven over
# CSI gRPC (needs root; installs btrfs-progs if missing; cleans up after itself).
demo: packages-demo build bench-bin
	$(BIN)/csi-thin-bench demo --driver $(BIN)/csi-thin

.PHONY: bench-bin bench-smoke bench-nodes
# Static (CGO_ENABLED=0 above), so the same binary runs in the test VM.
bench-bin:
	$(GO) -C $(BENCH_MOD) build -trimpath -o $(abspath $(BIN))/csi-thin-bench .

# Issue 6: btrfs on this host and LVM thin in the test VM, through the CSI
# API; writes results/report.md + results/chart.png and prints the table.
bench: build bench-bin bench-nodes
	bench/run.sh full results

# Many nodes, simulated (docs/performance.md): 1, 20 and 200 node agents
# and the router against one real kube-apiserver; prints the SCALE: lines.
# (`make test-unit` runs the 20-node size.)
bench-nodes:
	@for n in 1 20 200; do SCALE_NODES=$$n $(GO) test -count=1 -timeout 20m -v -run TestManyNodeAgents ./pkg/k8s/scale/ 2>&1 | grep -E 'SCALE:|^(--- |ok|FAIL)' || exit 1; done

# The same benchmark with tiny sizes and one iteration, so it never rots
# (output under bin/bench-smoke; CSI_THIN_BENCH_VM=0 skips the VM part).
bench-smoke: build bench-bin
	bench/run.sh smoke $(BIN)/bench-smoke

# The Debian packages a target needs, installed when missing (as root):
# hack/ensure-packages.sh owns the lists.
.PHONY: packages-demo packages-host
packages-demo packages-host:
	hack/ensure-packages.sh $(@:packages-%=%)

clean:
	rm -rf $(BIN)

$(BIN):
	mkdir -p $(BIN)
