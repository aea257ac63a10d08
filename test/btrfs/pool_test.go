package btrfs_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/btrfs"
	"github.com/csi-thin/csi-thin/pkg/btrfs/btrfstest"
)

// These tests run on a real btrfs filesystem on a loop device.

func newVolume(t *testing.T, p *btrfs.Pool, name string, size int64, src backend.Source) *backend.Volume {
	t.Helper()
	v, err := p.CreateVolume(context.Background(), backend.VolumeRequest{
		ID: backend.VolumeIDFor(name), Name: name, RequiredBytes: size, Source: src, AccessType: backend.AccessMount,
	})
	if err != nil {
		t.Fatalf("create volume %s: %v", name, err)
	}
	return v
}

// writePattern writes n bytes of a seeded pseudo-random pattern and
// returns its sha256.
func writePattern(t *testing.T, path string, n int64, seed uint64) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	rng := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	w := io.MultiWriter(f, h)
	if _, err := io.CopyN(w, rng, n); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func TestVolumeLifecycle(t *testing.T) {
	ctx := context.Background()
	p := btrfstest.NewPool(t, 2*backend.GiB, btrfs.Config{})
	v := newVolume(t, p, "pvc-a", 100*backend.MiB, backend.Source{})
	if v.SizeBytes != 100*backend.MiB || v.Node != "test-node" || v.FsType != "btrfs" {
		t.Fatalf("unexpected volume %+v", v)
	}
	// Same name, compatible size: the same volume comes back.
	again := newVolume(t, p, "pvc-a", 50*backend.MiB, backend.Source{})
	if again.ID != v.ID || again.SizeBytes != v.SizeBytes {
		t.Fatalf("idempotent create returned %+v, want %+v", again, v)
	}
	// Same name, incompatible size: AlreadyExists.
	_, err := p.CreateVolume(ctx, backend.VolumeRequest{ID: v.ID, Name: "pvc-a", RequiredBytes: 200 * backend.MiB})
	if !errors.Is(err, backend.ErrExists) {
		t.Fatalf("incompatible re-create: want ErrExists, got %v", err)
	}
	vols, err := p.ListVolumes(ctx)
	if err != nil || len(vols) != 1 {
		t.Fatalf("list: %v %v", vols, err)
	}
	if err := p.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	if err := p.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatalf("second delete must succeed: %v", err)
	}
	if _, err := p.GetVolume(ctx, v.ID); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("deleted volume: want ErrNotFound, got %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(p.MountPath(), "csi-thin", "volumes")); len(entries) != 0 {
		t.Fatalf("subvolumes left after delete: %v", entries)
	}
}

