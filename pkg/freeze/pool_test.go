package freeze

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/backend/fake"
)

// devicePool is a fake pool whose volumes are a given block device (or a
// directory, like a btrfs subvolume) and whose snapshot runs a hook.
type devicePool struct {
	*fake.Backend
	target   backend.Target
	snapshot func()
}

func (p *devicePool) Target(ctx context.Context, id string) (backend.Target, error) {
	if _, err := p.GetVolume(ctx, id); err != nil {
		return backend.Target{}, err
	}
	return p.target, nil
}

func (p *devicePool) CreateSnapshot(ctx context.Context, req backend.SnapshotRequest) (*backend.Snapshot, error) {
	p.snapshot()
	return p.Backend.CreateSnapshot(ctx, req)
}

func TestPoolSnapshotFreezesTheMountedDevice(t *testing.T) {
	mnt, dev := ext4Mount(t)
	for _, tc := range []struct {
		name       string
		target     backend.Target
		replay     bool
		skip       bool
		wantFrozen bool
	}{
		{name: "mounted block device", target: backend.Target{Path: dev, IsDevice: true}, wantFrozen: true},
		{name: "freeze turned off by the snapshot class", target: backend.Target{Path: dev, IsDevice: true}, skip: true},
		{name: "replay of an existing snapshot", target: backend.Target{Path: dev, IsDevice: true}, replay: true},
		{name: "directory volume (btrfs)", target: backend.Target{Path: mnt}},
		{name: "device not active", target: backend.Target{Path: filepath.Join(t.TempDir(), "gone"), IsDevice: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			inner := &devicePool{Backend: fake.New("n1", 1<<30), target: tc.target, snapshot: func() {}}
			vol, err := inner.CreateVolume(ctx, backend.VolumeRequest{ID: backend.VolumeIDFor("src"), RequiredBytes: 1 << 20, AccessType: backend.AccessMount})
			if err != nil {
				t.Fatal(err)
			}
			req := backend.SnapshotRequest{ID: backend.SnapshotIDFor("snap"), SourceVolumeID: vol.ID, SkipFreeze: tc.skip}
			if tc.replay {
				if _, err := inner.Backend.CreateSnapshot(ctx, req); err != nil {
					t.Fatal(err)
				}
			}
			f, err := New(t.TempDir(), 0, nil)
			if err != nil {
				t.Fatal(err)
			}
			var writer <-chan error
			frozen := false
			inner.snapshot = func() {
				writer = startWriter(filepath.Join(mnt, "f"))
				frozen = blocked(t, writer, 300*time.Millisecond)
			}
			if _, err := NewPool(inner, f).CreateSnapshot(ctx, req); err != nil {
				t.Fatal(err)
			}
			if frozen != tc.wantFrozen {
				t.Errorf("filesystem frozen during the snapshot: %v, want %v", frozen, tc.wantFrozen)
			}
			if frozen {
				wantResumes(t, "after the snapshot", writer)
			}
			if _, err := inner.GetSnapshot(ctx, req.ID); err != nil {
				t.Errorf("snapshot not taken: %v", err)
			}
		})
	}
}
