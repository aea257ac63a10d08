// Package backendtest is the contract every backend.Local must keep: one
// table of rules run against the in-memory fake (pkg/backend/fake), real
// btrfs (pkg/btrfs, on a loop device) and real LVM thin (test/lvm, in the
// VM), the way csi-sanity holds the CSI layer to the spec. A rule a
// backend skips fails here, in that backend's own suite.
package backendtest

import (
	"context"
	"errors"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// Options describe the backend under test.
type Options struct {
	// New returns an empty pool for one rule; it is called once per rule
	// and cleans up through t.
	New func(t *testing.T) backend.Local
	// VolumeBytes is a size every backend can make quickly; 0 is 16 MiB.
	VolumeBytes int64
}

// rule is one promise of the backend.Local contract.
type rule struct {
	name string
	run  func(t *testing.T, ctx context.Context, b backend.Local, size int64)
}

// Run runs every rule against a fresh pool from opts.New.
func Run(t *testing.T, opts Options) {
	size := opts.VolumeBytes
	if size == 0 {
		size = 16 * backend.MiB
	}
	for _, r := range rules {
		t.Run(r.name, func(t *testing.T) {
			r.run(t, t.Context(), opts.New(t), size)
		})
	}
}

// prefix keeps the IDs of this suite apart from a shared pool's others.
func volID(name string) string  { return backend.VolumeIDFor("contract-" + name) }
func snapID(name string) string { return backend.SnapshotIDFor("contract-" + name) }

func wantErr(t *testing.T, what string, err, sentinel error) {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Fatalf("%s: err = %v, want %v", what, err, sentinel)
	}
}

func create(t *testing.T, ctx context.Context, b backend.Local, req backend.VolumeRequest) *backend.Volume {
	t.Helper()
	v, err := b.CreateVolume(ctx, req)
	if err != nil {
		t.Fatalf("create %s: %v", req.ID, err)
	}
	t.Cleanup(func() { _ = b.DeleteVolume(context.Background(), req.ID) })
	return v
}

// notCreated checks that a refused create left nothing behind.
func notCreated(t *testing.T, ctx context.Context, b backend.Local, id string) {
	t.Helper()
	if v, err := b.GetVolume(ctx, id); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("a refused create left volume %s: %+v, %v", id, v, err)
	}
}

