package lvm

import (
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/lvmthin"
)

// dataBytes is what the copy tests write: big enough that an accidental
// full copy shows in the pool's data%.
const dataBytes = 256 * backend.MiB

// TestSnapshotRestoreClone writes 256 MiB to ext4 on a volume, snapshots
// it, restores the snapshot into a larger volume and clones the volume,
// and checks that the copies hold the same bytes and that a clone costs
// (almost) no pool space.
func TestSnapshotRestoreClone(t *testing.T) {
	b := shared(t)
	c := ctx(t)
	src := volID(t, "src")
	if _, err := b.CreateVolume(c, backend.VolumeRequest{ID: src, Name: "src", RequiredBytes: 512 * backend.MiB, FsType: "ext4"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.DeleteVolume(ctx(t), src) })
	dev := target(t, b, src)
	formatExt4(t, dev)
	dir := mount(t, dev, "ext4", "discard")
	want := writePattern(t, dataFile(dir), dataBytes, 1)
	umount(t, dir)

	snap := snapID(t, "snap")
	s, err := b.CreateSnapshot(c, backend.SnapshotRequest{ID: snap, Name: "snap", SourceVolumeID: src})
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	t.Cleanup(func() { _ = b.DeleteSnapshot(ctx(t), snap) })
	if !s.ReadyToUse || s.SourceVolumeID != src || s.SizeBytes != 512*backend.MiB || s.Name != "snap" {
		t.Fatalf("snapshot = %+v", s)
	}
	again, err := b.CreateSnapshot(c, backend.SnapshotRequest{ID: snap, Name: "snap", SourceVolumeID: src})
	if err != nil || !again.CreatedAt.Equal(s.CreatedAt) {
		t.Fatalf("idempotent snapshot = %+v, %v", again, err)
	}
	_, err = b.CreateSnapshot(c, backend.SnapshotRequest{ID: snap, Name: "snap", SourceVolumeID: volID(t, "other")})
	wantErr(t, err, backend.ErrExists, "snapshot ID reused for another volume")
	_, err = b.CreateSnapshot(c, backend.SnapshotRequest{ID: snapID(t, "nosrc"), SourceVolumeID: volID(t, "missing")})
	wantErr(t, err, backend.ErrNotFound, "snapshot of a missing volume")
	snaps, err := b.ListSnapshots(c)
	if err != nil || !containsSnapshot(snaps, snap) {
		t.Fatalf("ListSnapshots = %v, %v; want %s", snaps, err, snap)
	}

	// The source changes after the snapshot: the restore must not see it.
	dir = mount(t, dev, "ext4", "discard")
	writePattern(t, dataFile(dir), 8*backend.MiB, 2)
	umount(t, dir)

	t.Run("restore-larger", func(t *testing.T) {
		id := volID(t, "restore")
		fromSnap := backend.Source{Kind: backend.SourceSnapshot, ID: snap}
		// Less than the snapshot asked: the restore gets the snapshot's
		// size (as on btrfs); only a limit below that is out of range.
		small := volID(t, "small")
		vol, err := b.CreateVolume(c, backend.VolumeRequest{ID: small, RequiredBytes: 256 * backend.MiB, Source: fromSnap})
		if err != nil || vol.SizeBytes != 512*backend.MiB {
			t.Fatalf("restore asked smaller than the snapshot = %+v, %v; want the snapshot's 512 MiB", vol, err)
		}
		t.Cleanup(func() { _ = b.DeleteVolume(ctx(t), small) })
		_, err = b.CreateVolume(c, backend.VolumeRequest{ID: volID(t, "limited"), RequiredBytes: 256 * backend.MiB,
			LimitBytes: 384 * backend.MiB, Source: fromSnap})
		wantErr(t, err, backend.ErrOutOfRange, "restore limited below the snapshot's size")
		_, err = b.CreateVolume(c, backend.VolumeRequest{ID: volID(t, "none"), Source: backend.Source{Kind: backend.SourceSnapshot, ID: snapID(t, "none")}})
		wantErr(t, err, backend.ErrNotFound, "restore of a missing snapshot")

		vol, err = b.CreateVolume(c, backend.VolumeRequest{ID: id, RequiredBytes: 768 * backend.MiB, Source: fromSnap})
		if err != nil {
			t.Fatalf("restore: %v", err)
		}
		t.Cleanup(func() { _ = b.DeleteVolume(ctx(t), id) })
		if vol.SizeBytes != 768*backend.MiB || vol.Source != fromSnap {
			t.Fatalf("restored volume = %+v", vol)
		}
		d := target(t, b, id)
		run(t, "e2fsck", "-f", "-y", d)
		run(t, "resize2fs", d) // what NodeExpandVolume does for a larger restore
		m := mount(t, d, "ext4", "discard")
		if got := fileSum(t, dataFile(m)); got != want {
			t.Fatalf("restored data checksum %s, want %s", got, want)
		}
	})

	t.Run("clone", func(t *testing.T) {
		id := volID(t, "clone")
		before := poolPercent(t, sharedVG, sharedPool)
		fromVol := backend.Source{Kind: backend.SourceVolume, ID: src}
		vol, err := b.CreateVolume(c, backend.VolumeRequest{ID: id, Source: fromVol})
		if err != nil {
			t.Fatalf("clone: %v", err)
		}
		t.Cleanup(func() { _ = b.DeleteVolume(ctx(t), id) })
		if vol.SizeBytes != 512*backend.MiB || vol.Source != fromVol {
			t.Fatalf("clone = %+v", vol)
		}
		after := poolPercent(t, sharedVG, sharedPool)
		t.Logf("pool data %.2f%% before the clone of a volume holding %d MiB, %.2f%% after", before, dataBytes>>20, after)
		if after-before >= 1 {
			t.Fatalf("clone added %.2f%% of pool data, want < 1%%", after-before)
		}
		m := mount(t, target(t, b, id), "ext4", "discard")
		if got := fileSum(t, dataFile(m)); got == want {
			t.Fatalf("the clone shows the snapshot's data, not the source's current data")
		}
		// The clone is a copy of the source as it is now.
		if got, src := fileSum(t, dataFile(m)), srcSum(t, b, src); got != src {
			t.Fatalf("clone data checksum %s, source %s", got, src)
		}
	})
}

