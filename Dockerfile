# The csi-thin image: a static csi-thin binary on Debian bookworm with the
# storage tools the driver and Kubernetes' mount library run, from Debian
# packages.
#
#   docker build -t REGISTRY/csi-thin:TAG --build-arg VERSION=TAG .
#   podman build ... / buildah bud ... (the same arguments)
#
# make test-image builds it with Debian's buildah from base images made
# locally (test/image/build.sh passes GO_IMAGE and BASE_IMAGE) and runs
# every tool in it. hack/image.sh is another way, for the test cluster: it
# copies the host's own tools into an image and imports it into containerd.

ARG GO_IMAGE=golang:1.26-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${GO_IMAGE} AS build
# What the binary reports as its version (csi-thin --version).
ARG VERSION=dev
# A Go module proxy (empty: Go's default, proxy.golang.org).
ARG GOPROXY=
WORKDIR /src
COPY . .
# The flags of the Makefile and hack/image.sh: static, no build paths, and
# gRPC without golang.org/x/net/trace (docs/performance.md, RSS). The
# module and build caches outlive the build (a cache mount), so a rebuild
# compiles only what changed.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -tags grpcnotrace \
      -ldflags "-s -w -X github.com/csi-thin/csi-thin/pkg/driver.Version=${VERSION}" \
      -o /out/csi-thin ./cmd/csi-thin

FROM ${BASE_IMAGE}
# The tools csi-thin and its mount library execute (hack/image.sh lists
# them): btrfs, mkfs.btrfs, fsck.btrfs (btrfs-progs); mkfs.ext4, e2fsck,
# resize2fs, dumpe2fs (e2fsprogs); mkfs.xfs, fsck.xfs, xfs_growfs, xfs_io
# (xfsprogs); lvm (lvm2); thin_check, thin_dump, thin_delta
# (thin-provisioning-tools); dmsetup;
# findmnt, blkid, wipefs, fstrim, blockdev, fsck, nsenter (util-linux);
# mount, umount, losetup (mount); sh, cp, sleep are in the base already.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      btrfs-progs e2fsprogs xfsprogs lvm2 thin-provisioning-tools dmsetup util-linux mount \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && ln -sf /proc/self/mounts /etc/mtab \
 && mkdir -p /var/lib/csi-thin
COPY --from=build /out/csi-thin /csi-thin
ENTRYPOINT ["/csi-thin"]
