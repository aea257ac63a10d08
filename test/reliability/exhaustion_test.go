package reliability

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/btrfs"
	"github.com/csi-thin/csi-thin/pkg/btrfs/btrfstest"
	"github.com/csi-thin/csi-thin/test/reliability/harness"
)

// rpcDeadline is what each call gets on a full pool: the sidecars'
// default --timeout is 10 s, and nothing may take longer.
const rpcDeadline = 10 * time.Second

// TestPoolExhaustion overprovisions a small pool, fills it from a pod's
// point of view (through NodeStage/NodePublish) until writes fail, then
// checks that every CSI call returns promptly with a clear answer, that
// nothing hangs or stays mounted, and that the pool recovers once data is
// deleted.
func TestPoolExhaustion(t *testing.T) {
	const poolBytes = 512 * backend.MiB
	pool := btrfstest.NewPool(t, poolBytes, btrfs.Config{})
	c := serve(t, pool)
	ctx := context.Background()

	filler, err := c.CreateVolume(ctx, "filler", 2*backend.GiB) // 4× the pool: thin
	if err != nil {
		t.Fatal(err)
	}
	bystander, err := c.CreateVolume(ctx, "bystander", 64*backend.MiB)
	if err != nil {
		t.Fatal(err)
	}
	att, err := c.Attach(ctx, filler.GetVolumeId(), t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	written, werr := fillUntilFull(att.TargetPath)
	fillTime := time.Since(start)
	if !errors.Is(werr, syscall.ENOSPC) && !errors.Is(werr, syscall.EDQUOT) {
		t.Fatalf("filling stopped with %v, want ENOSPC or EDQUOT", werr)
	}
	t.Logf("pool of %d MiB full after writing %d MiB in %s: %v", poolBytes>>20, written>>20, fillTime.Round(time.Millisecond), werr)

	var slowest time.Duration
	call := func(name string, f func(ctx context.Context) error) error {
		ctx, cancel := context.WithTimeout(context.Background(), rpcDeadline)
		defer cancel()
		s := time.Now()
		err := f(ctx)
		if d := time.Since(s); d > slowest {
			slowest = d
		}
		if status.Code(err) == codes.DeadlineExceeded {
			t.Errorf("%s on a full pool hit its %s deadline", name, rpcDeadline)
		}
		return err
	}
	wantCode := func(name string, err error, want codes.Code) {
		t.Helper()
		if status.Code(err) != want {
			t.Errorf("%s on a full pool: %v, want %s", name, err, want)
		}
	}
	wantCode("CreateVolume", call("CreateVolume", func(ctx context.Context) error {
		_, err := c.CreateVolume(ctx, "one-too-many", 64*backend.MiB)
		return err
	}), codes.ResourceExhausted)
	wantCode("CreateSnapshot", call("CreateSnapshot", func(ctx context.Context) error {
		_, err := c.CreateSnapshot(ctx, "snap-of-full", filler.GetVolumeId())
		return err
	}), codes.ResourceExhausted)
	wantCode("ControllerExpandVolume", call("ControllerExpandVolume", func(ctx context.Context) error {
		_, err := c.Controller.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
			VolumeId: bystander.GetVolumeId(), CapacityRange: &csi.CapacityRange{RequiredBytes: 128 * backend.MiB}})
		return err
	}), codes.ResourceExhausted)
	wantCode("clone", call("clone", func(ctx context.Context) error {
		_, err := c.CloneVolume(ctx, "clone-of-full", bystander.GetVolumeId(), 64*backend.MiB)
		return err
	}), codes.ResourceExhausted)

	var capResp *csi.GetCapacityResponse
	wantCode("GetCapacity", call("GetCapacity", func(ctx context.Context) (err error) {
		capResp, err = c.Controller.GetCapacity(ctx, &csi.GetCapacityRequest{})
		return err
	}), codes.OK)
	if capResp.GetAvailableCapacity() != 0 {
		t.Errorf("GetCapacity on a full pool reports %d bytes available", capResp.GetAvailableCapacity())
	}
	for _, id := range []string{filler.GetVolumeId(), bystander.GetVolumeId()} {
		var health *csi.ControllerGetVolumeHealthResponse
		wantCode("ControllerGetVolumeHealth", call("ControllerGetVolumeHealth", func(ctx context.Context) (err error) {
			health, err = c.Controller.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: id})
			return err
		}), codes.OK)
		if len(health.GetVolumeHealth().GetHealthStatuses()) == 0 {
			t.Errorf("volume %s on a full pool reports healthy", id)
		} else if r := health.GetVolumeHealth().GetHealthStatuses()[0].GetReason(); r != backend.ReasonPoolFull {
			t.Errorf("volume %s on a full pool: health reason %q, want %q", id, r, backend.ReasonPoolFull)
		}
	}
	wantCode("NodeGetVolumeStats", call("NodeGetVolumeStats", func(ctx context.Context) error {
		_, err := c.Node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: filler.GetVolumeId(), VolumePath: att.TargetPath})
		return err
	}), codes.OK)
	wantCondition(t, "full pool", statsCondition(t, c, filler.GetVolumeId(), att.TargetPath), true, backend.ReasonPoolFull)
	wantCode("Probe", call("Probe", func(ctx context.Context) error {
		_, err := c.Identity.Probe(ctx, &csi.ProbeRequest{})
		return err
	}), codes.OK)
	// Freeing space must work on a full pool: deleting is the way out.
	wantCode("DeleteVolume", call("DeleteVolume", func(ctx context.Context) error {
		return c.DeleteVolume(ctx, bystander.GetVolumeId())
	}), codes.OK)
	wantCode("Detach", call("Detach", func(ctx context.Context) error { return att.Detach(ctx) }), codes.OK)
	if n := countMountsOf(t, pool.LoopDevice()); n != 1 {
		t.Errorf("%d mounts of the pool device after detach, want 1 (the pool)", n)
	}
	if p := hungTools(); len(p) > 0 {
		t.Errorf("processes left: %v", p)
	}
	t.Logf("full pool: slowest call took %s (deadline %s)", slowest.Round(time.Millisecond), rpcDeadline)

	// Delete the data; the pool must serve again.
	if err := os.RemoveAll(filepath.Join(pool.MountPath(), "csi-thin", "volumes", filler.GetVolumeId(), "fill")); err != nil {
		t.Fatal(err)
	}
	if _, err := host.Run(ctx, "btrfs", "filesystem", "sync", pool.MountPath()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		v, err := c.CreateVolume(ctx, "after-cleanup", 64*backend.MiB)
		if err == nil {
			dir := volumeDir(pool, v.GetVolumeId())
			harness.WriteData(t, dir, "after", 4, 1<<20)
			break
		}
		if status.Code(err) != codes.ResourceExhausted || time.Now().After(deadline) {
			t.Fatalf("pool did not recover after its data was deleted: %v", err)
		}
		time.Sleep(200 * time.Millisecond) // the cleaner returns space asynchronously
	}
	health, err := c.Controller.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: filler.GetVolumeId()})
	if err != nil || len(health.GetVolumeHealth().GetHealthStatuses()) != 0 {
		t.Errorf("volume still unhealthy after cleanup: %v %v", health, err)
	}
}

// fillUntilFull writes 4 MiB files, each synced, until a write fails, and
// returns how much was written and the error that stopped it.
func fillUntilFull(dir string) (int64, error) {
	if err := os.MkdirAll(filepath.Join(dir, "fill"), 0o750); err != nil {
		return 0, err
	}
	buf := make([]byte, 4<<20)
	for i := range buf {
		buf[i] = byte(i*7 + i>>12) // incompressible enough, and not zero
	}
	var written int64
	for i := 0; i < 4096; i++ {
		f, err := os.Create(filepath.Join(dir, "fill", fmt.Sprintf("f%05d", i)))
		if err != nil {
			return written, err
		}
		n, err := f.Write(buf)
		written += int64(n)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return written, err
		}
	}
	return written, errors.New("wrote 16 GiB without filling the pool")
}
