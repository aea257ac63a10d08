package btrfs_test

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/btrfs"
	"github.com/csi-thin/csi-thin/pkg/command"
)

// openPool opens a real loop-file pool in the given quota mode, its
// commands run through a FaultRunner the test may arm.
func openPool(t *testing.T, mode btrfs.QuotaMode, size int64) (*btrfs.Pool, *command.FaultRunner) {
	t.Helper()
	p, rec := openRecorded(t, size, mode)
	if p.QuotaMode() != mode {
		t.Skipf("pool runs %s quotas, not %s", p.QuotaMode(), mode)
	}
	return p, rec
}

// fill writes up to n bytes of random data to path and returns the error
// that stopped it (nil if all fitted).
func fill(path string, n int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	_, err = io.CopyN(f, rand.NewChaCha8([32]byte{1}), n)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func newVol(t *testing.T, p *btrfs.Pool, name string, size int64) *backend.Volume {
	t.Helper()
	v, err := p.CreateVolume(context.Background(), backend.VolumeRequest{ID: backend.VolumeIDFor(name), Name: name, RequiredBytes: size, AccessType: backend.AccessMount})
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	return v
}

// TestNestedSubvolumesAreChargedToTheirVolume: a subvolume made inside a
// volume (and one inside that) is charged to the volume's limit. With
// simple quotas the kernel puts it there from its first byte; with full
// qgroups the driver adopts it when it next reads the volume's usage
// (kubelet's NodeGetVolumeStats), so that is when the limit starts to hold.
func TestNestedSubvolumesAreChargedToTheirVolume(t *testing.T) {
	for _, mode := range []btrfs.QuotaMode{btrfs.QuotaSimple, btrfs.QuotaFull} {
		t.Run(string(mode), func(t *testing.T) {
			ctx := context.Background()
			p, _ := openPool(t, mode, 2*backend.GiB)
			v := newVol(t, p, "tenant", 64*backend.MiB)
			dir := p.VolumePath(v.ID)
			btrfsCmd(t, "subvolume", "create", filepath.Join(dir, "nested"))
			btrfsCmd(t, "subvolume", "create", filepath.Join(dir, "nested", "deeper"))
			if mode == btrfs.QuotaFull {
				if _, err := p.Usage(ctx, v.ID); err != nil { // adopts
					t.Fatal(err)
				}
			}
			err := fill(filepath.Join(dir, "nested", "deeper", "big"), 192*backend.MiB)
			if !errors.Is(err, syscall.EDQUOT) {
				t.Fatalf("192 MiB into a subvolume nested two deep in a 64 MiB volume: want EDQUOT, got %v", err)
			}
			btrfsCmd(t, "filesystem", "sync", p.MountPath())
			u, err := p.Usage(ctx, v.ID)
			if err != nil {
				t.Fatal(err)
			}
			if u.UsedBytes < 32*backend.MiB || u.UsedBytes > v.SizeBytes+backend.MiB {
				t.Errorf("usage of the volume counts %d bytes of the nested writes (limit %d)", u.UsedBytes, v.SizeBytes)
			}
			// Expansion moves the limit that binds the nested subvolumes.
			if _, err := p.ExpandVolume(ctx, v.ID, 256*backend.MiB); err != nil {
				t.Fatal(err)
			}
			if err := fill(filepath.Join(dir, "nested", "deeper", "big"), 160*backend.MiB); err != nil {
				t.Fatalf("160 MiB after expanding to 256 MiB: %v", err)
			}
			if err := fill(filepath.Join(dir, "nested", "more"), 192*backend.MiB); !errors.Is(err, syscall.EDQUOT) {
				t.Fatalf("352 MiB in a 256 MiB volume: want EDQUOT, got %v", err)
			}
			// A subvolume nested after the last look is charged once the
			// volume is expanded (full qgroups adopt it then).
			for _, f := range []string{"nested/more", "nested/deeper/big"} {
				if err := os.Remove(filepath.Join(dir, f)); err != nil {
					t.Fatal(err)
				}
			}
			btrfsCmd(t, "filesystem", "sync", p.MountPath())
			btrfsCmd(t, "subvolume", "create", filepath.Join(dir, "late"))
			if _, err := p.ExpandVolume(ctx, v.ID, 320*backend.MiB); err != nil {
				t.Fatal(err)
			}
			if err := fill(filepath.Join(dir, "late", "big"), 512*backend.MiB); !errors.Is(err, syscall.EDQUOT) {
				t.Fatalf("512 MiB into a subvolume nested before an expansion to 320 MiB: want EDQUOT, got %v", err)
			}
		})
	}
}

// TestDeleteRemovesNestedSubvolumes: nested, nested-of-nested and a
// read-only snapshot of a nested subvolume all go with their volume; the
// delete is idempotent, and the volume's level-1 qgroup goes once the
// cleaner has dropped its members.
func TestDeleteRemovesNestedSubvolumes(t *testing.T) {
	ctx := context.Background()
	p, _ := openPool(t, btrfs.QuotaSimple, backend.GiB)
	v := newVol(t, p, "nests", 64*backend.MiB)
	keep := newVol(t, p, "bystander", 64*backend.MiB)
	dir := p.VolumePath(v.ID)
	btrfsCmd(t, "subvolume", "create", filepath.Join(dir, "a"))
	btrfsCmd(t, "subvolume", "create", filepath.Join(dir, "a", "b"))
	if err := fill(filepath.Join(dir, "a", "b", "data"), backend.MiB); err != nil {
		t.Fatal(err)
	}
	btrfsCmd(t, "subvolume", "snapshot", "-r", filepath.Join(dir, "a"), filepath.Join(dir, "snap-of-a"))
	rec := readRecord(t, p, v.ID)
	if err := p.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatalf("delete a volume holding nested subvolumes: %v", err)
	}
	if err := p.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	list := btrfsCmd(t, "subvolume", "list", p.MountPath())
	if strings.Contains(list, v.ID) {
		t.Fatalf("subvolumes of the deleted volume left:\n%s", list)
	}
	if _, err := p.GetVolume(ctx, keep.ID); err != nil {
		t.Fatalf("bystander: %v", err)
	}
	btrfsCmd(t, "subvolume", "sync", p.MountPath())
	if pending := p.PendingQgroups(); len(pending) != 0 {
		t.Errorf("qgroups still scheduled for removal after the cleaner finished: %v", pending)
	}
	if show := btrfsCmd(t, "qgroup", "show", p.MountPath()); strings.Contains(show, volumeQgroup(rec.SubvolumeID)+" ") {
		t.Errorf("qgroup %s of the deleted volume left:\n%s", volumeQgroup(rec.SubvolumeID), show)
	}
}

