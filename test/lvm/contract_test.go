package lvm

import (
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/backend/backendtest"
)

// TestContract runs the backend.Local contract (the same table as the
// fake and btrfs) on the shared dm-thin pool.
func TestContract(t *testing.T) {
	b := shared(t)
	backendtest.Run(t, backendtest.Options{New: func(*testing.T) backend.Local { return b }, VolumeBytes: 8 * backend.MiB})
}
