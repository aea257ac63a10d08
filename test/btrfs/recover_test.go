package btrfs_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// A delete that a crash cut off right after its commit point is finished
// by recovery from the record kept in the delete marker, qgroup included.
func TestRecoveryFinishesDeleteWithItsQgroup(t *testing.T) {
	p, rec := openRecorded(t, 512*backend.MiB, "")
	ctx := context.Background()
	id := backend.VolumeIDFor("victim")
	v, err := p.CreateVolume(ctx, backend.VolumeRequest{ID: id, Name: "victim", RequiredBytes: 64 * backend.MiB, AccessType: backend.AccessMount})
	if err != nil {
		t.Fatal(err)
	}
	r := readRecord(t, p, v.ID)
	if r.SubvolumeID == 0 {
		t.Fatalf("record %+v", r)
	}
	markDeleting(t, p, id) // the crash falls here
	before := len(rec.Lines())
	restart(t, p, rec)
	ran := rec.Lines()[before:]
	if want := fmt.Sprintf("btrfs qgroup destroy 0/%d %s", r.SubvolumeID, p.MountPath()); !slices.Contains(ran, want) {
		t.Errorf("recovery ran %q, want %q among them", ran, want)
	}
	if _, err := os.Lstat(p.VolumePath(id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("subvolume still there: %v", err)
	}
	if _, err := os.Lstat(markerPath(p, id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("delete marker still there: %v", err)
	}
}

// Torn record temps of our own IDs go; anything else in meta/ is not ours
// to judge and stays.
func TestRecoveryRemovesOnlyOurTornRecords(t *testing.T) {
	p, _ := openRecorded(t, 512*backend.MiB, "")
	meta := layoutPath(p, "meta")
	ours := filepath.Join(meta, backend.VolumeIDFor("torn")+".json.tmp")
	foreign := []string{filepath.Join(meta, "notes.tmp"), filepath.Join(meta, "x.json.tmp")}
	for _, f := range append([]string{ours}, foreign...) {
		if err := os.WriteFile(f, []byte("{"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	restart(t, p, nil)
	if _, err := os.Lstat(ours); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("torn record %s survived recovery: %v", ours, err)
	}
	for _, f := range foreign {
		if _, err := os.Lstat(f); err != nil {
			t.Errorf("recovery removed %s, which is not ours: %v", f, err)
		}
	}
}
