package sanity

import (
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/btrfs"
	"github.com/csi-thin/csi-thin/pkg/btrfs/btrfstest"
)

// TestSanityBtrfs runs csi-sanity against a real btrfs pool on a loop file.
func TestSanityBtrfs(t *testing.T) {
	pool := btrfstest.NewPool(t, 4*backend.GiB, btrfs.Config{})
	Run(t, pool, Options{})
}
