package btrfs_test

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	osexec "os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/btrfs"
)

// These tests run on a real btrfs filesystem on a loop device.

func groupVolumes(t *testing.T, p *btrfs.Pool, names ...string) []string {
	t.Helper()
	var ids []string
	for _, name := range names {
		v, err := p.CreateVolume(context.Background(), backend.VolumeRequest{ID: backend.VolumeIDFor(name), Name: name, RequiredBytes: 64 * backend.MiB, AccessType: backend.AccessMount})
		if err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		ids = append(ids, v.ID)
	}
	return ids
}

// createGroup creates a group snapshot as a CO would: a pool whose members
// kept landing in different transactions (a busy host) answers ErrBusy,
// which the CO is told to retry (Unavailable); so does this, a few times.
func createGroup(ctx context.Context, p *btrfs.Pool, req backend.GroupSnapshotRequest) (*backend.GroupSnapshot, error) {
	for tries := 1; ; tries++ {
		g, err := p.CreateGroupSnapshot(ctx, req)
		if !errors.Is(err, backend.ErrBusy) || tries == 10 {
			return g, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// lastRecord returns the last non-zero 8-byte sequence number in file.
func lastRecord(t *testing.T, path string) uint64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var last uint64
	for off := 0; off+8 <= len(b); off += 8 {
		if n := binary.LittleEndian.Uint64(b[off:]); n != 0 {
			last = n
		}
	}
	return last
}

// A writer appends sequence number n to volume A, fsyncs, then appends n
// to volume B and fsyncs, so at every instant B's last record is A's or
// one behind. Group snapshots taken while it runs must each show that:
// snapshots of A and B taken at two instants would let B run ahead of A.
// Every member is then restored and its data compared.
func TestGroupSnapshotIsOneInstant(t *testing.T) {
	p, _ := openRecorded(t, 512*backend.MiB, "")
	ctx := context.Background()
	ids := groupVolumes(t, p, "wal", "data")
	a, b := ids[0], ids[1] // sorted order is what the group reports; either works
	files := []*os.File{}
	for _, id := range []string{a, b} {
		f, err := os.OpenFile(filepath.Join(p.VolumePath(id), "seq"), os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		files = append(files, f)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	var written atomic.Uint64
	wg.Go(func() {
		var rec [8]byte
		for n := uint64(1); !stop.Load(); n++ {
			binary.LittleEndian.PutUint64(rec[:], n)
			for _, f := range files {
				if _, err := f.WriteAt(rec[:], int64(n-1)*8); err != nil {
					t.Error(err)
					return
				}
				if err := f.Sync(); err != nil {
					t.Error(err)
					return
				}
			}
			written.Store(n)
		}
	})
	for i := range 16 {
		name := "group-" + string(rune('a'+i))
		g, err := createGroup(ctx, p, backend.GroupSnapshotRequest{ID: backend.GroupSnapshotIDFor(name), Name: name, SourceVolumeIDs: []string{b, a}})
		if err != nil {
			stop.Store(true)
			wg.Wait()
			t.Fatalf("group snapshot %d: %v", i, err)
		}
		if len(g.Snapshots) != 2 || !g.ReadyToUse || !g.OneInstant {
			t.Fatalf("group %+v (one commit: want ready and OneInstant)", g)
		}
		last := map[string]uint64{}
		for _, s := range g.Snapshots {
			if s.GroupID != g.ID || s.GroupSize != 2 || s.ID != backend.MemberSnapshotID(g.ID, s.SourceVolumeID) {
				t.Fatalf("member %+v", s)
			}
			last[s.SourceVolumeID] = lastRecord(t, filepath.Join(snapshotDir(p, s.ID), "seq"))
		}
		t.Logf("group %d: A at %d, B at %d (writer at %d)", i, last[a], last[b], written.Load())
		if last[b] > last[a] || last[a] > last[b]+1 {
			t.Errorf("group %d is not one instant: A's last record %d, B's %d", i, last[a], last[b])
		}
	}
	stop.Store(true)
	wg.Wait()
	if written.Load() < 10 {
		t.Fatalf("the writer wrote only %d records: the test proved nothing", written.Load())
	}

	// Restore each member of the last group and compare with its snapshot.
	g, err := p.GetGroupSnapshot(ctx, backend.GroupSnapshotIDFor("group-p"))
	if err != nil {
		t.Fatal(err)
	}
	if !g.OneInstant {
		t.Error("a group read back after its creation does not report OneInstant")
	}
	for _, s := range g.Snapshots {
		v, err := p.CreateVolume(ctx, backend.VolumeRequest{ID: backend.VolumeIDFor("restore-" + s.ID), Name: "restore-" + s.ID,
			Source: backend.Source{Kind: backend.SourceSnapshot, ID: s.ID}, AccessType: backend.AccessMount})
		if err != nil {
			t.Fatalf("restore member %s: %v", s.ID, err)
		}
		want, _ := os.ReadFile(filepath.Join(snapshotDir(p, s.ID), "seq"))
		got, _ := os.ReadFile(filepath.Join(p.VolumePath(v.ID), "seq"))
		if len(want) == 0 || string(got) != string(want) {
			t.Fatalf("restored member %s differs from its snapshot (%d vs %d bytes)", s.ID, len(got), len(want))
		}
	}
}

func TestGroupSnapshotIdempotentAndCodes(t *testing.T) {
	p, _ := openRecorded(t, 512*backend.MiB, "")
	ctx := context.Background()
	ids := groupVolumes(t, p, "one", "two", "three")
	gid := backend.GroupSnapshotIDFor("g")
	req := backend.GroupSnapshotRequest{ID: gid, Name: "g", SourceVolumeIDs: ids[:2]}
	first, err := createGroup(ctx, p, req)
	if err != nil {
		t.Fatal(err)
	}
	again, err := p.CreateGroupSnapshot(ctx, req)
	if err != nil || len(again.Snapshots) != 2 || again.Snapshots[0].ID != first.Snapshots[0].ID || !again.CreatedAt.Equal(first.CreatedAt) {
		t.Fatalf("replay: %+v, %v", again, err)
	}
	for _, tc := range []struct {
		name    string
		sources []string
		want    error
	}{
		{"other sources", ids[1:], backend.ErrExists},
		{"more sources", ids, backend.ErrExists},
		{"no sources", nil, backend.ErrInvalid},
		{"duplicate", []string{ids[0], ids[0]}, backend.ErrInvalid},
	} {
		if _, err := p.CreateGroupSnapshot(ctx, backend.GroupSnapshotRequest{ID: gid, Name: "g", SourceVolumeIDs: tc.sources}); !errors.Is(err, tc.want) {
			t.Errorf("%s: want %v, got %v", tc.name, tc.want, err)
		}
	}
	if _, err := p.CreateGroupSnapshot(ctx, backend.GroupSnapshotRequest{ID: backend.GroupSnapshotIDFor("h"), Name: "h",
		SourceVolumeIDs: []string{ids[0], backend.VolumeIDFor("nope")}}); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("unknown source: want ErrNotFound, got %v", err)
	}
	// A restart (recovery) keeps a committed group whole.
	p = restart(t, p, nil)
	got, err := p.GetGroupSnapshot(ctx, gid)
	if err != nil || len(got.Snapshots) != 2 || !got.ReadyToUse {
		t.Fatalf("after recovery: %+v, %v", got, err)
	}
	// Members are read-only.
	if err := os.WriteFile(filepath.Join(snapshotDir(p, got.Snapshots[0].ID), "x"), []byte("x"), 0o600); err == nil {
		t.Fatal("wrote into a group member")
	}
	if err := p.DeleteGroupSnapshot(ctx, gid); err != nil {
		t.Fatal(err)
	}
	if err := p.DeleteGroupSnapshot(ctx, gid); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := p.GetGroupSnapshot(ctx, gid); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("deleted group: %v", err)
	}
	assertNoSnapshots(t, p)
}

// assertNoSnapshots checks that no snapshot record, snapshot subvolume,
// staged object or group record is left.
func assertNoSnapshots(t *testing.T, p *btrfs.Pool) {
	t.Helper()
	snaps, err := p.ListSnapshots(context.Background())
	if err != nil || len(snaps) != 0 {
		t.Fatalf("snapshots left: %+v, %v", snaps, err)
	}
	for _, dir := range []string{"snapshots", "staging"} {
		entries, err := os.ReadDir(layoutPath(p, dir))
		if err != nil || len(entries) != 0 {
			t.Fatalf("%s not empty: %v, %v", dir, entries, err)
		}
	}
	metas, _ := filepath.Glob(layoutPath(p, "meta", "g-*"))
	if len(metas) != 0 {
		t.Fatalf("group records left: %v", metas)
	}
}

// A member that cannot be snapshotted (its subvolume is gone behind the
// pool's back) fails the group, and nothing of the group is left.
func TestGroupSnapshotFailedMemberLeavesNothing(t *testing.T) {
	p, _ := openRecorded(t, 512*backend.MiB, "")
	ctx := context.Background()
	ids := groupVolumes(t, p, "fine", "broken")
	if out, err := osexec.Command("btrfs", "subvolume", "delete", p.VolumePath(ids[1])).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	gid := backend.GroupSnapshotIDFor("g")
	_, err := p.CreateGroupSnapshot(ctx, backend.GroupSnapshotRequest{ID: gid, Name: "g", SourceVolumeIDs: ids})
	if err == nil {
		t.Fatal("group snapshot of a volume without its subvolume succeeded")
	}
	t.Logf("failed as expected: %v", err)
	if _, err := p.GetGroupSnapshot(ctx, gid); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("failed group: %v", err)
	}
	assertNoSnapshots(t, p)
}

// Each crash point of a create and a delete: recovery (a restart) removes
// an unfinished group entirely, or finishes a committed delete.
func TestGroupSnapshotRecovery(t *testing.T) {
	p, _ := openRecorded(t, 512*backend.MiB, "")
	ctx := context.Background()
	ids := groupVolumes(t, p, "one", "two")
	gid := backend.GroupSnapshotIDFor("g")
	create := func(t *testing.T) *backend.GroupSnapshot {
		t.Helper()
		g, err := createGroup(ctx, p, backend.GroupSnapshotRequest{ID: gid, Name: "g", SourceVolumeIDs: ids})
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	for _, tc := range []struct {
		name  string
		crash func(t *testing.T, g *backend.GroupSnapshot)
	}{
		{"members committed, group record not written", func(t *testing.T, _ *backend.GroupSnapshot) {
			if err := os.Remove(metaPath(p, gid)); err != nil {
				t.Fatal(err)
			}
		}},
		{"members still staged", func(t *testing.T, g *backend.GroupSnapshot) {
			// Put one member back where the snapshots are staged.
			if err := os.Remove(metaPath(p, gid)); err != nil {
				t.Fatal(err)
			}
			m := g.Snapshots[0].ID
			btrfsCmd(t, "property", "set", "-ts", snapshotDir(p, m), "ro", "false")
			dir := filepath.Join(stagingDir(p, gid), m)
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(snapshotDir(p, m), filepath.Join(dir, "snapshot")); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(metaPath(p, m)); err != nil {
				t.Fatal(err)
			}
		}},
		{"delete committed", func(t *testing.T, _ *backend.GroupSnapshot) {
			markDeleting(t, p, gid)
		}},
	} {
		if tc.name == "delete committed" {
			// Without a restart, a create of the same name finishes the
			// delete first, so that recovery cannot later take the new
			// group's members for the old one's.
			g := create(t)
			markDeleting(t, p, gid)
			if again := create(t); len(again.Snapshots) != 2 {
				t.Fatalf("recreated: %+v", again)
			}
			p = restart(t, p, nil)
			if got, err := p.GetGroupSnapshot(ctx, gid); err != nil || len(got.Snapshots) != 2 || !got.ReadyToUse {
				t.Fatalf("group recreated over a committed delete, after recovery: %+v, %v (was %+v)", got, err, g)
			}
			if err := p.DeleteGroupSnapshot(ctx, gid); err != nil {
				t.Fatal(err)
			}
		}
		t.Run(tc.name, func(t *testing.T) {
			tc.crash(t, create(t))
			p = restart(t, p, nil)
			if _, err := p.GetGroupSnapshot(ctx, gid); !errors.Is(err, backend.ErrNotFound) {
				t.Fatalf("group after recovery: %v", err)
			}
			assertNoSnapshots(t, p)
			// And the same name works again.
			if g := create(t); len(g.Snapshots) != 2 {
				t.Fatalf("recreated: %+v", g)
			}
			if err := p.DeleteGroupSnapshot(ctx, gid); err != nil {
				t.Fatal(err)
			}
		})
	}
}
