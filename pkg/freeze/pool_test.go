package freeze

import (
	"context"
	"fmt"
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
	snapshot func() error
}

func (p *devicePool) Target(ctx context.Context, id string) (backend.Target, error) {
	if _, err := p.GetVolume(ctx, id); err != nil {
		return backend.Target{}, err
	}
	return p.target, nil
}

func (p *devicePool) CreateSnapshot(ctx context.Context, req backend.SnapshotRequest) (*backend.Snapshot, error) {
	if err := p.snapshot(); err != nil {
		return nil, err
	}
	return p.Backend.CreateSnapshot(ctx, req)
}

func TestPoolSnapshotFreezesTheMountedDevice(t *testing.T) {
	mnt, dev := ext4Mount(t)
	for _, tc := range []struct {
		name       string
		target     backend.Target
		replay     bool
		skip       bool
		refuseBusy bool // the backend fails busy while frozen (LVM on kernel 6.1)
		// busyThawed: the first call fails busy after a short freeze
		// timeout thawed the filesystem, which says nothing of the kernel.
		busyThawed bool
		wantFrozen bool // in the first call of the backend's snapshot
	}{
		{name: "mounted block device", target: backend.Target{Path: dev, IsDevice: true}, wantFrozen: true},
		{name: "freeze turned off by the snapshot class", target: backend.Target{Path: dev, IsDevice: true}, skip: true},
		{name: "replay of an existing snapshot", target: backend.Target{Path: dev, IsDevice: true}, replay: true},
		{name: "directory volume (btrfs)", target: backend.Target{Path: mnt}},
		{name: "device not active", target: backend.Target{Path: filepath.Join(t.TempDir(), "gone"), IsDevice: true}},
		{name: "kernel refuses a frozen snapshot", target: backend.Target{Path: dev, IsDevice: true}, refuseBusy: true, wantFrozen: true},
		{name: "busy after the timeout thawed", target: backend.Target{Path: dev, IsDevice: true}, busyThawed: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			inner := &devicePool{Backend: fake.New("n1", 1<<30), target: tc.target, snapshot: func() error { return nil }}
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
			timeout := time.Duration(0)
			if tc.busyThawed {
				timeout = 20 * time.Millisecond
			}
			f, err := New(t.TempDir(), timeout, nil)
			if err != nil {
				t.Fatal(err)
			}
			var frozen []bool
			inner.snapshot = func() error {
				writer := startWriter(filepath.Join(mnt, "f"))
				isHeld := held(t, writer)[0]
				frozen = append(frozen, isHeld)
				if isHeld {
					// Resumed by the thaw, which the hook must not wait for.
					t.Cleanup(func() { wantResumes(t, "after the snapshot", writer) })
				}
				if (isHeld && tc.refuseBusy) || (tc.busyThawed && len(frozen) == 1) {
					return fmt.Errorf("lvcreate: suspend: device or resource busy: %w", backend.ErrBusy)
				}
				return nil
			}
			pool := NewPool(inner, f)
			if _, err := pool.CreateSnapshot(ctx, req); err != nil {
				t.Fatal(err)
			}
			if len(frozen) > 0 && frozen[0] != tc.wantFrozen {
				t.Errorf("filesystem frozen during the snapshot: %v, want %v", frozen[0], tc.wantFrozen)
			}
			if _, err := inner.GetSnapshot(ctx, req.ID); err != nil {
				t.Errorf("snapshot not taken: %v", err)
			}
			if tc.busyThawed {
				// Taken again unfrozen; freezing stays on for the next.
				if len(frozen) != 2 || !pool.TakesFrozen() {
					t.Errorf("backend calls %d (want 2: busy, then again), TakesFrozen %v (want true)", len(frozen), pool.TakesFrozen())
				}
			}
			if !tc.refuseBusy {
				return
			}
			// Refused busy while frozen: taken again unfrozen, and so is the
			// next snapshot, without trying the kernel again.
			next := backend.SnapshotRequest{ID: backend.SnapshotIDFor("next"), SourceVolumeID: vol.ID}
			if _, err := pool.CreateSnapshot(ctx, next); err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(frozen) != "[true false false]" || pool.TakesFrozen() {
				t.Errorf("frozen in each backend call: %v (want [true false false]), TakesFrozen %v (want false)", frozen, pool.TakesFrozen())
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
