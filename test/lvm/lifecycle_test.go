package lvm

import (
	"os"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// TestLifecycle walks one volume through create, idempotent create,
// incompatible create, get, list, target, expand and delete.
// It runs sequentially: it checks the pool's provisioned bytes exactly.
func TestLifecycle(t *testing.T) {
	b := shared(t)
	c := ctx(t)
	id := volID(t, "vol")
	req := backend.VolumeRequest{ID: id, Name: "pvc-lifecycle/é ü", RequiredBytes: 100 * backend.MiB,
		AccessType: backend.AccessMount, FsType: "ext4", Parameters: map[string]string{"fsType": "ext4"}}

	capBefore, err := b.Capacity(c, "")
	if err != nil {
		t.Fatal(err)
	}
	vol, err := b.CreateVolume(c, req)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	t.Cleanup(func() { _ = b.DeleteVolume(ctx(t), id) })
	// 100 MiB rounds up to the 4 MiB extent.
	if vol.SizeBytes != 100*backend.MiB || vol.Name != req.Name || vol.FsType != "ext4" || vol.Node != "it-node" {
		t.Fatalf("created volume = %+v", vol)
	}
	if vol.Parameters["fsType"] != "ext4" || vol.CreatedAt.IsZero() || vol.Condition.Abnormal {
		t.Fatalf("created volume = %+v", vol)
	}

	again, err := b.CreateVolume(c, req)
	if err != nil || again.ID != id || !again.CreatedAt.Equal(vol.CreatedAt) {
		t.Fatalf("idempotent create = %+v, %v", again, err)
	}
	bigger := req
	bigger.RequiredBytes = 200 * backend.MiB
	_, err = b.CreateVolume(c, bigger)
	wantErr(t, err, backend.ErrExists, "create with another size")
	block := req
	block.AccessType = backend.AccessBlock
	_, err = b.CreateVolume(c, block)
	wantErr(t, err, backend.ErrExists, "create with another access type")

	capAfter, err := b.Capacity(c, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := capAfter.ProvisionedBytes - capBefore.ProvisionedBytes; got != vol.SizeBytes {
		t.Errorf("provisioned grew by %d, want %d", got, vol.SizeBytes)
	}
	if capAfter.TotalBytes <= 0 || capAfter.AvailableBytes <= 0 || capAfter.AvailableBytes > capAfter.TotalBytes {
		t.Errorf("capacity = %+v", capAfter)
	}

	list, err := b.ListVolumes(c)
	if err != nil {
		t.Fatal(err)
	}
	if !containsVolume(list, id) {
		t.Fatalf("ListVolumes does not contain %s", id)
	}

	target, err := b.Target(c, id)
	if err != nil {
		t.Fatalf("target: %v", err)
	}
	if fi, err := os.Stat(target.Path); err != nil || fi.Mode()&os.ModeDevice == 0 || !target.IsDevice {
		t.Fatalf("target %+v: %v", target, err)
	}

	grown, err := b.ExpandVolume(c, id, 150*backend.MiB)
	if err != nil || grown.SizeBytes != 152*backend.MiB {
		t.Fatalf("expand = %+v, %v (want 152 MiB: 150 rounded to 4 MiB extents)", grown, err)
	}
	same, err := b.ExpandVolume(c, id, 10*backend.MiB)
	if err != nil || same.SizeBytes != grown.SizeBytes {
		t.Fatalf("expand to less = %+v, %v; want unchanged", same, err)
	}

	if err := b.DeleteVolume(c, id); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if err := b.DeleteVolume(c, id); err != nil {
		t.Fatalf("delete again: %v", err)
	}
	_, err = b.GetVolume(c, id)
	wantErr(t, err, backend.ErrNotFound, "get after delete")
	_, err = b.Target(c, id)
	wantErr(t, err, backend.ErrNotFound, "target after delete")
	_, err = b.ExpandVolume(c, id, backend.GiB)
	wantErr(t, err, backend.ErrNotFound, "expand after delete")
	_, err = b.Usage(c, id)
	wantErr(t, err, backend.ErrUnsupported, "usage")
	if h := b.Health(c); !h.Healthy {
		t.Fatalf("health = %+v", h)
	}
}

func containsVolume(list []*backend.Volume, id string) bool {
	for _, v := range list {
		if v.ID == id {
			return true
		}
	}
	return false
}

func containsSnapshot(list []*backend.Snapshot, id string) bool {
	for _, s := range list {
		if s.ID == id {
			return true
		}
	}
	return false
}
