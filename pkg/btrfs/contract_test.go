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