// TestOldVolumesMigrate: a volume made before level-1 qgroups (limit on
// 0/<id>, no qgroup in its record) gets one at Open, with the subvolumes
// already nested in it, and the old limit goes.
func TestOldVolumesMigrate(t *testing.T) {
	ctx := context.Background()
	p, _ := openPool(t, btrfs.QuotaSimple, backend.GiB)
	v := newVol(t, p, "old", 64*backend.MiB)
	rec := readRecord(t, p, v.ID)
	// Turn it into what the earlier driver made.
	zero, one := levelZeroQgroup(rec.SubvolumeID), rec.Qgroup
	btrfsCmd(t, "qgroup", "remove", zero, one, p.MountPath())
	btrfsCmd(t, "qgroup", "destroy", one, p.MountPath())
	btrfsCmd(t, "qgroup", "limit", "67108864", zero, p.MountPath())
	dropQgroupFromRecord(t, p, v.ID)
	btrfsCmd(t, "subvolume", "create", filepath.Join(p.VolumePath(v.ID), "made-before"))

	again, err := btrfs.Open(ctx, btrfs.Config{PoolPath: p.MountPath(), NodeName: "test-node"})
	if err != nil {
		t.Fatal(err)
	}
	if rec = readRecord(t, again, v.ID); rec.Qgroup != one {
		t.Fatalf("record after migration: %+v, want qgroup %s", rec, one)
	}
	if err := fill(filepath.Join(p.VolumePath(v.ID), "made-before", "big"), 128*backend.MiB); !errors.Is(err, syscall.EDQUOT) {
		t.Fatalf("128 MiB into a subvolume nested before migration: want EDQUOT, got %v", err)
	}
	if _, err := again.ExpandVolume(ctx, v.ID, 256*backend.MiB); err != nil {
		t.Fatal(err)
	}
	if err := fill(filepath.Join(p.VolumePath(v.ID), "grown"), 128*backend.MiB); err != nil {
		t.Fatalf("the old 0/<id> limit still binds after expansion: %v", err)
	}
}

