package btrfs_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/btrfs"
	"github.com/csi-thin/csi-thin/pkg/btrfs/btrfstest"
	"github.com/csi-thin/csi-thin/pkg/command"
	"github.com/csi-thin/csi-thin/pkg/volstream"
)

// These tests run on real btrfs pools on loop devices: a sending pool and
// a receiving pool, as two nodes would have.

func newSnapshot(t *testing.T, p *btrfs.Pool, name, volumeID string) *backend.Snapshot {
	t.Helper()
	s, err := p.CreateSnapshot(context.Background(), backend.SnapshotRequest{ID: backend.SnapshotIDFor(name), Name: name, SourceVolumeID: volumeID})
	if err != nil {
		t.Fatalf("snapshot %s: %v", name, err)
	}
	return s
}

// send streams a snapshot into memory.
func send(t *testing.T, p *btrfs.Pool, id, parent string) ([]byte, backend.SendStats) {
	t.Helper()
	var buf bytes.Buffer
	st, err := p.SendSnapshot(context.Background(), id, parent, &buf)
	if err != nil {
		t.Fatalf("send %s (parent %q): %v", id, parent, err)
	}
	if st.StreamBytes != int64(buf.Len()) {
		t.Fatalf("send reported %d stream bytes, wrote %d", st.StreamBytes, buf.Len())
	}
	return buf.Bytes(), st
}

