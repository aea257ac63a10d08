package lvm

import (
	"strings"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/lvmthin"
)

// TestRestart opens a second Backend on the shared pool, as a restarted
// driver would: it finds every volume and snapshot from the LV tags alone,
// removes the half-made LV of an interrupted create (a copy whose
// lvextend did not run), and leaves an LV it did not make alone even when
// that carries the tags of a half-made one.
func TestRestart(t *testing.T) {
	b := shared(t)
	c := ctx(t)
	vol, snap, restore := volID(t, "vol"), snapID(t, "snap"), volID(t, "restore")
	v1, err := b.CreateVolume(c, backend.VolumeRequest{ID: vol, Name: "pvc/one", RequiredBytes: 32 * backend.MiB,
		AccessType: backend.AccessBlock, Parameters: map[string]string{"k": "v"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.DeleteVolume(ctx(t), vol) })
	s1, err := b.CreateSnapshot(c, backend.SnapshotRequest{ID: snap, Name: "snap/one", SourceVolumeID: vol})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.DeleteSnapshot(ctx(t), snap) })
	// A copy keeps its source's access type: the restore of a raw block
	// volume's snapshot is raw block too.
	r1, err := b.CreateVolume(c, backend.VolumeRequest{ID: restore, Name: "pvc/restore", FsType: "xfs",
		AccessType: backend.AccessBlock, Source: backend.Source{Kind: backend.SourceSnapshot, ID: snap}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.DeleteVolume(ctx(t), restore) })

	// A restore to 64 MiB interrupted after its lvcreate (the LV is still
	// the snapshot's 32 MiB), and someone else's LV.
	half, foreign := volID(t, "half"), "not-ours"
	lvm(t, "lvcreate", "--snapshot", "--name", half, "--permission", "rw", "--setactivationskip", "n", "--activate", "n",
		"--addtag", "csi-thin.io/owned", "--addtag", "csi-thin.io/kind=volume", "--addtag", "csi-thin.io/grow=33554432:67108864",
		"--addtag", "csi-thin.io/source=snapshot:"+snap, sharedVG+"/"+snap)
	lvm(t, "lvcreate", "--type", "thin", "--virtualsize", "8m", "--thinpool", sharedPool, "--name", foreign,
		"--addtag", "csi-thin.io/grow=4194304:8388608", sharedVG)
	t.Cleanup(func() { lvm(t, "lvremove", "--yes", sharedVG+"/"+foreign) })
	if _, err := b.GetVolume(c, half); err == nil {
		t.Fatalf("a half-made volume is visible")
	}

	b2, err := lvmthin.New(c, sharedCfg)
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	v2, err := b2.GetVolume(c, vol)
	if err != nil {
		t.Fatal(err)
	}
	if v2.Name != v1.Name || v2.SizeBytes != v1.SizeBytes || v2.AccessType != backend.AccessBlock ||
		!v2.CreatedAt.Equal(v1.CreatedAt) || v2.Parameters["k"] != "v" {
		t.Fatalf("after restart %+v, before %+v", v2, v1)
	}
	r2, err := b2.GetVolume(c, restore)
	if err != nil || r2.Source != r1.Source || r2.FsType != "xfs" || r2.Name != "pvc/restore" {
		t.Fatalf("restore after restart = %+v, %v; before %+v", r2, err, r1)
	}
	snaps, err := b2.ListSnapshots(c)
	if err != nil || !containsSnapshot(snaps, snap) {
		t.Fatalf("snapshots after restart: %v, %v", snaps, err)
	}
	s2, err := b2.GetSnapshot(c, snap)
	if err != nil || s2.SourceVolumeID != vol || s2.Name != s1.Name || !s2.CreatedAt.Equal(s1.CreatedAt) {
		t.Fatalf("snapshot after restart = %+v, %v; before %+v", s2, err, s1)
	}
	vols, err := b2.ListVolumes(c)
	if err != nil || !containsVolume(vols, vol) || !containsVolume(vols, restore) || containsVolume(vols, half) {
		t.Fatalf("volumes after restart: %v, %v", vols, err)
	}

	out := lvm(t, "lvs", "--noheadings", "-o", "lv_name,lv_tags", sharedVG)
	if strings.Contains(out, half) {
		t.Fatalf("the half-made LV survived the restart:\n%s", out)
	}
	if !strings.Contains(out, foreign) {
		t.Fatalf("the restart removed an LV csi-thin did not make:\n%s", out)
	}
}

// TestRetryCompletesHalfMade: a retried create finds the LV its first try
// left half made (a copy whose lvextend did not run) and completes it
// instead of failing.
func TestRetryCompletesHalfMade(t *testing.T) {
	b := shared(t)
	c := ctx(t)
	src := volID(t, "src")
	if _, err := b.CreateVolume(c, backend.VolumeRequest{ID: src, RequiredBytes: 8 * backend.MiB}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.DeleteVolume(ctx(t), src) })
	for _, tc := range []struct {
		name string
		make func(id string) // what the interrupted first try left
		req  backend.VolumeRequest
	}{
		{"pending grow", func(id string) {
			lvm(t, "lvcreate", "--snapshot", "--name", id, "--permission", "rw", "--setactivationskip", "n", "--activate", "n",
				"--addtag", "csi-thin.io/owned", "--addtag", "csi-thin.io/kind=volume", "--addtag", "csi-thin.io/grow=8388608:16777216",
				"--addtag", "csi-thin.io/source=volume:"+src, "--addtag", "csi-thin.io/access=mount", sharedVG+"/"+src)
		}, backend.VolumeRequest{RequiredBytes: 16 * backend.MiB, Source: backend.Source{Kind: backend.SourceVolume, ID: src}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := volID(t, "vol")
			tc.make(id)
			t.Cleanup(func() { _ = b.DeleteVolume(ctx(t), id) })
			if _, err := b.GetVolume(c, id); err == nil {
				t.Fatalf("a half-made volume is visible")
			}
			req := tc.req
			req.ID = id
			vol, err := b.CreateVolume(c, req)
			if err != nil {
				t.Fatalf("retried create: %v", err)
			}
			if vol.SizeBytes != 16*backend.MiB {
				t.Fatalf("completed volume = %+v", vol)
			}
			got, err := b.GetVolume(c, id)
			if err != nil || got.SizeBytes != 16*backend.MiB {
				t.Fatalf("completed volume reads back as %+v, %v", got, err)
			}
		})
	}
}
