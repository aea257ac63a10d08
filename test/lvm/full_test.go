package lvm

import (
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/rpcerr"
)

// TestNearFull fills a small pool past the data guard: new volumes,
// snapshots and expansions are refused with ErrNoSpace (ResourceExhausted
// at the CSI boundary) and volumes report an abnormal condition. Then it
// overfills the pool: writes fail at once (error-when-full) instead of
// hanging, and the pool reports itself unhealthy.
func TestNearFull(t *testing.T) {
	t.Parallel()
	b := loopPool(t, "csithin_full", 384*backend.MiB, nil)
	c := ctx(t)
	capacity, err := b.Capacity(c, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("pool: %+v", capacity)
	big, spare := volID(t, "big"), volID(t, "spare")
	if _, err := b.CreateVolume(c, backend.VolumeRequest{ID: big, RequiredBytes: capacity.TotalBytes, AccessType: backend.AccessBlock}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.CreateVolume(c, backend.VolumeRequest{ID: spare, RequiredBytes: 64 * backend.MiB, AccessType: backend.AccessBlock}); err != nil {
		t.Fatal(err)
	}
	// Past the 90% guard, short of 100%.
	fill := capacity.TotalBytes * 93 / 100 / backend.MiB * backend.MiB
	// Generous: under emulation on a busy host this plain write is slow.
	if err := writeDevice(target(t, b, big), fill, 5*time.Minute); err != nil {
		t.Fatalf("fill to 93%%: %v", err)
	}

	_, err = b.CreateVolume(c, backend.VolumeRequest{ID: volID(t, "new"), RequiredBytes: 8 * backend.MiB})
	wantErr(t, err, backend.ErrNoSpace, "create volume in a pool past the guard")
	if code := rpcerr.Code(err); code != codes.ResourceExhausted {
		t.Fatalf("CSI code %v, want ResourceExhausted", code)
	}
	t.Logf("refused: %v", err)
	_, err = b.CreateSnapshot(c, backend.SnapshotRequest{ID: snapID(t, "snap"), SourceVolumeID: big})
	wantErr(t, err, backend.ErrNoSpace, "snapshot in a pool past the guard")
	_, err = b.ExpandVolume(c, spare, 128*backend.MiB)
	wantErr(t, err, backend.ErrNoSpace, "expand in a pool past the guard")
	vol, err := b.GetVolume(c, big)
	if err != nil || !vol.Condition.Abnormal {
		t.Fatalf("volume in a nearly full pool = %+v, %v; want an abnormal condition", vol, err)
	}
	t.Logf("condition: %s", vol.Condition.Message)
	if cp, _ := b.Capacity(c, ""); cp.AvailableBytes != 0 {
		t.Fatalf("available %d in a pool past the guard, want 0", cp.AvailableBytes)
	}
	if h := b.Health(c); !h.Healthy {
		t.Fatalf("health %+v: a pool past the guard still serves", h)
	}

	// Overfill through the other volume: with error-when-full the write
	// fails fast rather than queueing for no_space_timeout.
	start := time.Now()
	err = writeDevice(target(t, b, spare), 64*backend.MiB, 90*time.Second)
	if err == nil || strings.Contains(err.Error(), "hung") {
		t.Fatalf("writing past a full pool: %v, want an I/O error", err)
	}
	t.Logf("write to the full pool failed after %s: %v", time.Since(start).Round(time.Millisecond), err)
	if h := b.Health(c); h.Healthy {
		t.Fatalf("health %+v of a pool out of data space, want unhealthy", h)
	} else {
		t.Logf("health: %s", h.Message)
	}
	vol, err = b.GetVolume(c, spare)
	if err != nil || !vol.Condition.Abnormal {
		t.Fatalf("volume in a full pool = %+v, %v; want an abnormal condition", vol, err)
	}
	// Deleting still works, so that an operator (or the CO) can recover.
	if err := b.DeleteVolume(c, spare); err != nil {
		t.Fatalf("delete in a full pool: %v", err)
	}
}

// writeDevice writes n bytes to a block device and syncs, reporting a
// write that does not finish within limit as hung.
func writeDevice(dev string, n int64, limit time.Duration) error {
	done := make(chan error, 1)
	go func() {
		f, err := os.OpenFile(dev, os.O_WRONLY, 0)
		if err != nil {
			done <- err
			return
		}
		_, err = copyPattern(f, n, 7)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(limit):
		return errHung{limit}
	}
}

type errHung struct{ limit time.Duration }

func (e errHung) Error() string { return "write hung for " + e.limit.String() }
