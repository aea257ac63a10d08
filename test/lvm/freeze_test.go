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
// are clean without FIFREEZE. With FIFREEZE first (--snapshot-freeze),
// kernel 6.1 fails lvcreate busy and the freeze wrapper takes the snapshot
// again unfrozen, 6.12 takes it frozen; either way it is clean and the
// filesystem is thawed again.
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

	// With FIFREEZE first: on 6.1 lvcreate's suspend finds the filesystem
	// frozen and fails busy (why --snapshot-freeze is off by default), and
	// the wrapper takes the snapshot again unfrozen; 6.12 takes it frozen.
	// The snapshot must be clean and the filesystem come back thawed.
	f, err := freeze.New(t.TempDir(), 2*time.Minute, nil) // the emulated VM is ~10x slow
	if err != nil {
		t.Fatal(err)
	}
	before := writes.Load()
	pool := freeze.NewPool(b, f)
	frozen := snapID(t, "frozen")
	if _, err := pool.CreateSnapshot(ctx(t), backend.SnapshotRequest{ID: frozen, SourceVolumeID: src}); err != nil {
		t.Fatalf("snapshot through the freeze wrapper: %v", err)
	}
	t.Logf("snapshot through the freeze wrapper; this kernel takes frozen snapshots: %v", pool.TakesFrozen())
	switch {
	case !kernelAtLeast(t, 6, 2) && pool.TakesFrozen():
		t.Errorf("lvcreate took a frozen origin: docs/consistency.md says 6.1 refuses it")
	case kernelAtLeast(t, 6, 12) && !pool.TakesFrozen():
		t.Errorf("this kernel refused a frozen origin: docs/consistency.md says 6.12 takes it")
	}
	restore := volID(t, "restore-frozen")
	if _, err := b.CreateVolume(ctx(t), backend.VolumeRequest{ID: restore, Source: backend.Source{Kind: backend.SourceSnapshot, ID: frozen}}); err != nil {
		t.Fatalf("restore: %v", err)
	}
	if sb := run(t, "dumpe2fs", "-h", target(t, b, restore)); strings.Contains(sb, "needs_recovery") {
		t.Error("the snapshot taken through the freeze wrapper needs journal recovery")
	}
	for _, del := range []func() error{func() error { return b.DeleteVolume(ctx(t), restore) }, func() error { return b.DeleteSnapshot(ctx(t), frozen) }} {
		if err := del(); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(time.Minute)
	for writes.Load() == before && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if writes.Load() == before {
		t.Fatal("the writer made no progress after the frozen snapshot: the filesystem stayed frozen")
	}
	t.Logf("ext4 under an fsync loop (%d writes): %d lvcreate snapshots, all clean", writes.Load(), rounds)
}