var rules = []rule{
	{"a volume is made on the pool's node and reads back the same", func(t *testing.T, ctx context.Context, b backend.Local, size int64) {
		id := volID("made")
		v := create(t, ctx, b, backend.VolumeRequest{ID: id, Name: "made", RequiredBytes: size})
		if v.ID != id || v.Node != b.NodeName() || v.SizeBytes < size {
			t.Fatalf("created %+v, want ID %s on node %s with at least %d bytes", v, id, b.NodeName(), size)
		}
		got, err := b.GetVolume(ctx, id)
		if err != nil || got.ID != id || got.Node != v.Node || got.SizeBytes != v.SizeBytes {
			t.Fatalf("GetVolume = %+v, %v; want %+v", got, err, v)
		}
	}},
	{"a volume requested on the pool's own node is made", func(t *testing.T, ctx context.Context, b backend.Local, size int64) {
		v := create(t, ctx, b, backend.VolumeRequest{ID: volID("own-node"), RequiredBytes: size, Node: b.NodeName()})
		if v.Node != b.NodeName() {
			t.Fatalf("volume on node %q, want %q", v.Node, b.NodeName())
		}
	}},
	{"a volume requested on another node is ErrPrecondition and not made", func(t *testing.T, ctx context.Context, b backend.Local, size int64) {
		id := volID("other-node")
		_, err := b.CreateVolume(ctx, backend.VolumeRequest{ID: id, RequiredBytes: size, Node: b.NodeName() + "-elsewhere"})
		wantErr(t, "create on another node", err, backend.ErrPrecondition)
		notCreated(t, ctx, b, id)
	}},
	{"a clone requested on another node is ErrPrecondition and not made", func(t *testing.T, ctx context.Context, b backend.Local, size int64) {
		src := create(t, ctx, b, backend.VolumeRequest{ID: volID("clone-src"), RequiredBytes: size})
		id := volID("clone-other-node")
		_, err := b.CreateVolume(ctx, backend.VolumeRequest{ID: id, RequiredBytes: size,
			Source: backend.Source{Kind: backend.SourceVolume, ID: src.ID}, Node: b.NodeName() + "-elsewhere"})
		wantErr(t, "clone on another node", err, backend.ErrPrecondition)
		notCreated(t, ctx, b, id)
	}},
	{"the same request again returns the same volume", func(t *testing.T, ctx context.Context, b backend.Local, size int64) {
		req := backend.VolumeRequest{ID: volID("replay"), Name: "replay", RequiredBytes: size}
		first := create(t, ctx, b, req)
		again, err := b.CreateVolume(ctx, req)
		if err != nil || again.ID != first.ID || again.SizeBytes != first.SizeBytes || again.Node != first.Node {
			t.Fatalf("replay = %+v, %v; want %+v", again, err, first)
		}
	}},
	{"the same ID with a size it does not fit is ErrExists", func(t *testing.T, ctx context.Context, b backend.Local, size int64) {
		v := create(t, ctx, b, backend.VolumeRequest{ID: volID("resize"), RequiredBytes: size})
		_, err := b.CreateVolume(ctx, backend.VolumeRequest{ID: v.ID, RequiredBytes: 2 * v.SizeBytes})
		wantErr(t, "same ID, twice the size", err, backend.ErrExists)
	}},
	{"a clone of a missing source is ErrNotFound and not made", func(t *testing.T, ctx context.Context, b backend.Local, size int64) {
		id := volID("orphan-clone")
		_, err := b.CreateVolume(ctx, backend.VolumeRequest{ID: id, RequiredBytes: size,
			Source: backend.Source{Kind: backend.SourceVolume, ID: volID("never-made")}})
		wantErr(t, "clone of a missing volume", err, backend.ErrNotFound)
		notCreated(t, ctx, b, id)
		_, err = b.CreateVolume(ctx, backend.VolumeRequest{ID: id, RequiredBytes: size,
			Source: backend.Source{Kind: backend.SourceSnapshot, ID: snapID("never-made")}})
		wantErr(t, "restore of a missing snapshot", err, backend.ErrNotFound)
		notCreated(t, ctx, b, id)
	}},
	{"an unknown volume is ErrNotFound to get and nothing to delete", func(t *testing.T, ctx context.Context, b backend.Local, _ int64) {
		id := volID("unknown")
		_, err := b.GetVolume(ctx, id)
		wantErr(t, "GetVolume", err, backend.ErrNotFound)
		if err := b.DeleteVolume(ctx, id); err != nil {
			t.Fatalf("DeleteVolume of an unknown volume: %v", err)
		}
	}},
	{"a deleted volume is gone and deleting it again succeeds", func(t *testing.T, ctx context.Context, b backend.Local, size int64) {
		v := create(t, ctx, b, backend.VolumeRequest{ID: volID("deleted"), RequiredBytes: size})
		for i := range 2 {
			if err := b.DeleteVolume(ctx, v.ID); err != nil {
				t.Fatalf("delete #%d: %v", i+1, err)
			}
		}
		notCreated(t, ctx, b, v.ID)
	}},
	{"a snapshot, and a restore and a clone, live on the pool's node", func(t *testing.T, ctx context.Context, b backend.Local, size int64) {
		src := create(t, ctx, b, backend.VolumeRequest{ID: volID("snap-src"), RequiredBytes: size})
		snap, err := b.CreateSnapshot(ctx, backend.SnapshotRequest{ID: snapID("snap"), Name: "snap", SourceVolumeID: src.ID})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.DeleteSnapshot(context.Background(), snap.ID) })
		if snap.Node != b.NodeName() || snap.SourceVolumeID != src.ID || !snap.ReadyToUse {
			t.Fatalf("snapshot = %+v", snap)
		}
		restore := create(t, ctx, b, backend.VolumeRequest{ID: volID("restore"), RequiredBytes: size,
			Source: backend.Source{Kind: backend.SourceSnapshot, ID: snap.ID}})
		clone := create(t, ctx, b, backend.VolumeRequest{ID: volID("clone"), RequiredBytes: size,
			Source: backend.Source{Kind: backend.SourceVolume, ID: src.ID}, Node: b.NodeName()})
		for _, v := range []*backend.Volume{restore, clone} {
			if v.Node != b.NodeName() || v.SizeBytes < src.SizeBytes {
				t.Fatalf("copy %+v of %+v", v, src)
			}
		}
	}},
	{"a snapshot of a missing volume is ErrNotFound; an unknown snapshot is nothing to delete", func(t *testing.T, ctx context.Context, b backend.Local, _ int64) {
		_, err := b.CreateSnapshot(ctx, backend.SnapshotRequest{ID: snapID("of-nothing"), SourceVolumeID: volID("never-made")})
		wantErr(t, "snapshot of a missing volume", err, backend.ErrNotFound)
		_, err = b.GetSnapshot(ctx, snapID("of-nothing"))
		wantErr(t, "GetSnapshot", err, backend.ErrNotFound)
		if err := b.DeleteSnapshot(ctx, snapID("of-nothing")); err != nil {
			t.Fatalf("DeleteSnapshot of an unknown snapshot: %v", err)
		}
	}},
}
