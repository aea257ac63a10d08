package lvm

import (
	"strings"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/lvmthin"
)

// TestRestart opens a second Backend on the shared pool, as a restarted
// driver would: it finds every volume and snapshot from the LV tags alone,
// removes the half-made LV of an interrupted create, and leaves an LV it
// did not make alone even when that carries a creating tag.
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
	r1, err := b.CreateVolume(c, backend.VolumeRequest{ID: restore, Name: "pvc/restore", FsType: "xfs",
		Source: backend.Source{Kind: backend.SourceSnapshot, ID: snap}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.DeleteVolume(ctx(t), restore) })

	// A create interrupted after lvcreate, and someone else's LV.
	half, foreign := volID(t, "half"), "not-ours"
	lvm(t, "lvcreate", "--type", "thin", "--virtualsize", "8m", "--thinpool", sharedPool, "--name", half,
		"--addtag", "csi-thin.io/owned", "--addtag", "csi-thin.io/creating", "--addtag", "csi-thin.io/kind=volume", sharedVG)
	lvm(t, "lvcreate", "--type", "thin", "--virtualsize", "8m", "--thinpool", sharedPool, "--name", foreign,
		"--addtag", "csi-thin.io/creating", sharedVG)
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
// left tagged creating and completes it instead of failing.
func TestRetryCompletesHalfMade(t *testing.T) {
	b := shared(t)
	c := ctx(t)
	id := volID(t, "vol")
	lvm(t, "lvcreate", "--type", "thin", "--virtualsize", "8m", "--thinpool", sharedPool, "--name", id,
		"--addtag", "csi-thin.io/owned", "--addtag", "csi-thin.io/creating", "--addtag", "csi-thin.io/kind=volume",
		"--addtag", "csi-thin.io/access=mount", sharedVG)
	t.Cleanup(func() { _ = b.DeleteVolume(ctx(t), id) })
	vol, err := b.CreateVolume(c, backend.VolumeRequest{ID: id, RequiredBytes: 16 * backend.MiB})
	if err != nil {
		t.Fatalf("retried create: %v", err)
	}
	if vol.SizeBytes != 16*backend.MiB {
		t.Fatalf("completed volume = %+v", vol)
	}
	if out := lvm(t, "lvs", "--noheadings", "-o", "lv_tags", sharedVG+"/"+id); strings.Contains(out, "creating") {
		t.Fatalf("tags after the retry: %s", out)
	}
}
