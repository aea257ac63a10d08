package freeze

import (
	"context"
	"io"
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

// streamingFake is a pool that streams (as LVM thin and btrfs pools do).
type streamingFake struct{ *fake.Backend }

func (streamingFake) SendSnapshot(context.Context, string, string, io.Writer) (backend.SendStats, error) {
	return backend.SendStats{}, nil
}
func (streamingFake) ReceiveVolume(context.Context, backend.VolumeRequest, io.Reader) (*backend.Volume, error) {
	return nil, nil
}
func (streamingFake) ReceiveSnapshot(context.Context, string, string, io.Reader) (*backend.Snapshot, error) {
	return nil, nil
}

// TestWrapKeepsWhatThePoolCanDo: a wrapped pool still streams when the
// pool does (the node agent turns transfers and exports on by asking for
// backend.Streamer) and serves group snapshots; one that does not stream
// does not claim to.
func TestWrapKeepsWhatThePoolCanDo(t *testing.T) {
	f, err := New(t.TempDir(), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		pool    backend.Local
		streams bool
	}{
		{name: "streaming pool", pool: streamingFake{fake.New("n1", 1<<30)}, streams: true},
		{name: "pool without streams", pool: fake.New("n1", 1<<30)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := Wrap(tc.pool, f, Options{})
			if _, ok := w.(backend.Streamer); ok != tc.streams {
				t.Errorf("wrapped pool is a backend.Streamer: %v, want %v", ok, tc.streams)
			}
			if _, ok := w.(backend.GroupSnapshotter); !ok {
				t.Error("wrapped pool is not a backend.GroupSnapshotter")
			}
			if _, err := w.CreateVolume(context.Background(), backend.VolumeRequest{ID: backend.VolumeIDFor("v"), RequiredBytes: 1 << 20}); err != nil {
				t.Errorf("CreateVolume through the wrapper: %v", err)
			}
		})
	}
}
