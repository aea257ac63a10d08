package lvm

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/freeze"
)

// TestSnapshotFrozenExt4 snapshots a mounted ext4 volume under a writer
// that fsyncs continuously and reads each snapshot's superblock (through a
// restore): lvcreate's own suspend freezes the filesystem, so the snapshots
// are clean without FIFREEZE; with FIFREEZE first, lvcreate fails (busy) on
// this kernel and the filesystem is thawed again.
func TestSnapshotFrozenExt4(t *testing.T) {
	b := shared(t)
	c := ctx(t)
	src := volID(t, "src")
	if _, err := b.CreateVolume(c, backend.VolumeRequest{ID: src, Name: "src", RequiredBytes: 256 * backend.MiB, FsType: "ext4"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.DeleteVolume(ctx(t), src) })
	dev := target(t, b, src)
	formatExt4(t, dev)
	dir := mount(t, dev, "ext4", "discard")

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var writes atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			f, err := os.Create(filepath.Join(dir, fmt.Sprintf("f%d", i%64)))
			if err != nil {
				t.Errorf("writer: %v", err)
				return
			}
			_, err = f.Write([]byte(strings.Repeat("x", 4096)))
			if err == nil {
				err = f.Sync()
			}
			f.Close()
			if err != nil {
				t.Errorf("writer: %v", err)
				return
			}
			writes.Add(1)
			time.Sleep(20 * time.Millisecond) // leave the (emulated) CPU to lvcreate
		}
	}()
	t.Cleanup(func() { close(stop); wg.Wait() })

	// lvcreate alone: its suspend of the origin freezes the filesystem, so
	// every snapshot must be clean (no needs_recovery: journal flushed).
	const rounds = 3
	for i := 0; i < rounds; i++ {
		c := ctx(t)
		snap := snapID(t, fmt.Sprintf("snap-%d", i))
		if _, err := b.CreateSnapshot(c, backend.SnapshotRequest{ID: snap, SourceVolumeID: src}); err != nil {
			t.Fatalf("snapshot: %v", err)
		}
		restore := volID(t, fmt.Sprintf("restore-%d", i))
		if _, err := b.CreateVolume(c, backend.VolumeRequest{ID: restore, Source: backend.Source{Kind: backend.SourceSnapshot, ID: snap}}); err != nil {
			t.Fatalf("restore: %v", err)
		}
		if sb := run(t, "dumpe2fs", "-h", target(t, b, restore)); strings.Contains(sb, "needs_recovery") {
			t.Errorf("snapshot %d of a mounted, busy ext4 needs journal recovery: lvcreate did not freeze it", i)
		}
		if err := b.DeleteVolume(c, restore); err != nil {
			t.Fatal(err)
		}
		if err := b.DeleteSnapshot(c, snap); err != nil {
			t.Fatal(err)
		}
	}

	// With FIFREEZE first, lvcreate's suspend finds the filesystem frozen
	// and fails (why --snapshot-freeze is off); the filesystem must still
	// come back thawed.
	f, err := freeze.New(t.TempDir(), 2*time.Minute, nil) // the emulated VM is ~10x slow
	if err != nil {
		t.Fatal(err)
	}
	before := writes.Load()
	_, err = freeze.NewPool(b, f).CreateSnapshot(ctx(t), backend.SnapshotRequest{ID: snapID(t, "frozen"), SourceVolumeID: src})
	t.Logf("lvcreate on a filesystem frozen by FIFREEZE: %v", err)
	if err == nil {
		t.Errorf("lvcreate succeeded on a frozen filesystem: docs/consistency.md says it fails on this kernel")
		_ = b.DeleteSnapshot(ctx(t), snapID(t, "frozen"))
	}
	deadline := time.Now().Add(time.Minute)
	for writes.Load() == before && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if writes.Load() == before {
		t.Fatal("the writer made no progress after the failed frozen snapshot: the filesystem stayed frozen")
	}
	t.Logf("ext4 under an fsync loop (%d writes): %d lvcreate snapshots, all clean", writes.Load(), rounds)
}
