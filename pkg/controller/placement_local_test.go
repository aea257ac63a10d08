package controller

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/backend/fake"
	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

// countingLocal counts source lookups on a local pool.
type countingLocal struct {
	*fake.Backend
	lookups atomic.Int32
}

func (c *countingLocal) GetVolume(ctx context.Context, id string) (*backend.Volume, error) {
	c.lookups.Add(1)
	return c.Backend.GetVolume(ctx, id)
}

func (c *countingLocal) GetSnapshot(ctx context.Context, id string) (*backend.Snapshot, error) {
	c.lookups.Add(1)
	return c.Backend.GetSnapshot(ctx, id)
}

// On a local pool a clone or restore is one backend call: placement knows
// the node without asking the storage, and a missing source is still
// NotFound (from the backend's create).
func TestLocalCloneAndRestoreDoNotLookUpTheSource(t *testing.T) {
	ctx := context.Background()
	b := &countingLocal{Backend: fake.New("n1", 10*backend.GiB)}
	s := New(b)
	src, err := s.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "src", VolumeCapabilities: rwo})
	if err != nil {
		t.Fatal(err)
	}
	srcID := src.GetVolume().GetVolumeId()
	snap, err := s.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: srcID})
	if err != nil {
		t.Fatal(err)
	}
	b.lookups.Store(0)
	fromVolume := &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: srcID}}}
	fromSnapshot := &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshot().GetSnapshotId()}}}
	for name, cs := range map[string]*csi.VolumeContentSource{"clone": fromVolume, "restore": fromSnapshot} {
		resp, err := s.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: rwo, VolumeContentSource: cs})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := resp.GetVolume().GetAccessibleTopology()[0].GetSegments()[wellknown.TopologyKey]; got != "n1" {
			t.Errorf("%s placed on %q, want n1", name, got)
		}
	}
	if n := b.lookups.Load(); n != 0 {
		t.Errorf("%d source lookups for a local clone and restore, want 0", n)
	}
	missing := &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: backend.VolumeIDFor("gone")}}}
	_, err = s.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "orphan", VolumeCapabilities: rwo, VolumeContentSource: missing})
	if status.Code(err) != codes.NotFound {
		t.Errorf("clone of a missing volume: %v, want NotFound", err)
	}
}
