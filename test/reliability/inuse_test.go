package reliability

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/btrfs"
	"github.com/csi-thin/csi-thin/pkg/btrfs/btrfstest"
	"github.com/csi-thin/csi-thin/test/reliability/harness"
)

// TestDeleteOfMountedVolumeIsRefused: DeleteVolume of a btrfs volume that
// is staged and published (over CSI, on a real pool) is FailedPrecondition
// naming the mounts, and leaves the data in place; while it is still
// staged it is refused too; once unstaged it is deleted.
func TestDeleteOfMountedVolumeIsRefused(t *testing.T) {
	pool := btrfstest.NewPool(t, backend.GiB, btrfs.Config{})
	c := serve(t, pool)
	ctx := context.Background()
	vol, err := c.CreateVolume(ctx, "in-use", crashVolumeBytes)
	if err != nil {
		t.Fatal(err)
	}
	id := vol.GetVolumeId()
	att, err := c.Attach(ctx, id, filepath.Join(t.TempDir(), "pod"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = att.Detach(context.Background()) })
	sum := harness.WriteData(t, att.TargetPath, "in-use", 8, 64<<10)

	refused := func(stage string, paths ...string) {
		t.Helper()
		err := c.DeleteVolume(ctx, id)
		if status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("%s: DeleteVolume = %v, want FailedPrecondition", stage, err)
		}
		for _, p := range paths {
			if !strings.Contains(err.Error(), p) {
				t.Errorf("%s: error %q does not name the mount %s", stage, err, p)
			}
		}
		if _, err := pool.GetVolume(ctx, id); err != nil {
			t.Fatalf("%s: volume gone after a refused delete: %v", stage, err)
		}
	}
	refused("published", att.StagingPath, att.TargetPath)
	if got := harness.TreeSum(t, att.TargetPath); got != sum {
		t.Fatalf("data changed under a refused delete: %s, want %s", got, sum)
	}
	harness.Must(t, "write after the refused delete", harness.ProbeWrite(att.TargetPath))

	harness.Must(t, "unpublish", c.Unpublish(ctx, id, att.TargetPath))
	refused("staged", att.StagingPath)
	if got := harness.TreeSum(t, att.StagingPath); got != sum {
		t.Fatalf("data changed under a refused delete: %s, want %s", got, sum)
	}

	harness.Must(t, "unstage", c.Unstage(ctx, id, att.StagingPath))
	harness.Must(t, "delete after unstage", c.DeleteVolume(ctx, id))
	if _, err := pool.GetVolume(ctx, id); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("volume still there after delete: %v", err)
	}
	if _, err := os.Stat(filepath.Join(pool.MountPath(), "csi-thin", "volumes", id)); !os.IsNotExist(err) {
		t.Errorf("subvolume still there: %v", err)
	}
}
