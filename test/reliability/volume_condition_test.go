package reliability

import (
	"context"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/csi-thin/csi-thin/internal/csiclient"
	"github.com/csi-thin/csi-thin/internal/kubeletcsi"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/btrfs"
	"github.com/csi-thin/csi-thin/pkg/btrfs/btrfstest"
)

// statsCondition calls NodeGetVolumeStats on a published volume and reads
// the condition as the kubelet does.
func statsCondition(t *testing.T, c *csiclient.Client, id, path string) *kubeletcsi.Condition {
	t.Helper()
	resp, err := c.Node.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: path})
	if err != nil {
		t.Fatalf("NodeGetVolumeStats %s: %v", id, err)
	}
	cond, err := kubeletcsi.VolumeCondition(resp)
	if err != nil || cond == nil {
		t.Fatalf("NodeGetVolumeStats %s: condition %v, %v", id, cond, err)
	}
	return cond
}

func wantCondition(t *testing.T, what string, cond *kubeletcsi.Condition, abnormal bool, reason string) {
	t.Helper()
	if cond.Abnormal != abnormal || (reason != "" && !strings.HasPrefix(cond.Message, reason+": ")) {
		t.Errorf("%s: condition abnormal=%v %q, want abnormal=%v with reason %q", what, cond.Abnormal, cond.Message, abnormal, reason)
	}
}

// TestVolumeConditionBtrfs makes a real pool read-only and deletes a
// published volume's subvolume behind its mounts, and checks what
// NodeGetVolumeStats tells the kubelet each time (the full pool is in
// TestPoolExhaustion).
func TestVolumeConditionBtrfs(t *testing.T) {
	pool := btrfstest.NewPool(t, 512*backend.MiB, btrfs.Config{})
	c := serve(t, pool)
	ctx := context.Background()
	vol, err := c.CreateVolume(ctx, "condition", 64*backend.MiB)
	if err != nil {
		t.Fatal(err)
	}
	att, err := c.Attach(ctx, vol.GetVolumeId(), t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	id := vol.GetVolumeId()
	wantCondition(t, "healthy pool", statsCondition(t, c, id, att.TargetPath), false, "")

	if _, err := host.Run(ctx, "mount", "-o", "remount,ro", pool.MountPath()); err != nil {
		t.Fatal(err)
	}
	wantCondition(t, "read-only pool", statsCondition(t, c, id, att.TargetPath), true, backend.ReasonPoolReadOnly)
	if _, err := host.Run(ctx, "mount", "-o", "remount,rw", pool.MountPath()); err != nil {
		t.Fatal(err)
	}
	wantCondition(t, "pool writable again", statsCondition(t, c, id, att.TargetPath), false, "")

	if _, err := host.Run(ctx, "btrfs", "subvolume", "delete", volumeDir(pool, id)); err != nil {
		t.Fatal(err)
	}
	wantCondition(t, "subvolume deleted", statsCondition(t, c, id, att.TargetPath), true, backend.ReasonMissing)
	if err := att.Detach(ctx); err != nil {
		t.Errorf("detach a volume whose subvolume is gone: %v", err)
	}
}
