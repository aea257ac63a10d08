package lvm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-thin/csi-thin/internal/csiclient"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/controller"
	"github.com/csi-thin/csi-thin/pkg/driver"
	"github.com/csi-thin/csi-thin/pkg/node"
)

// serveCSI runs the driver (controller and node, --mode=local) over b on a
// unix socket, as in production, and returns a client.
func serveCSI(t *testing.T, b backend.Local) *csiclient.Client {
	t.Helper()
	endpoint := "unix://" + filepath.Join(t.TempDir(), "csi.sock")
	d, err := driver.New(driver.Config{
		Endpoint:   endpoint,
		Identity:   driver.NewIdentity(b.Health, driver.WithController),
		Controller: controller.New(b),
		Node:       node.New(b, node.Options{}),
	})
	if err != nil {
		t.Fatalf("start driver: %v", err)
	}
	c, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(c) }()
	cl, err := csiclient.Dial(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cl.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("driver: %v", err)
		}
	})
	wctx, wcancel := context.WithTimeout(context.Background(), time.Minute)
	defer wcancel()
	if err := cl.WaitReady(wctx, 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	return cl
}

func blockCapability() *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

// wantInUse asserts that DeleteVolume of id is FailedPrecondition naming
// each path, and that the volume is still there.
func wantInUse(t *testing.T, cl *csiclient.Client, b backend.Backend, id string, paths ...string) {
	t.Helper()
	err := cl.DeleteVolume(ctx(t), id)
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("DeleteVolume of a volume in use = %v, want FailedPrecondition", err)
	}
	for _, p := range paths {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not name %s", err, p)
		}
	}
	if _, err := b.GetVolume(ctx(t), id); err != nil {
		t.Fatalf("volume gone after a refused delete: %v", err)
	}
}

func wantDeleted(t *testing.T, cl *csiclient.Client, b backend.Backend, id string) {
	t.Helper()
	if err := cl.DeleteVolume(ctx(t), id); err != nil {
		t.Fatalf("delete after unstage: %v", err)
	}
	if _, err := b.GetVolume(ctx(t), id); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("volume still there: %v", err)
	}
}

// TestDeleteInUseRefused: on a dm-thin pool, DeleteVolume of an ext4
// volume that is staged and published, or of a raw block volume whose
// device node is published (a bind mount, which does not open the
// device, so lvremove alone would remove it), is FailedPrecondition
// naming the mount; the data stays; after unpublish/unstage it goes.
func TestDeleteInUseRefused(t *testing.T) {
	b := shared(t)
	cl := serveCSI(t, b)
	c := ctx(t)

	t.Run("ext4", func(t *testing.T) {
		vol, err := cl.CreateVolume(c, t.Name(), 64*backend.MiB)
		if err != nil {
			t.Fatal(err)
		}
		id := vol.GetVolumeId()
		t.Cleanup(func() { _ = b.DeleteVolume(context.Background(), id) })
		att, err := cl.Attach(c, id, filepath.Join(t.TempDir(), "pod"), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = att.Detach(context.Background()) })
		want := writePattern(t, dataFile(att.TargetPath), 4*backend.MiB, 21)
		wantInUse(t, cl, b, id, att.StagingPath, att.TargetPath)
		if got := fileSum(t, dataFile(att.TargetPath)); got != want {
			t.Fatalf("data changed under a refused delete")
		}
		if err := cl.Unpublish(c, id, att.TargetPath); err != nil {
			t.Fatal(err)
		}
		wantInUse(t, cl, b, id, att.StagingPath)
		if err := cl.Unstage(c, id, att.StagingPath); err != nil {
			t.Fatal(err)
		}
		wantDeleted(t, cl, b, id)
	})

	t.Run("block", func(t *testing.T) {
		resp, err := cl.Controller.CreateVolume(c, &csi.CreateVolumeRequest{Name: t.Name(),
			CapacityRange: &csi.CapacityRange{RequiredBytes: 64 * backend.MiB}, VolumeCapabilities: []*csi.VolumeCapability{blockCapability()}})
		if err != nil {
			t.Fatal(err)
		}
		id := resp.GetVolume().GetVolumeId()
		t.Cleanup(func() { _ = b.DeleteVolume(context.Background(), id) })
		dir := t.TempDir()
		staging, target := filepath.Join(dir, "staging"), filepath.Join(dir, "dev", "block")
		if err := os.MkdirAll(staging, 0o750); err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Node.NodeStageVolume(c, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: blockCapability()}); err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Node.NodePublishVolume(c, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: blockCapability()}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cl.Unpublish(context.Background(), id, target) })
		want := writeDevicePattern(t, target, 4*backend.MiB, 22)
		wantInUse(t, cl, b, id, target)
		if got := deviceSum(t, target, 4*backend.MiB); got != want {
			t.Fatalf("data changed under a refused delete")
		}
		if err := cl.Unpublish(c, id, target); err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Node.NodeUnstageVolume(c, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
			t.Fatal(err)
		}
		wantDeleted(t, cl, b, id)
	})
}

// writeDevicePattern writes n bytes of pattern seed to the start of the
// block device at path and returns their checksum.
func writeDevicePattern(t *testing.T, path string, n int64, seed uint64) string {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	sum, err := copyPattern(f, n, seed)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	return sum
}
