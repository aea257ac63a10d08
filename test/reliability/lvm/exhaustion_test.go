package lvm

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/test/reliability/harness"
)

const noSpaceTimeout = "/sys/module/dm_thin_pool/parameters/no_space_timeout"

// fillDevice writes 1 MiB blocks to dev, each synced, until a write or
// sync fails or limit bytes are written; it returns the bytes written,
// the error, and how long the failing write took.
func fillDevice(dev string, limit int64) (int64, error, time.Duration) {
	f, err := os.OpenFile(dev, os.O_WRONLY|os.O_SYNC, 0)
	if err != nil {
		return 0, err, 0
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*31 + 7)
	}
	var written int64
	for written < limit {
		start := time.Now()
		n, err := f.Write(buf)
		written += int64(n)
		if err != nil {
			return written, err, time.Since(start)
		}
	}
	return written, errors.New("device did not fill"), 0
}

// TestOutOfSpaceLVM fills a thin pool through overprovisioned volumes
// and measures what dm-thin does: with the driver's setting
// (error_if_no_space, `lvchange --errorwhenfull y`) the write fails at
// once; with the kernel default (queue) it blocks for no_space_timeout.
// Every CSI call must answer within its deadline on the full pool, and
// deleting data must bring the pool back.
func TestOutOfSpaceLVM(t *testing.T) {
	_, cfg := newPool(t, "csithin_full", 256*backend.MiB, nil)
	for _, lv := range listLVs(t, cfg.VG) {
		if lv.Name == cfg.ThinPool && lv.WhenFull != "error" {
			t.Errorf("the driver's pool has when_full=%q, want error (error_if_no_space)", lv.WhenFull)
		}
	}
	c := harness.Start(t, harness.Options{Dir: t.TempDir(), Config: childConfig(t, cfg), Verbosity: 2})
	defer c.Stop(t)
	ctx := context.Background()
	// No single volume may exceed the pool, but together they may
	// (overprovisioning): two 200 MiB volumes fill a 232 MiB data area.
	first, err := c.CreateVolume(ctx, "first", 200*backend.MiB)
	if err != nil {
		t.Fatal(err)
	}
	filler, err := c.CreateVolume(ctx, "filler", 200*backend.MiB)
	if err != nil {
		t.Fatal(err)
	}
	other, err := c.CreateVolume(ctx, "other", 64*backend.MiB)
	if err != nil {
		t.Fatal(err)
	}
	w := &world{vg: cfg.VG}
	if n, err, _ := fillDevice(w.device(t, first.GetVolumeId()), 200*backend.MiB); n != 200*backend.MiB {
		t.Fatalf("writing the first volume stopped at %d bytes: %v", n, err)
	}
	dev := w.device(t, filler.GetVolumeId())
	written, werr, failTook := fillDevice(dev, 200*backend.MiB)
	t.Logf("error_if_no_space: 256 MiB pool failed a write after %d MiB in all: %v, in %s", (200*backend.MiB+written)>>20, werr, failTook.Round(time.Millisecond))
	if werr == nil || failTook > 5*time.Second {
		t.Errorf("a write to a full pool in error mode took %s (%v)", failTook, werr)
	}

	var slowest time.Duration
	call := func(name string, want codes.Code, f func(ctx context.Context) error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s := time.Now()
		err := f(ctx)
		slowest = max(slowest, time.Since(s))
		if status.Code(err) != want {
			t.Errorf("%s on a full pool: %v, want %s", name, err, want)
		}
	}
	call("CreateVolume", codes.ResourceExhausted, func(ctx context.Context) error {
		_, err := c.CreateVolume(ctx, "one-too-many", 64*backend.MiB)
		return err
	})
	call("CreateSnapshot", codes.ResourceExhausted, func(ctx context.Context) error {
		_, err := c.CreateSnapshot(ctx, "snap-of-full", filler.GetVolumeId())
		return err
	})
	call("ControllerExpandVolume", codes.ResourceExhausted, func(ctx context.Context) error {
		_, err := c.Controller.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: other.GetVolumeId(), CapacityRange: &csi.CapacityRange{RequiredBytes: 128 * backend.MiB}})
		return err
	})
	var health *csi.ControllerGetVolumeHealthResponse
	call("ControllerGetVolumeHealth", codes.OK, func(ctx context.Context) (err error) {
		health, err = c.Controller.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: filler.GetVolumeId()})
		return err
	})
	if len(health.GetVolumeHealth().GetHealthStatuses()) == 0 {
		t.Errorf("volume on a full pool reports healthy")
	}
	call("Probe", codes.OK, func(ctx context.Context) error {
		_, err := c.Identity.Probe(ctx, &csi.ProbeRequest{})
		return err
	})
	t.Logf("full pool: slowest call %s", slowest.Round(time.Millisecond))

	// The kernel default, for the record: queue the write until
	// no_space_timeout (shortened here from its 60 s default).
	if old, err := os.ReadFile(noSpaceTimeout); err == nil {
		os.WriteFile(noSpaceTimeout, []byte("5"), 0o644)
		defer os.WriteFile(noSpaceTimeout, old, 0o644)
		lvm(t, "lvchange", "--errorwhenfull", "n", cfg.VG+"/"+cfg.ThinPool)
		_, qerr, queued := fillDevice(dev, 200*backend.MiB)
		t.Logf("queue (kernel default) with no_space_timeout=5s: the write blocked %s, then: %v", queued.Round(time.Millisecond), qerr)
		lvm(t, "lvchange", "--errorwhenfull", "y", cfg.VG+"/"+cfg.ThinPool)
		if queued < 4*time.Second {
			t.Logf("note: queue mode did not block (the pool may already have switched to read-only/error mode)")
		}
	}

	// Deleting the fillers returns their chunks: the pool must work again.
	call("DeleteVolume", codes.OK, func(ctx context.Context) error { return c.DeleteVolume(ctx, filler.GetVolumeId()) })
	call("DeleteVolume", codes.OK, func(ctx context.Context) error { return c.DeleteVolume(ctx, first.GetVolumeId()) })
	deadline := time.Now().Add(time.Minute)
	for {
		v, err := c.CreateVolume(ctx, "after-cleanup", 64*backend.MiB)
		if err == nil {
			if n, werr, _ := fillDevice(w.device(t, v.GetVolumeId()), 16*backend.MiB); n < 16*backend.MiB {
				t.Errorf("pool did not take writes after cleanup: %d bytes, %v", n, werr)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool did not recover after its data was deleted: %v", err)
		}
		time.Sleep(time.Second)
	}
	for _, lv := range listLVs(t, cfg.VG) {
		if lv.Name == cfg.ThinPool {
			t.Logf("pool after cleanup: data %s%%, metadata %s%%, attr %s", lv.Data, lv.Meta, lv.Attr)
			if len(lv.Attr) > 1 && lv.Attr[1] == 'r' {
				t.Errorf("pool stayed read-only after cleanup: %s", lv.Attr)
			}
		}
	}
}

// TestMetadataGuardLVM: with the metadata guard set below the pool's
// current fill, new volumes are refused with ResourceExhausted before
// the metadata can run out (thin pool metadata full means a read-only,
// needs-repair pool, which must never happen).
func TestMetadataGuardLVM(t *testing.T) {
	_, cfg := newPool(t, "csithin_meta", 256*backend.MiB, nil)
	cfg.MetadataFullPercent = 0.001
	c := harness.Start(t, harness.Options{Dir: t.TempDir(), Config: childConfig(t, cfg)})
	defer c.Stop(t)
	_, err := c.CreateVolume(context.Background(), "refused", 64*backend.MiB)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(strings.ToLower(err.Error()), "metadata") {
		t.Errorf("CreateVolume past the metadata guard: %v, want ResourceExhausted naming metadata", err)
	}
}
