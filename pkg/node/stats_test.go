package node

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/csi-thin/csi-thin/internal/kubeletcsi"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/backend/fake"
)

// conditionPool is a fake pool whose volumes all report one condition.
type conditionPool struct {
	*fake.Backend
	cond backend.Condition
}

func (p *conditionPool) GetVolume(ctx context.Context, id string) (*backend.Volume, error) {
	v, err := p.Backend.GetVolume(ctx, id)
	if err != nil {
		return nil, err
	}
	v.Condition = p.cond
	return v, nil
}

func TestNodeGetVolumeStatsCondition(t *testing.T) {
	for _, tc := range []struct {
		name         string
		cond         backend.Condition
		unknownID    bool // the pool does not know the volume
		malformed    bool // the ID is not one this driver makes
		mounted      bool // the volume path is a mount point
		wantCode     codes.Code
		wantAbnormal bool
		wantPrefix   string
	}{
		{name: "healthy", cond: backend.Condition{Message: "ok"}, wantPrefix: "ok"},
		{name: "pool read-only", cond: backend.Condition{Abnormal: true, Reason: backend.ReasonPoolReadOnly, Message: "pool is read-only"},
			wantAbnormal: true, wantPrefix: "PoolReadOnly: pool is read-only"},
		{name: "pool full", cond: backend.Condition{Abnormal: true, Reason: backend.ReasonPoolFull, Message: "out of space"},
			wantAbnormal: true, wantPrefix: "PoolFull: "},
		{name: "pool failed", cond: backend.Condition{Abnormal: true, Reason: backend.ReasonPoolError, Message: "thin pool needs repair"},
			wantAbnormal: true, wantPrefix: "PoolError: "},
		{name: "storage missing", cond: backend.Condition{Abnormal: true, Reason: backend.ReasonMissing, Message: "subvolume missing"},
			wantAbnormal: true, wantPrefix: "StorageMissing: "},
		{name: "pool lost the volume, still mounted", unknownID: true, mounted: true,
			wantAbnormal: true, wantPrefix: "StorageMissing: volume is mounted at "},
		{name: "unknown volume, not mounted", unknownID: true, wantCode: codes.NotFound},
		{name: "malformed id, mounted", unknownID: true, malformed: true, mounted: true, wantCode: codes.NotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			pool := &conditionPool{Backend: fake.New("n1", 1<<30), cond: tc.cond}
			vol, err := pool.CreateVolume(ctx, backend.VolumeRequest{ID: backend.VolumeIDFor("pvc-1"), RequiredBytes: 1 << 20, AccessType: backend.AccessMount})
			if err != nil {
				t.Fatal(err)
			}
			id := vol.ID
			if tc.unknownID {
				id = backend.VolumeIDFor("pvc-2")
			}
			if tc.malformed {
				id = "pvc-2"
			}
			path := t.TempDir()
			var mps []mount.MountPoint
			if tc.mounted {
				mps = append(mps, mount.MountPoint{Device: "/dev/x", Path: path, Type: "ext4"})
			}
			s := New(pool, Options{Mounter: NewMounter(mount.NewFakeMounter(mps), utilexec.New())})

			resp, err := s.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: path})
			if status.Code(err) != tc.wantCode {
				t.Fatalf("NodeGetVolumeStats: %v, want %s", err, tc.wantCode)
			}
			if err != nil {
				return
			}
			cond, err := kubeletcsi.VolumeCondition(resp)
			if err != nil || cond == nil {
				t.Fatalf("VolumeCondition as the kubelet reads it: %v, %v", cond, err)
			}
			if cond.Abnormal != tc.wantAbnormal || !strings.HasPrefix(cond.Message, tc.wantPrefix) {
				t.Errorf("condition abnormal=%v %q, want abnormal=%v %q...", cond.Abnormal, cond.Message, tc.wantAbnormal, tc.wantPrefix)
			}
			if len(resp.GetUsage()) != 2 {
				t.Errorf("usage %v, want bytes and inodes next to the condition", resp.GetUsage())
			}
		})
	}
}

// The kubelet reads the condition only from a node that advertises
// VOLUME_CONDITION (wire value 4, named in CSI up to 1.12).
func TestNodeCapabilitiesVolumeCondition(t *testing.T) {
	s := New(fake.New("n1", 1<<30), Options{Mounter: NewMounter(mount.NewFakeMounter(nil), utilexec.New())})
	resp, err := s.NodeGetCapabilities(context.Background(), &csi.NodeGetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range resp.GetCapabilities() {
		if c.GetRpc().GetType() == 4 {
			return
		}
	}
	t.Error(errors.New("VOLUME_CONDITION (4) not advertised"))
}