func TestQuotaIsEnforced(t *testing.T) {
	p := btrfstest.NewPool(t, 2*backend.GiB, btrfs.Config{})
	v := newVolume(t, p, "small", 16*backend.MiB, backend.Source{})
	f, err := os.Create(filepath.Join(p.VolumePath(v.ID), "big"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, err = io.CopyN(f, rand.NewChaCha8([32]byte{}), 64*backend.MiB)
	if err == nil {
		err = f.Sync()
	}
	if err == nil || !strings.Contains(err.Error(), "quota") {
		t.Fatalf("writing 64 MiB into a 16 MiB volume: want a quota error, got %v", err)
	}
}

func TestSnapshotRestoreCloneKeepData(t *testing.T) {
	ctx := context.Background()
	p := btrfstest.NewPool(t, 4*backend.GiB, btrfs.Config{})
	src := newVolume(t, p, "src", 512*backend.MiB, backend.Source{})
	sum := writePattern(t, filepath.Join(p.VolumePath(src.ID), "data"), 256*backend.MiB, 1)

	snap, err := p.CreateSnapshot(ctx, backend.SnapshotRequest{ID: backend.SnapshotIDFor("snap"), Name: "snap", SourceVolumeID: src.ID})
	if err != nil {
		t.Fatal(err)
	}
	if !snap.ReadyToUse || snap.SizeBytes != src.SizeBytes {
		t.Fatalf("snapshot %+v", snap)
	}
	// The source changes after the snapshot; the snapshot must not.
	writePattern(t, filepath.Join(p.VolumePath(src.ID), "data"), 1*backend.MiB, 2)

	// A restore may be larger than its snapshot, never smaller.
	restored := newVolume(t, p, "restored", 1*backend.GiB, backend.Source{Kind: backend.SourceSnapshot, ID: snap.ID})
	if restored.SizeBytes != 1*backend.GiB {
		t.Fatalf("restore-larger size %d", restored.SizeBytes)
	}
	_, err = p.CreateVolume(ctx, backend.VolumeRequest{ID: backend.VolumeIDFor("tiny"), Name: "tiny", RequiredBytes: 1 * backend.MiB, LimitBytes: 1 * backend.MiB,
		Source: backend.Source{Kind: backend.SourceSnapshot, ID: snap.ID}})
	if !errors.Is(err, backend.ErrOutOfRange) {
		t.Fatalf("restore smaller than its snapshot: want ErrOutOfRange, got %v", err)
	}
	if got := fileSum(t, filepath.Join(p.VolumePath(restored.ID), "data")); got != sum {
		t.Fatalf("restored data differs: %s != %s", got, sum)
	}
	// The restore is writable and independent of the snapshot.
	writePattern(t, filepath.Join(p.VolumePath(restored.ID), "new"), 1*backend.MiB, 3)

	clone := newVolume(t, p, "clone", 0, backend.Source{Kind: backend.SourceVolume, ID: src.ID})
	if clone.SizeBytes != src.SizeBytes {
		t.Fatalf("clone size %d, source %d", clone.SizeBytes, src.SizeBytes)
	}
	if got, want := fileSum(t, filepath.Join(p.VolumePath(clone.ID), "data")), fileSum(t, filepath.Join(p.VolumePath(src.ID), "data")); got != want {
		t.Fatal("clone data differs from its source")
	}

	// Deleting the source leaves snapshot, restore and clone intact.
	if err := p.DeleteVolume(ctx, src.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := p.GetSnapshot(ctx, snap.ID); err != nil {
		t.Fatalf("snapshot lost with its source: %v", err)
	}
	if got := fileSum(t, filepath.Join(p.VolumePath(restored.ID), "data")); got != sum {
		t.Fatal("restored data changed after the source was deleted")
	}
	// Snapshots are read-only.
	if err := os.WriteFile(filepath.Join(p.MountPath(), "csi-thin", "snapshots", snap.ID, "x"), []byte("x"), 0o600); err == nil {
		t.Fatal("wrote into a snapshot")
	}
	if err := p.DeleteSnapshot(ctx, snap.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := p.GetSnapshot(ctx, snap.ID); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("deleted snapshot: %v", err)
	}
}

// TestCloneIsThin is the point of the project: a clone of a volume holding
// 1 GiB adds at most 1 MiB to the pool, and the clone is charged only for
// what it writes itself.
func TestCloneIsThin(t *testing.T) {
	ctx := context.Background()
	p := btrfstest.NewPool(t, 4*backend.GiB, btrfs.Config{})
	src := newVolume(t, p, "src", 2*backend.GiB, backend.Source{})
	writePattern(t, filepath.Join(p.VolumePath(src.ID), "data"), 1*backend.GiB, 7)

	before, err := p.AllocatedBytes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := p.CreateSnapshot(ctx, backend.SnapshotRequest{ID: backend.SnapshotIDFor("s"), Name: "s", SourceVolumeID: src.ID})
	if err != nil {
		t.Fatal(err)
	}
	afterSnap, _ := p.AllocatedBytes(ctx)
	clone := newVolume(t, p, "clone", 0, backend.Source{Kind: backend.SourceVolume, ID: src.ID})
	afterClone, _ := p.AllocatedBytes(ctx)
	t.Logf("pool allocation: +%d bytes for the snapshot, +%d for the clone (source holds 1 GiB)", afterSnap-before, afterClone-afterSnap)
	if d := afterSnap - before; d > backend.MiB {
		t.Errorf("snapshot of 1 GiB added %d bytes, want ≤ 1 MiB", d)
	}
	if d := afterClone - afterSnap; d > backend.MiB {
		t.Errorf("clone of 1 GiB added %d bytes, want ≤ 1 MiB", d)
	}
	_ = snap

	// The clone is charged for its own writes only (simple quotas).
	writePattern(t, filepath.Join(p.VolumePath(clone.ID), "more"), 64*backend.MiB, 8)
	afterWrite, _ := p.AllocatedBytes(ctx)
	if d := afterWrite - afterClone; d < 60*backend.MiB || d > 80*backend.MiB {
		t.Errorf("writing 64 MiB into the clone added %d bytes", d)
	}
	if p.QuotaMode() == btrfs.QuotaSimple {
		u, err := p.Usage(ctx, clone.ID)
		if err != nil {
			t.Fatal(err)
		}
		if u.UsedBytes < 60*backend.MiB || u.UsedBytes > 80*backend.MiB {
			t.Errorf("clone charged %d bytes after writing 64 MiB; want ≈ 64 MiB", u.UsedBytes)
		}
	}
}

func TestExpand(t *testing.T) {
	ctx := context.Background()
	p := btrfstest.NewPool(t, 2*backend.GiB, btrfs.Config{})
	v := newVolume(t, p, "grow", 16*backend.MiB, backend.Source{})
	if _, err := p.CreateSnapshot(ctx, backend.SnapshotRequest{ID: backend.SnapshotIDFor("g"), Name: "g", SourceVolumeID: v.ID}); err != nil {
		t.Fatal(err)
	}
	grown, err := p.ExpandVolume(ctx, v.ID, 64*backend.MiB)
	if err != nil {
		t.Fatal(err)
	}
	if grown.SizeBytes != 64*backend.MiB {
		t.Fatalf("expanded to %d", grown.SizeBytes)
	}
	// 32 MiB now fits where 16 MiB was the limit.
	writePattern(t, filepath.Join(p.VolumePath(v.ID), "f"), 32*backend.MiB, 1)
	// Shrinking is a no-op, not an error.
	same, err := p.ExpandVolume(ctx, v.ID, 8*backend.MiB)
	if err != nil || same.SizeBytes != 64*backend.MiB {
		t.Fatalf("shrink request: %v %+v", err, same)
	}
	if _, err := p.ExpandVolume(ctx, backend.VolumeIDFor("nope"), 64*backend.MiB); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("expand missing: %v", err)
	}
}

func TestCapacityAndOverprovision(t *testing.T) {
	ctx := context.Background()
	p := btrfstest.NewPool(t, 1*backend.GiB, btrfs.Config{Overprovision: 2})
	c, err := p.Capacity(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if c.TotalBytes <= 0 || c.AvailableBytes <= c.TotalBytes || c.MaximumVolumeBytes != 2*c.TotalBytes {
		t.Fatalf("capacity with overprovision 2: %+v", c)
	}
	v := newVolume(t, p, "half", c.AvailableBytes/2, backend.Source{})
	c2, _ := p.Capacity(ctx, "")
	if c2.ProvisionedBytes != v.SizeBytes || c2.AvailableBytes != c.AvailableBytes-v.SizeBytes {
		t.Fatalf("capacity after one volume: %+v (volume %d)", c2, v.SizeBytes)
	}
	_, err = p.CreateVolume(ctx, backend.VolumeRequest{ID: backend.VolumeIDFor("too-big"), Name: "too-big", RequiredBytes: c2.AvailableBytes + backend.MiB})
	if !errors.Is(err, backend.ErrNoSpace) {
		t.Fatalf("over-provisioning: want ErrNoSpace, got %v", err)
	}
	_, err = p.CreateVolume(ctx, backend.VolumeRequest{ID: backend.VolumeIDFor("huge"), Name: "huge", RequiredBytes: 100 * c.TotalBytes})
	if !errors.Is(err, backend.ErrOutOfRange) {
		t.Fatalf("larger than the pool can ever hold: want ErrOutOfRange, got %v", err)
	}
	if got, _ := p.ListVolumes(ctx); len(got) != 1 {
		t.Fatalf("a refused create left a volume behind: %d volumes", len(got))
	}
	// The provisioned total is kept in memory: it must match the records
	// after an expand, across a reopen, and after a delete.
	if _, err := p.ExpandVolume(ctx, v.ID, v.SizeBytes+64*backend.MiB); err != nil {
		t.Fatal(err)
	}
	reopened, err := btrfs.Open(ctx, btrfs.Config{PoolPath: p.MountPath(), NodeName: "test-node", Overprovision: 2})
	if err != nil {
		t.Fatal(err)
	}
	for _, pool := range []*btrfs.Pool{p, reopened} {
		if c, _ := pool.Capacity(ctx, ""); c.ProvisionedBytes != v.SizeBytes+64*backend.MiB {
			t.Fatalf("provisioned %d after expand, want %d", c.ProvisionedBytes, v.SizeBytes+64*backend.MiB)
		}
	}
	if err := p.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	if c, _ := p.Capacity(ctx, ""); c.ProvisionedBytes != 0 || c.AvailableBytes != c.MaximumVolumeBytes {
		t.Fatalf("capacity after deleting the only volume: %+v", c)
	}
}

func TestRefusesWhatItCannotServe(t *testing.T) {
	ctx := context.Background()
	p := btrfstest.NewPool(t, 1*backend.GiB, btrfs.Config{})
	cases := []struct {
		name string
		req  backend.VolumeRequest
		want error
	}{
		{"block access", backend.VolumeRequest{ID: backend.VolumeIDFor("b"), AccessType: backend.AccessBlock}, backend.ErrUnsupported},
		{"ext4 on btrfs", backend.VolumeRequest{ID: backend.VolumeIDFor("e"), FsType: "ext4"}, backend.ErrUnsupported},
		{"malformed id", backend.VolumeRequest{ID: "../../etc"}, backend.ErrInvalid},
		{"other node", backend.VolumeRequest{ID: backend.VolumeIDFor("n"), Node: "elsewhere"}, backend.ErrPrecondition},
		{"missing snapshot", backend.VolumeRequest{ID: backend.VolumeIDFor("m"), Source: backend.Source{Kind: backend.SourceSnapshot, ID: backend.SnapshotIDFor("none")}}, backend.ErrNotFound},
		{"missing volume", backend.VolumeRequest{ID: backend.VolumeIDFor("m2"), Source: backend.Source{Kind: backend.SourceVolume, ID: backend.VolumeIDFor("none")}}, backend.ErrNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := p.CreateVolume(ctx, tc.req); !errors.Is(err, tc.want) {
				t.Fatalf("want %v, got %v", tc.want, err)
			}
		})
	}
	if vols, _ := p.ListVolumes(ctx); len(vols) != 0 {
		t.Fatalf("refused requests left %d volumes", len(vols))
	}
	if entries, _ := os.ReadDir(filepath.Join(p.MountPath(), "csi-thin", "staging")); len(entries) != 0 {
		t.Fatalf("refused requests left staging entries: %v", entries)
	}
}

// TestReopenFindsEverything restarts the pool on the same filesystem: the
// subvolume layout and records are the only state, so all comes back.
func TestReopenFindsEverything(t *testing.T) {
	ctx := context.Background()
	p := btrfstest.NewPool(t, 2*backend.GiB, btrfs.Config{})
	v := newVolume(t, p, "keep", 64*backend.MiB, backend.Source{})
	s, err := p.CreateSnapshot(ctx, backend.SnapshotRequest{ID: backend.SnapshotIDFor("keep"), Name: "keep", SourceVolumeID: v.ID})
	if err != nil {
		t.Fatal(err)
	}
	// Leave a half-made create behind, as a crash would.
	stale := filepath.Join(p.MountPath(), "csi-thin", "staging", backend.VolumeIDFor("half"))
	if out, err := exec.Command("btrfs", "subvolume", "create", stale).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	again, err := btrfs.Open(ctx, btrfs.Config{PoolPath: p.MountPath(), NodeName: "test-node"})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := again.GetVolume(ctx, v.ID); err != nil || got.SizeBytes != v.SizeBytes {
		t.Fatalf("volume after reopen: %+v %v", got, err)
	}
	if got, err := again.GetSnapshot(ctx, s.ID); err != nil || got.SourceVolumeID != v.ID {
		t.Fatalf("snapshot after reopen: %+v %v", got, err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("half-made subvolume survived recovery: %v", err)
	}
}

// TestQuotaModes documents the difference between the two accounting
// modes on one fact: what a fresh clone of a volume holding 256 MiB is
// charged. Simple quotas charge extents to the subvolume that wrote them,
// so the clone starts near zero; classic qgroups count everything the
// clone references, shared or not.
func TestQuotaModes(t *testing.T) {
	for _, mode := range []btrfs.QuotaMode{btrfs.QuotaSimple, btrfs.QuotaFull} {
		t.Run(string(mode), func(t *testing.T) {
			ctx := context.Background()
			p := btrfstest.NewPool(t, 2*backend.GiB, btrfs.Config{QuotaMode: mode})
			if p.QuotaMode() != mode {
				t.Fatalf("pool runs %s, asked for %s", p.QuotaMode(), mode)
			}
			src := newVolume(t, p, "src", 512*backend.MiB, backend.Source{})
			writePattern(t, filepath.Join(p.VolumePath(src.ID), "data"), 256*backend.MiB, 1)
			clone := newVolume(t, p, "clone", 0, backend.Source{Kind: backend.SourceVolume, ID: src.ID})
			if _, err := p.AllocatedBytes(ctx); err != nil { // commits the transaction
				t.Fatal(err)
			}
			u, err := p.Usage(ctx, clone.ID)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s quotas: fresh clone of 256 MiB charged %d bytes", mode, u.UsedBytes)
			switch mode {
			case btrfs.QuotaSimple:
				if u.UsedBytes > backend.MiB {
					t.Errorf("simple quota charged the clone %d bytes for shared data", u.UsedBytes)
				}
			case btrfs.QuotaFull:
				if u.UsedBytes < 250*backend.MiB {
					t.Errorf("full qgroups charged the clone only %d bytes", u.UsedBytes)
				}
			}
		})
	}
}
