// Package btrfs_test holds the integration tests of the btrfs backend
// (pkg/btrfs) on real btrfs filesystems on loop devices, through the
// package's exported API, as test/lvm does for the LVM thin backend. They
// need root, btrfs-progs and a kernel with btrfs (make test-btrfs). In CI
// (CI=true) a missing prerequisite fails; elsewhere it skips.
package btrfs_test

import (
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/backend/backendtest"
	"github.com/csi-thin/csi-thin/pkg/btrfs"
	"github.com/csi-thin/csi-thin/pkg/btrfs/btrfstest"
)

// TestContract runs the backend.Local contract on a real btrfs pool.
func TestContract(t *testing.T) {
	btrfstest.Require(t)
	pool := btrfstest.NewPool(t, 2*backend.GiB, btrfs.Config{})
	backendtest.Run(t, backendtest.Options{New: func(*testing.T) backend.Local { return pool }})
}