// treeSums maps every file, directory and symlink under root (relative
// path) to its content's sha256, "dir" or the link target.
func treeSums(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		switch {
		case d.Type()&os.ModeSymlink != 0:
			target, err := os.Readlink(path)
			out[rel] = "link:" + target
			return err
		case d.IsDir():
			out[rel] = "dir"
		default:
			out[rel] = fileSum(t, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameTree(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d entries, want %d: %v vs %v", what, len(got), len(want), got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("%s: %s is %q, want %q", what, k, got[k], v)
		}
	}
}

func allocatedBlocks(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// TestStreamRoundTrip sends a 4 GiB volume holding 257 MiB (256 MiB in
// two files and 1 MiB written into the middle of a 1 GiB sparse file)
// from one pool and receives it into another: the stream carries the data
// written, not the volume's size, every file comes back with the same
// checksum, holes stay holes, and the new volume has its limit. Then an
// incremental of 16 MiB of changes sends about 16 MiB and rebuilds the
// changed tree.
func TestStreamRoundTrip(t *testing.T) {
	ctx := context.Background()
	src := btrfstest.NewPool(t, 2*backend.GiB, btrfs.Config{NodeName: "node-a"})
	dst := btrfstest.NewPool(t, 2*backend.GiB, btrfs.Config{NodeName: "node-b"})

	v := newVolume(t, src, "data", 4*backend.GiB, backend.Source{})
	dir := src.VolumePath(v.ID)
	writePattern(t, filepath.Join(dir, "a"), 192*backend.MiB, 1)
	if err := os.MkdirAll(filepath.Join(dir, "sub", "deeper"), 0o755); err != nil {
		t.Fatal(err)
	}
	writePattern(t, filepath.Join(dir, "sub", "deeper", "b"), 64*backend.MiB, 2)
	if err := os.Symlink("sub/deeper/b", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	sparse, err := os.Create(filepath.Join(dir, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	if err := sparse.Truncate(backend.GiB); err != nil {
		t.Fatal(err)
	}
	if _, err := sparse.WriteAt(bytes.Repeat([]byte{0xA5}, int(backend.MiB)), 512*backend.MiB); err != nil {
		t.Fatal(err)
	}
	sparse.Close()
	const written = 257 * backend.MiB
	want1 := treeSums(t, dir)
	s1 := newSnapshot(t, src, "s1", v.ID)

	full, st := send(t, src, s1.ID, "")
	t.Logf("full stream of a %d MiB volume holding %d MiB: %d bytes (payload %d, allocated %d)",
		v.SizeBytes>>20, written>>20, st.StreamBytes, st.PayloadBytes, st.AllocatedBytes)
	if st.AllocatedBytes < written || st.AllocatedBytes > written+backend.MiB {
		t.Fatalf("allocated bytes %d, the volume holds %d", st.AllocatedBytes, written)
	}
	// The stream carries the data and little else: at most 1% + 1 MiB of
	// btrfs send metadata and framing on top of what is allocated.
	if limit := st.AllocatedBytes + st.AllocatedBytes/100 + backend.MiB; st.StreamBytes > limit || st.StreamBytes < written {
		t.Fatalf("full stream is %d bytes for %d allocated (want between %d and %d)", st.StreamBytes, st.AllocatedBytes, written, limit)
	}

	got, err := dst.ReceiveVolume(ctx, backend.VolumeRequest{ID: backend.VolumeIDFor("copy"), Name: "copy"}, bytes.NewReader(full))
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	if got.SizeBytes != v.SizeBytes || got.Node != "node-b" {
		t.Fatalf("received volume %+v, want the source's size %d on node-b", got, v.SizeBytes)
	}
	copyDir := dst.VolumePath(got.ID)
	sameTree(t, "received volume", treeSums(t, copyDir), want1)
	if b := allocatedBlocks(t, filepath.Join(copyDir, "sparse")); b > 2*backend.MiB {
		t.Fatalf("the sparse file's hole was filled: %d bytes allocated", b)
	}
	// Writable, and limited like any volume: its data is charged to it.
	if err := os.WriteFile(filepath.Join(copyDir, "new"), []byte("x"), 0o644); err != nil {
		t.Fatalf("write into the received volume: %v", err)
	}
	// Quota counters move when the transaction commits.
	if _, err := (&command.Host{}).Run(ctx, "btrfs", "filesystem", "sync", dst.MountPath()); err != nil {
		t.Fatal(err)
	}
	u, err := dst.Usage(ctx, got.ID)
	if err != nil {
		t.Fatal(err)
	}
	if u.CapacityBytes != v.SizeBytes || u.UsedBytes < written {
		t.Fatalf("received volume usage %+v: want capacity %d and at least %d used", u, v.SizeBytes, written)
	}

	// Incremental: 16 MiB new, one file deleted, one renamed.
	writePattern(t, filepath.Join(dir, "c"), 16*backend.MiB, 3)
	if err := os.Remove(filepath.Join(dir, "a")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "sub", "deeper", "b"), filepath.Join(dir, "sub", "b2")); err != nil {
		t.Fatal(err)
	}
	want2 := treeSums(t, dir)
	s2 := newSnapshot(t, src, "s2", v.ID)

	// The receiver needs s1 as a snapshot to apply an incremental to.
	if _, err := dst.ReceiveVolume(ctx, backend.VolumeRequest{ID: backend.VolumeIDFor("inc")}, bytes.NewReader(sendIncremental(t, src, s2.ID, s1.ID, nil))); !errors.Is(err, backend.ErrPrecondition) {
		t.Fatalf("incremental without its parent: want ErrPrecondition, got %v", err)
	}
	if _, err := dst.ReceiveSnapshot(ctx, s1.ID, "s1", bytes.NewReader(full)); err != nil {
		t.Fatalf("receive s1 as a snapshot: %v", err)
	}
	var st2 backend.SendStats
	inc := sendIncremental(t, src, s2.ID, s1.ID, &st2)
	t.Logf("incremental stream of 16 MiB of changes: %d bytes", st2.StreamBytes)
	if st2.StreamBytes < 16*backend.MiB || st2.StreamBytes > 17*backend.MiB {
		t.Fatalf("incremental stream is %d bytes for 16 MiB of changes", st2.StreamBytes)
	}
	v2, err := dst.ReceiveVolume(ctx, backend.VolumeRequest{ID: backend.VolumeIDFor("inc"), Name: "inc"}, bytes.NewReader(inc))
	if err != nil {
		t.Fatalf("receive incremental: %v", err)
	}
	sameTree(t, "volume from the incremental", treeSums(t, dst.VolumePath(v2.ID)), want2)

	// A received snapshot restores like a local one, and is a parent for
	// the next incremental.
	rs2, err := dst.ReceiveSnapshot(ctx, s2.ID, "s2", bytes.NewReader(inc))
	if err != nil {
		t.Fatalf("receive s2 as a snapshot: %v", err)
	}
	restored := newVolume(t, dst, "restored", 0, backend.Source{Kind: backend.SourceSnapshot, ID: rs2.ID})
	sameTree(t, "restore of the received snapshot", treeSums(t, dst.VolumePath(restored.ID)), want2)
	snaps, err := dst.ListSnapshots(ctx)
	if err != nil || len(snaps) != 2 {
		t.Fatalf("receiving pool's snapshots: %v %v", snaps, err)
	}
	assertNoLeftovers(t, dst)
	assertNoLeftovers(t, src)

	// Deleting everything received takes its qgroups along, the
	// received volumes' scratch-born ones included.
	vols, err := dst.ListVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vols {
		if err := dst.DeleteVolume(ctx, v.ID); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range snaps {
		if err := dst.DeleteSnapshot(ctx, s.ID); err != nil {
			t.Fatal(err)
		}
	}
	assertNoLeftovers(t, dst, true)
}

func sendIncremental(t *testing.T, p *btrfs.Pool, id, parent string, st *backend.SendStats) []byte {
	t.Helper()
	b, s := send(t, p, id, parent)
	if st != nil {
		*st = s
	}
	return b
}

// assertNoLeftovers: no receive scratch, nothing staged, a record for
// every subvolume of the layout and the reverse, and (once the cleaner
// ran) no qgroup without its subvolume. emptyLevelZero tolerates empty
// 0/<id> qgroups of deleted subvolumes, which DeleteVolume and
// DeleteSnapshot leave when the kernel keeps them (they charge nothing;
// docs/reliability.md).
func assertNoLeftovers(t *testing.T, p *btrfs.Pool, emptyLevelZero ...bool) {
	t.Helper()
	ctx := context.Background()
	base := filepath.Join(p.MountPath(), "csi-thin")
	for _, d := range []string{"receiving", "staging"} {
		if e, err := os.ReadDir(filepath.Join(base, d)); err != nil || len(e) != 0 {
			t.Fatalf("%s holds %v (%v)", d, e, err)
		}
	}
	p.Settle()
	host := &command.Host{}
	// The commit wakes the cleaner, which drops deleted subvolumes.
	if _, err := host.Run(ctx, "btrfs", "filesystem", "sync", p.MountPath()); err != nil {
		t.Fatal(err)
	}
	if _, err := host.Run(ctx, "btrfs", "subvolume", "sync", p.MountPath()); err != nil {
		t.Fatal(err)
	}
	res, err := host.Run(ctx, "btrfs", "subvolume", "list", p.MountPath())
	if err != nil {
		t.Fatal(err)
	}
	live := map[string]bool{"5": true}
	var subvols []string
	for _, line := range strings.Split(strings.TrimSpace(string(res.Stdout)), "\n") {
		if f := strings.Fields(line); len(f) >= 9 {
			live[f[1]] = true
			subvols = append(subvols, f[8])
		}
	}
	for _, path := range subvols {
		dir, id := filepath.Split(path)
		if dir != "csi-thin/volumes/" && dir != "csi-thin/snapshots/" {
			t.Fatalf("subvolume %s outside the layout", path)
		}
		if _, err := os.Stat(filepath.Join(base, "meta", id+".json")); err != nil {
			t.Fatalf("subvolume %s has no record: %v", path, err)
		}
	}
	metas, _ := os.ReadDir(filepath.Join(base, "meta"))
	if len(metas) != len(subvols) {
		t.Fatalf("%d records for %d subvolumes", len(metas), len(subvols))
	}
	// A received volume's limit is on the qgroup of the scratch it was
	// received in: its record names it.
	named := map[string]bool{}
	for _, m := range metas {
		var rec struct{ Qgroup string }
		b, err := os.ReadFile(filepath.Join(base, "meta", m.Name()))
		if err == nil {
			err = json.Unmarshal(b, &rec)
		}
		if err != nil {
			t.Fatal(err)
		}
		named[rec.Qgroup] = true
	}
	// Destroys what has emptied by now (as every delete and Open do).
	pending := map[string]bool{}
	for _, q := range p.PendingQgroups() {
		pending[q] = true
	}
	res, err = host.Run(ctx, "btrfs", "qgroup", "show", "-pc", "--raw", p.MountPath())
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(res.Stdout), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || !strings.Contains(f[0], "/") || strings.HasPrefix(f[0], "-") {
			continue
		}
		_, n, _ := strings.Cut(f[0], "/")
		if len(emptyLevelZero) > 0 && emptyLevelZero[0] && strings.HasPrefix(f[0], "0/") && f[1] == "0" {
			continue
		}
		if !live[n] && !pending[f[0]] && !named[f[0]] {
			t.Fatalf("qgroup %s outlived its subvolume (pending %v):\n%s", f[0], pending, res.Stdout)
		}
	}
}

// TestReceiveRefusesBadStreams: a stream that is corrupt, cut short,
// reordered, of the wrong kind or of a snapshot this pool cannot apply is
// refused with a precise error, and leaves no subvolume, record, scratch
// or qgroup behind, though btrfs receive had already applied part of it.
func TestReceiveRefusesBadStreams(t *testing.T) {
	ctx := context.Background()
	src := btrfstest.NewPool(t, 2*backend.GiB, btrfs.Config{NodeName: "node-a"})
	dst := btrfstest.NewPool(t, 2*backend.GiB, btrfs.Config{NodeName: "node-b"})
	v := newVolume(t, src, "data", 256*backend.MiB, backend.Source{})
	writePattern(t, filepath.Join(src.VolumePath(v.ID), "f"), 8*backend.MiB, 7)
	writePattern(t, filepath.Join(src.VolumePath(v.ID), "g"), 8*backend.MiB, 8)
	s1 := newSnapshot(t, src, "s1", v.ID)
	good, _ := send(t, src, s1.ID, "")
	writePattern(t, filepath.Join(src.VolumePath(v.ID), "h"), backend.MiB, 9)
	s2 := newSnapshot(t, src, "s2", v.ID)
	inc, _ := send(t, src, s2.ID, s1.ID)

	edit := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	frame := 8 + 2 + 2 + 16 + 2 + len(s1.ID) + 4 // header length: the first frame starts here
	var lvm bytes.Buffer
	if w, err := volstream.NewWriter(&lvm, volstream.Header{Kind: volstream.KindLVMThin, VolumeBytes: 1 << 20, SnapshotID: s1.ID}); err != nil {
		t.Fatal(err)
	} else if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		stream []byte
		want   []error
	}{
		{"bit flipped late in the data", edit(func(b []byte) []byte { b[len(b)-4096] ^= 1; return b }), []error{backend.ErrInvalid, volstream.ErrChecksum}},
		{"bit flipped in the first frame", edit(func(b []byte) []byte { b[frame+100] ^= 1; return b }), []error{backend.ErrInvalid, volstream.ErrChecksum}},
		{"cut in half", good[:len(good)/2], []error{backend.ErrInvalid, volstream.ErrTruncated}},
		{"trailer missing", good[:len(good)-49], []error{backend.ErrInvalid, volstream.ErrTruncated}},
		{"trailer digest wrong", edit(func(b []byte) []byte { b[len(b)-1] ^= 1; return b }), []error{backend.ErrInvalid, volstream.ErrDigest}},
		{"frames reordered", edit(func(b []byte) []byte {
			// The first two frames are full (1 MiB) frames: swap them.
			n := 25 + volstream.DefaultFrameBytes
			f0 := bytes.Clone(b[frame : frame+n])
			copy(b[frame:], b[frame+n:frame+2*n])
			copy(b[frame+n:], f0)
			return b
		}), []error{backend.ErrInvalid, volstream.ErrOrder}},
		{"a raw btrfs send stream", []byte("btrfs-stream\x00\x01\x00\x00\x00"), []error{backend.ErrInvalid, volstream.ErrNotAStream}},
		{"an LVM thin stream", lvm.Bytes(), []error{backend.ErrInvalid}},
		{"incremental without its parent here", inc, []error{backend.ErrPrecondition}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := backend.VolumeIDFor(tc.name)
			_, err := dst.ReceiveVolume(ctx, backend.VolumeRequest{ID: id, Name: tc.name}, bytes.NewReader(tc.stream))
			for _, want := range tc.want {
				if !errors.Is(err, want) {
					t.Fatalf("want %v, got %v", want, err)
				}
			}
			if _, err := dst.GetVolume(ctx, id); !errors.Is(err, backend.ErrNotFound) {
				t.Fatalf("refused volume exists: %v", err)
			}
			// Also as a snapshot, through the other consumer.
			sid := backend.SnapshotIDFor(tc.name)
			if _, err := dst.ReceiveSnapshot(ctx, sid, tc.name, bytes.NewReader(tc.stream)); !errors.Is(err, tc.want[len(tc.want)-1]) {
				t.Fatalf("as a snapshot: want %v, got %v", tc.want[len(tc.want)-1], err)
			}
			assertNoLeftovers(t, dst)
		})
	}
	// The good stream still goes in after all that.
	if _, err := dst.ReceiveVolume(ctx, backend.VolumeRequest{ID: backend.VolumeIDFor("ok")}, bytes.NewReader(good)); err != nil {
		t.Fatalf("the good stream: %v", err)
	}
	assertNoLeftovers(t, dst)
}

// TestRestartRemovesUnfinishedReceive leaves what a crash in the middle
// of each receive would, and opens the pool again: a volume's scratch
// subvolume with its limit's qgroup and half a stream received into it; a
// snapshot's marker with the subvolume btrfs receive made under its sent
// name; another's with the subvolume renamed to its ID but no record.
// All of it is gone after the restart, qgroups included, and a snapshot
// with a record that shares the sent name is left alone.
func TestRestartRemovesUnfinishedReceive(t *testing.T) {
	ctx := context.Background()
	src := btrfstest.NewPool(t, 2*backend.GiB, btrfs.Config{NodeName: "node-a"})
	dst := btrfstest.NewPool(t, 2*backend.GiB, btrfs.Config{NodeName: "node-b"})
	v := newVolume(t, src, "data", 256*backend.MiB, backend.Source{})
	writePattern(t, filepath.Join(src.VolumePath(v.ID), "f"), 32*backend.MiB, 7)
	s1 := newSnapshot(t, src, "s1", v.ID)
	host := &command.Host{}
	var raw bytes.Buffer
	if _, err := host.Stream(ctx, nil, &raw, "btrfs", "send", "-q", filepath.Join(src.MountPath(), "csi-thin", "snapshots", s1.ID)); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dst.MountPath(), "csi-thin")
	run := func(args ...string) string {
		t.Helper()
		res, err := host.Run(ctx, "btrfs", args...)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(res.Stdout))
	}
	// A volume's receive cut off half way through btrfs receive.
	scratch := filepath.Join(base, "receiving", backend.VolumeIDFor("half"))
	run("subvolume", "create", scratch)
	sid := run("inspect-internal", "rootid", scratch)
	run("qgroup", "create", "1/"+sid, dst.MountPath())
	run("qgroup", "assign", "0/"+sid, "1/"+sid, dst.MountPath())
	if err := os.WriteFile(filepath.Join(base, "reap", "1_"+sid), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := host.Stream(ctx, bytes.NewReader(raw.Bytes()[:raw.Len()/2]), nil, "btrfs", "receive", scratch); err == nil {
		t.Log("btrfs receive accepted half a stream (it stops at a command boundary)")
	}
	// Two snapshot receives: one cut off during btrfs receive (under the
	// sent name), one after the rename to its ID.
	early, late := backend.SnapshotIDFor("early"), backend.SnapshotIDFor("late")
	for _, id := range []string{late, early} {
		if err := os.WriteFile(filepath.Join(base, "receiving", id), []byte(s1.ID), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := host.Stream(ctx, bytes.NewReader(raw.Bytes()), nil, "btrfs", "receive", filepath.Join(base, "snapshots")); err != nil {
			t.Fatal(err)
		}
		if id == late {
			if err := os.Rename(filepath.Join(base, "snapshots", s1.ID), filepath.Join(base, "snapshots", late)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := len(names(t, filepath.Join(base, "receiving"))); n != 3 {
		t.Fatalf("set-up: %d unfinished receives", n)
	}
	// The restart: the same pool opened again.
	again, err := btrfs.Open(ctx, btrfs.Config{PoolPath: dst.MountPath(), NodeName: "node-b"})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{early, late, s1.ID} {
		if _, err := os.Lstat(filepath.Join(base, "snapshots", id)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("snapshot subvolume %s of an unfinished receive is still there: %v", id, err)
		}
	}
	assertNoLeftovers(t, again)

	// A real snapshot under the sent name is not an unfinished receive's.
	full, _ := send(t, src, s1.ID, "")
	if _, err := again.ReceiveSnapshot(ctx, s1.ID, "s1", bytes.NewReader(full)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(base, "receiving", early), []byte(s1.ID), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := btrfs.Open(ctx, btrfs.Config{PoolPath: dst.MountPath(), NodeName: "node-b"}); err != nil {
		t.Fatal(err)
	}
	if _, err := again.GetSnapshot(ctx, s1.ID); err != nil {
		t.Fatalf("the received snapshot under the sent name: %v", err)
	}
	assertNoLeftovers(t, again)
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// A stream sent into a writer that fails is not finished: no trailer, so
// a receiver would refuse what arrived.
func TestSendIntoFailingWriter(t *testing.T) {
	src := btrfstest.NewPool(t, 2*backend.GiB, btrfs.Config{})
	v := newVolume(t, src, "data", 256*backend.MiB, backend.Source{})
	writePattern(t, filepath.Join(src.VolumePath(v.ID), "f"), 8*backend.MiB, 7)
	s1 := newSnapshot(t, src, "s1", v.ID)
	if _, err := src.SendSnapshot(context.Background(), s1.ID, "", &limitedWriter{n: 3 << 20}); err == nil {
		t.Fatal("send into a writer that fails after 3 MiB succeeded")
	}
	if _, err := src.SendSnapshot(context.Background(), backend.SnapshotIDFor("nope"), "", io.Discard); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("send of a missing snapshot: want ErrNotFound, got %v", err)
	}
}

type limitedWriter struct{ n int }

func (w *limitedWriter) Write(p []byte) (int, error) {
	if len(p) > w.n {
		return 0, errors.New("connection reset")
	}
	w.n -= len(p)
	return len(p), nil
}
