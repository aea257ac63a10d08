package btrfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/csi-thin/csi-thin/internal/testenv"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/command"
)

// openRecorded opens a real loop-file pool whose commands are recorded.
func openRecorded(t *testing.T) (*Pool, *command.FaultRunner) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "btrfs", "mkfs.btrfs", "losetup", "mount")
	dir := t.TempDir()
	rec := &command.FaultRunner{Next: &command.Host{}}
	p, err := Open(context.Background(), Config{
		PoolPath: filepath.Join(dir, "mnt"), LoopFile: filepath.Join(dir, "pool.img"),
		LoopSizeBytes: 512 * backend.MiB, NodeName: "test-node", Runner: rec,
	})
	if err != nil {
		t.Fatalf("open pool: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Teardown(context.Background(), true); err != nil {
			t.Errorf("teardown: %v", err)
		}
	})
	return p, rec
}

// A delete that a crash cut off right after its commit point is finished
// by recovery from the record kept in the delete marker, qgroup included.
func TestRecoveryFinishesDeleteWithItsQgroup(t *testing.T) {
	p, rec := openRecorded(t)
	ctx := context.Background()
	id := backend.VolumeIDFor("victim")
	v, err := p.CreateVolume(ctx, backend.VolumeRequest{ID: id, Name: "victim", RequiredBytes: 64 * backend.MiB, AccessType: backend.AccessMount})
	if err != nil {
		t.Fatal(err)
	}
	r, err := p.readRecord(v.ID)
	if err != nil || r.SubvolumeID == 0 {
		t.Fatalf("record %+v, %v", r, err)
	}
	if err := p.markDeleting(id); err != nil { // the crash falls here
		t.Fatal(err)
	}
	before := len(rec.Lines())
	if err := p.recover(ctx); err != nil {
		t.Fatal(err)
	}
	ran := rec.Lines()[before:]
	if want := fmt.Sprintf("btrfs qgroup destroy 0/%d %s", r.SubvolumeID, p.mountPath); !slices.Contains(ran, want) {
		t.Errorf("recovery ran %q, want %q among them", ran, want)
	}
	if _, err := os.Lstat(p.volumePath(id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("subvolume still there: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(p.base, "meta", id+deletingSuffix)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("delete marker still there: %v", err)
	}
}

// Torn record temps of our own IDs go; anything else in meta/ is not ours
// to judge and stays.
func TestRecoveryRemovesOnlyOurTornRecords(t *testing.T) {
	p, _ := openRecorded(t)
	meta := filepath.Join(p.base, "meta")
	ours := filepath.Join(meta, backend.VolumeIDFor("torn")+tmpSuffix)
	foreign := []string{filepath.Join(meta, "notes.tmp"), filepath.Join(meta, "x.json.tmp")}
	for _, f := range append([]string{ours}, foreign...) {
		if err := os.WriteFile(f, []byte("{"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(ours); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("torn record %s survived recovery: %v", ours, err)
	}
	for _, f := range foreign {
		if _, err := os.Lstat(f); err != nil {
			t.Errorf("recovery removed %s, which is not ours: %v", f, err)
		}
	}
}