// srcSum mounts a volume read-only and checksums its data file.
func srcSum(t *testing.T, b *lvmthin.Backend, id string) string {
	t.Helper()
	m := mount(t, target(t, b, id), "ext4", "ro,noload")
	defer umount(t, m)
	return fileSum(t, dataFile(m))
}

// TestXFSClone mounts an xfs volume and its clone at the same time, which
// needs nouuid: the clone carries the origin's filesystem UUID.
func TestXFSClone(t *testing.T) {
	t.Parallel()
	b := shared(t)
	c := ctx(t)
	src, clone := volID(t, "src"), volID(t, "clone")
	if _, err := b.CreateVolume(c, backend.VolumeRequest{ID: src, RequiredBytes: 320 * backend.MiB, FsType: "xfs"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.DeleteVolume(ctx(t), src) })
	dev := target(t, b, src)
	formatXFS(t, dev)
	dir := mount(t, dev, "xfs", "discard")
	want := writePattern(t, dataFile(dir), 16*backend.MiB, 3)
	run(t, "sync")
	// A clone of a mounted volume is crash-consistent; xfs replays its log.
	if _, err := b.CreateVolume(c, backend.VolumeRequest{ID: clone, Source: backend.Source{Kind: backend.SourceVolume, ID: src}, FsType: "xfs"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.DeleteVolume(ctx(t), clone) })
	m := mount(t, target(t, b, clone), "xfs", "discard,nouuid")
	if got := fileSum(t, dataFile(m)); got != want {
		t.Fatalf("xfs clone checksum %s, want %s", got, want)
	}
}