// TestRecoverySkipsABrokenObject: recovery that cannot finish one
// object's delete, nor migrate another, still opens the pool, serves the
// rest, reports both (metric, condition) and refuses calls that would
// build on the broken volume; a later call puts each right.
func TestRecoverySkipsABrokenObject(t *testing.T) {
	ctx := context.Background()
	p, runner := openPool(t, btrfs.QuotaSimple, backend.GiB)
	doomed := newVol(t, p, "doomed", 64*backend.MiB)
	old := newVol(t, p, "old", 64*backend.MiB)
	fine := newVol(t, p, "fine", 64*backend.MiB)
	markDeleting(t, p, doomed.ID)      // a delete cut off after its commit point
	dropQgroupFromRecord(t, p, old.ID) // a volume from before level-1 qgroups
	// A record torn by something other than the driver (a full disk
	// under an older version, an operator's editor).
	corrupt := backend.VolumeIDFor("corrupt")
	if err := os.WriteFile(metaPath(p, corrupt), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	runner.Arm(
		command.Fault{Kind: command.FaultFail, Nth: 1, Match: "btrfs subvolume delete", Stderr: "ERROR: injected"},
		command.Fault{Kind: command.FaultFail, Nth: 1, Match: "btrfs qgroup create", Stderr: "ERROR: injected"},
	)
	again, err := btrfs.Open(ctx, btrfs.Config{PoolPath: p.MountPath(), NodeName: "test-node", Runner: runner})
	runner.Disarm()
	if err != nil {
		t.Fatalf("one broken object took the pool down: %v", err)
	}
	att := again.NeedingAttention()
	if len(att) != 3 || att[doomed.ID] == "" || att[old.ID] == "" || att[corrupt] == "" {
		t.Fatalf("objects needing attention: %v", att)
	}
	if n := objectsNeedingAttention(t, again); n != 3 {
		t.Errorf("csi_thin_btrfs_objects_needing_attention = %v, want 3", n)
	}
	if vols, err := again.ListVolumes(ctx); err != nil || len(vols) != 2 {
		t.Fatalf("list beside an unreadable record: %d volumes, %v; want the 2 readable ones", len(vols), err)
	}
	if _, err := again.GetVolume(ctx, corrupt); err == nil || !strings.Contains(err.Error(), "parse record") {
		t.Errorf("get of the unreadable record: %v, want a parse error", err)
	}
	got, err := again.GetVolume(ctx, old.ID)
	if err != nil || !got.Condition.Abnormal || got.Condition.Reason != backend.ReasonNeedsAttention {
		t.Fatalf("condition of the unmigrated volume: %+v %v", got, err)
	}
	_, err = again.CreateSnapshot(ctx, backend.SnapshotRequest{ID: backend.SnapshotIDFor("s"), Name: "s", SourceVolumeID: old.ID})
	if !errors.Is(err, backend.ErrPrecondition) {
		t.Fatalf("snapshot of a volume needing attention: want ErrPrecondition, got %v", err)
	}
	if g, err := again.GetVolume(ctx, fine.ID); err != nil || g.Condition.Abnormal {
		t.Fatalf("the healthy volume: %+v %v", g, err)
	}
	if _, err := again.ExpandVolume(ctx, fine.ID, 128*backend.MiB); err != nil {
		t.Fatalf("expand the healthy volume: %v", err)
	}
	newVol(t, again, "after", 64*backend.MiB)
	// The operator's retry (or the CO's) puts each right.
	if err := again.DeleteVolume(ctx, doomed.ID); err != nil {
		t.Fatalf("retried delete: %v", err)
	}
	if _, err := again.ExpandVolume(ctx, old.ID, 128*backend.MiB); err != nil {
		t.Fatalf("expand retries the migration: %v", err)
	}
	if err := again.DeleteVolume(ctx, corrupt); err != nil { // the operator's way out
		t.Fatalf("delete of the unreadable record: %v", err)
	}
	if att := again.NeedingAttention(); len(att) != 0 {
		t.Fatalf("still needing attention: %v", att)
	}
	if n := objectsNeedingAttention(t, again); n != 0 {
		t.Errorf("csi_thin_btrfs_objects_needing_attention = %v after the fixes, want 0", n)
	}
}

// TestSnapshotsAndClonesLeaveNestedSubvolumesEmpty pins the documented
// behaviour: btrfs snapshots are not recursive, so a CSI snapshot or a
// clone of a volume holds an empty directory where the volume has a
// nested subvolume, and the volume's own files in full.
func TestSnapshotsAndClonesLeaveNestedSubvolumesEmpty(t *testing.T) {
	ctx := context.Background()
	p, _ := openPool(t, btrfs.QuotaSimple, backend.GiB)
	v := newVol(t, p, "src", 64*backend.MiB)
	dir := p.VolumePath(v.ID)
	btrfsCmd(t, "subvolume", "create", filepath.Join(dir, "nested"))
	for _, f := range []string{"own", "nested/inner"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(f), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	snap, err := p.CreateSnapshot(ctx, backend.SnapshotRequest{ID: backend.SnapshotIDFor("s"), Name: "s", SourceVolumeID: v.ID})
	if err != nil {
		t.Fatal(err)
	}
	clone, err := p.CreateVolume(ctx, backend.VolumeRequest{ID: backend.VolumeIDFor("c"), Name: "c", Source: backend.Source{Kind: backend.SourceVolume, ID: v.ID}, AccessType: backend.AccessMount})
	if err != nil {
		t.Fatal(err)
	}
	for _, copyDir := range []string{snapshotDir(p, snap.ID), p.VolumePath(clone.ID)} {
		if b, err := os.ReadFile(filepath.Join(copyDir, "own")); err != nil || string(b) != "own" {
			t.Errorf("%s: the volume's own file: %q %v", copyDir, b, err)
		}
		entries, err := os.ReadDir(filepath.Join(copyDir, "nested"))
		if err != nil || len(entries) != 0 {
			t.Errorf("%s: nested subvolume's place holds %v (%v), want an empty directory", copyDir, entries, err)
		}
	}
	// And they delete cleanly, as does the source with its nested one.
	for _, err := range []error{p.DeleteSnapshot(ctx, snap.ID), p.DeleteVolume(ctx, clone.ID), p.DeleteVolume(ctx, v.ID)} {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestInterruptedNestedDeleteIsFinished: a delete that stops after some
// of the nested subvolumes went (here the third `subvolume delete`
// fails; a crash there leaves the same state, each delete being atomic)
// is finished by the retry or by startup recovery, from the marker.
func TestInterruptedNestedDeleteIsFinished(t *testing.T) {
	for _, finish := range []string{"retry", "recovery"} {
		t.Run(finish, func(t *testing.T) {
			ctx := context.Background()
			p, runner := openPool(t, btrfs.QuotaSimple, backend.GiB)
			v := newVol(t, p, "nests", 64*backend.MiB)
			dir := p.VolumePath(v.ID)
			for _, d := range []string{"a", "a/b", "a/b/c", "d"} {
				btrfsCmd(t, "subvolume", "create", filepath.Join(dir, d))
			}
			runner.Arm(command.Fault{Kind: command.FaultFail, Nth: 3, Match: "btrfs subvolume delete", Stderr: "ERROR: injected"})
			err := p.DeleteVolume(ctx, v.ID)
			runner.Disarm()
			if err == nil {
				t.Fatal("the faulted delete succeeded")
			}
			if _, err := p.GetVolume(ctx, v.ID); !errors.Is(err, backend.ErrNotFound) {
				t.Fatalf("a delete past its commit point must hide the volume: %v", err)
			}
			switch finish {
			case "retry":
				err = p.DeleteVolume(ctx, v.ID)
			case "recovery":
				_, err = btrfs.Open(ctx, btrfs.Config{PoolPath: p.MountPath(), NodeName: "test-node"})
			}
			if err != nil {
				t.Fatal(err)
			}
			if list := btrfsCmd(t, "subvolume", "list", p.MountPath()); strings.Contains(list, v.ID) {
				t.Fatalf("subvolumes of the deleted volume left:\n%s", list)
			}
			if _, err := os.Lstat(markerPath(p, v.ID)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("delete marker left: %v", err)
			}
		})
	}
}
