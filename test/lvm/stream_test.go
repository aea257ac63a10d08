package lvm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/lvmthin"
	"github.com/csi-thin/csi-thin/pkg/volstream"
)

// The LVM thin producer (SendSnapshot) on a real pool: what the stream
// carries is read back through volstream.Reader and laid into a sparse
// file, which must hash like the snapshot's volume, while the payload stays
// within what was written (the mapped chunks), not the volume's size.

const (
	streamVolBytes = 512 * backend.MiB
	// streamWritten is what streamSpans write of the volume.
	streamWritten = 40 * backend.MiB
)

// streamSpans are the stream tests' first writes: three ranges of the
// volume, the start, the middle and the end, with holes between.
var streamSpans = []span{
	{0, 32 * backend.MiB, 1},
	{300 * backend.MiB, 4 * backend.MiB, 2},
	{streamVolBytes - 4*backend.MiB, 4 * backend.MiB, 3},
}

// streamPool is a private pool vg: the tests reserve its metadata
// snapshot behind the backend's back, which must not disturb other tests,
// and so they can run in parallel with the rest.
func streamPool(t *testing.T, vg string) (*lvmthin.Backend, lvmthin.Config) {
	t.Helper()
	var cfg lvmthin.Config
	b := loopPool(t, vg, 3*backend.GiB, func(c *lvmthin.Config) { cfg = *c })
	return b, cfg
}

// writeAt writes n random bytes (from seed) at off of dev.
func writeAt(t *testing.T, dev string, off, n int64, seed uint64) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := make([]byte, n+8)
	r := rand.New(rand.NewPCG(seed, seed))
	for i := int64(0); i < n; i += 8 {
		binary.LittleEndian.PutUint64(p[i:], r.Uint64())
	}
	p = p[:n]
	if _, err := f.WriteAt(p, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// span is a range of a volume that writeAt fills with the bytes of seed.
type span struct {
	off, n int64
	seed   uint64
}

// blockVolume makes block volume "src" of size bytes on b, writes spans
// into it (what lies between them stays unmapped) and returns its ID and
// device.
func blockVolume(t *testing.T, b *lvmthin.Backend, size int64, spans ...span) (id, dev string) {
	t.Helper()
	id = volID(t, "src")
	if _, err := b.CreateVolume(t.Context(), backend.VolumeRequest{ID: id, RequiredBytes: size, AccessType: backend.AccessBlock}); err != nil {
		t.Fatal(err)
	}
	dev = target(t, b, id)
	for _, s := range spans {
		writeAt(t, dev, s.off, s.n, s.seed)
	}
	return id, dev
}

// discard unmaps [off, off+n) of dev (BLKDISCARD).
func discard(t *testing.T, dev string, off, n int64) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rng := [2]uint64{uint64(off), uint64(n)}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKDISCARD, uintptr(unsafe.Pointer(&rng[0]))); e != 0 {
		t.Fatalf("BLKDISCARD %s [%d, +%d): %v", dev, off, n, e)
	}
}

// apply lays a verified stream into file f and returns its header and
// payload bytes; any stream error fails the test.
func apply(t *testing.T, f *os.File, stream []byte) (volstream.Header, int64) {
	t.Helper()
	sr, err := volstream.NewReader(bytes.NewReader(stream))
	if err != nil {
		t.Fatal(err)
	}
	for {
		c, err := sr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("stream refused: %v", err)
		}
		if _, err := f.WriteAt(c.Data, c.Offset); err != nil {
			t.Fatal(err)
		}
	}
	return sr.Header(), sr.PayloadBytes()
}

func snapshot(t *testing.T, b *lvmthin.Backend, vol, name string) string {
	t.Helper()
	id := snapID(t, name)
	if _, err := b.CreateSnapshot(t.Context(), backend.SnapshotRequest{ID: id, SourceVolumeID: vol}); err != nil {
		t.Fatal(err)
	}
	return id
}

func heldMetadataRoot(t *testing.T, vg string) bool {
	t.Helper()
	s, err := lvmthin.ParseThinPoolStatus([]byte(run(t, "dmsetup", "status", lvmthin.DMName(vg, "pool", "tpool"))))
	if err != nil {
		t.Fatal(err)
	}
	return s.HeldMetadataRoot
}

// TestSendSnapshotLVM: a full send of a 512 MiB volume holding 40 MiB
// carries those 40 MiB (the mapped chunks) and rebuilds the volume
// exactly; an incremental send after a rewrite, an addition and a discard
// carries only the changed chunks (the discarded one as zeros) and
// rebuilds the new state on top of the first; no metadata snapshot stays
// reserved, and one left reserved (a crashed send) is released by the
// next send of a restarted backend.
func TestSendSnapshotLVM(t *testing.T) {
	t.Parallel()
	b, cfg := streamPool(t, "csithin_send")
	c := t.Context() // no deadline of its own: the VM runs these beside the whole suite
	vol, dev := blockVolume(t, b, streamVolBytes, streamSpans...)
	const mib, written = backend.MiB, streamWritten
	s1 := snapshot(t, b, vol, "s1")
	want1 := deviceSum(t, dev, streamVolBytes)

	var full bytes.Buffer
	st, err := b.SendSnapshot(c, s1, "", &full)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("full send: %+v", st)
	if st.AllocatedBytes < written || st.AllocatedBytes > written+written/100+mib {
		t.Errorf("allocated %d bytes, want %d (+1%% +1 MiB)", st.AllocatedBytes, written)
	}
	if st.PayloadBytes != st.AllocatedBytes || st.StreamBytes != int64(full.Len()) {
		t.Errorf("stats %+v for a %d-byte stream", st, full.Len())
	}
	img, err := os.Create(filepath.Join(loopDir(t), "rebuilt.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if err := img.Truncate(streamVolBytes); err != nil {
		t.Fatal(err)
	}
	hdr, payload := apply(t, img, full.Bytes())
	if hdr.Kind != volstream.KindLVMThin || hdr.VolumeBytes != streamVolBytes || hdr.SnapshotID != s1 || payload != st.PayloadBytes {
		t.Errorf("header %+v, payload %d", hdr, payload)
	}
	if got := deviceSum(t, img.Name(), streamVolBytes); got != want1 {
		t.Fatalf("rebuilt image %s, volume %s", got, want1)
	}

	// Incremental: 1 MiB rewritten, 2 MiB added, 1 MiB discarded.
	writeAt(t, dev, 8*mib, 1*mib, 4)
	writeAt(t, dev, 400*mib, 2*mib, 5)
	discard(t, dev, 300*mib, 1*mib)
	const changed = 4 * mib
	s2 := snapshot(t, b, vol, "s2")
	want2 := deviceSum(t, dev, streamVolBytes)
	var inc bytes.Buffer
	st, err = b.SendSnapshot(c, s2, s1, &inc)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("incremental send: %+v", st)
	if st.PayloadBytes < changed || st.PayloadBytes > changed+mib {
		t.Errorf("incremental payload %d bytes, want %d (+1 MiB)", st.PayloadBytes, changed)
	}
	hdr, _ = apply(t, img, inc.Bytes())
	if hdr.ParentSnapshotID != s1 || hdr.SnapshotID != s2 {
		t.Errorf("incremental header %+v", hdr)
	}
	if got := deviceSum(t, img.Name(), streamVolBytes); got != want2 {
		t.Fatalf("image rebuilt from full + incremental %s, volume %s", got, want2)
	}
	if heldMetadataRoot(t, cfg.VG) {
		t.Fatal("a metadata snapshot is still reserved after the sends")
	}

	// A send that dies holding the reservation: the next start's first
	// send releases it and succeeds.
	run(t, "dmsetup", "message", lvmthin.DMName(cfg.VG, "pool", "tpool"), "0", "reserve_metadata_snap")
	if !heldMetadataRoot(t, cfg.VG) {
		t.Fatal("reserve_metadata_snap did not show in the pool's status")
	}
	b2, err := lvmthin.New(c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var again bytes.Buffer
	if _, err := b2.SendSnapshot(c, s1, "", &again); err != nil {
		t.Fatalf("send after a leftover reservation: %v", err)
	}
	if !bytes.Equal(again.Bytes(), full.Bytes()) {
		t.Error("the same snapshot sent twice gave different streams")
	}
	if heldMetadataRoot(t, cfg.VG) {
		t.Fatal("the leftover metadata snapshot is still reserved")
	}
	// Sending deactivates the snapshot again (it was made inactive).
	if attr := strings.TrimSpace(lvm(t, "lvs", "--noheadings", "-o", "lv_active", cfg.VG+"/"+s1)); attr == "active" {
		t.Errorf("snapshot %s left active after the send", s1)
	}

	// A missing snapshot or parent is NotFound, and so is a malformed ID
	// (as for GetSnapshot: nothing of that name can exist).
	_, err = b.SendSnapshot(c, snapID(t, "missing"), "", io.Discard)
	wantErr(t, err, backend.ErrNotFound, "send of a missing snapshot")
	_, err = b.SendSnapshot(c, s2, snapID(t, "missing"), io.Discard)
	wantErr(t, err, backend.ErrNotFound, "send against a missing parent")
	_, err = b.SendSnapshot(c, "s-../x", "", io.Discard)
	wantErr(t, err, backend.ErrNotFound, "send of a malformed ID")
}

// lvNames lists the LVs of vg.
func lvNames(t *testing.T, vg string) []string {
	t.Helper()
	return strings.Fields(lvm(t, "lvs", "--noheadings", "-o", "lv_name", vg))
}

func wantNoLV(t *testing.T, vg, name, after string) {
	t.Helper()
	for _, n := range lvNames(t, vg) {
		if n == name {
			t.Fatalf("%s: LV %s left behind", after, name)
		}
	}
}

// mappedBytes is what LVM says an LV holds allocated (data% of its size).
func mappedBytes(t *testing.T, vg, lv string) int64 {
	t.Helper()
	out := strings.Fields(lvm(t, "lvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "data_percent,lv_size", vg+"/"+lv))
	var pct float64
	var size int64
	if len(out) != 2 {
		t.Fatalf("lvs %s/%s: %q", vg, lv, out)
	}
	if _, err := fmt.Sscanf(out[0]+" "+out[1], "%g %d", &pct, &size); err != nil {
		t.Fatalf("lvs %s/%s: %q: %v", vg, lv, out, err)
	}
	return int64(pct / 100 * float64(size))
}

// TestReceiveLVM: on a second pool, a full stream of a 512 MiB volume
// holding 40 MiB becomes a volume with the source's checksum that holds
// only ~40 MiB (holes stay unallocated); an incremental stream without
// its parent is FailedPrecondition and leaves no LV; with the parent
// received as a snapshot, it rebuilds the newer state exactly, as a volume
// and as a snapshot that restores; a bit-flipped and a truncated stream
// are refused with the reader's error and leave no LV; a receive a crash
// interrupted (an LV still tagged receiving) is removed by the next start.
func TestReceiveLVM(t *testing.T) {
	t.Parallel()
	src, _ := streamPool(t, "csithin_sendsrc")
	var dstCfg lvmthin.Config
	dst := loopPool(t, "csithin_recv", 2*backend.GiB, func(c *lvmthin.Config) { dstCfg = *c })
	c := t.Context() // no deadline of its own: the VM runs these beside the whole suite
	const mib = backend.MiB

	vol, dev := blockVolume(t, src, streamVolBytes, streamSpans...)
	const written = streamWritten
	s1 := snapshot(t, src, vol, "s1")
	want1 := deviceSum(t, dev, streamVolBytes)
	var full bytes.Buffer
	if _, err := src.SendSnapshot(c, s1, "", &full); err != nil {
		t.Fatal(err)
	}
	writeAt(t, dev, 8*mib, 1*mib, 4)
	writeAt(t, dev, 400*mib, 2*mib, 5)
	discard(t, dev, 300*mib, 1*mib)
	s2 := snapshot(t, src, vol, "s2")
	want2 := deviceSum(t, dev, streamVolBytes)
	var inc bytes.Buffer
	if _, err := src.SendSnapshot(c, s2, s1, &inc); err != nil {
		t.Fatal(err)
	}

	// Full stream into a volume.
	v1 := volID(t, "v1")
	got, err := dst.ReceiveVolume(c, backend.VolumeRequest{ID: v1, AccessType: backend.AccessBlock}, bytes.NewReader(full.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if got.SizeBytes != streamVolBytes || got.AccessType != backend.AccessBlock {
		t.Errorf("received volume %+v", got)
	}
	if h := deviceSum(t, target(t, dst, v1), streamVolBytes); h != want1 {
		t.Fatalf("received volume %s, source %s", h, want1)
	}
	if m := mappedBytes(t, dstCfg.VG, v1); m < written-mib || m > written+written/100+mib {
		t.Errorf("received volume holds %d bytes, want %d (+1%% +1 MiB): holes must stay unallocated", m, written)
	}
	// The same receive again is the volume that exists.
	if again, err := dst.ReceiveVolume(c, backend.VolumeRequest{ID: v1, AccessType: backend.AccessBlock}, bytes.NewReader(full.Bytes())); err != nil || again.SizeBytes != streamVolBytes {
		t.Errorf("repeated receive: %+v, %v", again, err)
	}

	// Incremental without its parent.
	v2 := volID(t, "v2")
	_, err = dst.ReceiveVolume(c, backend.VolumeRequest{ID: v2, AccessType: backend.AccessBlock}, bytes.NewReader(inc.Bytes()))
	wantErr(t, err, backend.ErrPrecondition, "incremental without its parent")
	wantNoLV(t, dstCfg.VG, v2, "incremental without its parent")

	// The parent as a snapshot, then the incremental as a volume and as
	// a snapshot that restores.
	if _, err := dst.ReceiveSnapshot(c, s1, "s1", bytes.NewReader(full.Bytes())); err != nil {
		t.Fatal(err)
	}
	if _, err := dst.ReceiveVolume(c, backend.VolumeRequest{ID: v2, AccessType: backend.AccessBlock}, bytes.NewReader(inc.Bytes())); err != nil {
		t.Fatal(err)
	}
	if h := deviceSum(t, target(t, dst, v2), streamVolBytes); h != want2 {
		t.Fatalf("volume from full + incremental %s, source %s", h, want2)
	}
	if _, err := dst.ReceiveSnapshot(c, s2, "s2", bytes.NewReader(inc.Bytes())); err != nil {
		t.Fatal(err)
	}
	if snap, err := dst.GetSnapshot(c, s2); err != nil || !snap.ReadyToUse || snap.SizeBytes != streamVolBytes {
		t.Fatalf("received snapshot: %+v, %v", snap, err)
	}
	v3 := volID(t, "v3")
	if _, err := dst.CreateVolume(c, backend.VolumeRequest{ID: v3, AccessType: backend.AccessBlock,
		Source: backend.Source{Kind: backend.SourceSnapshot, ID: s2}}); err != nil {
		t.Fatal(err)
	}
	if h := deviceSum(t, target(t, dst, v3), streamVolBytes); h != want2 {
		t.Fatalf("restore of the received snapshot %s, source %s", h, want2)
	}

	// Refused streams leave nothing.
	flipped := bytes.Clone(full.Bytes())
	flipped[len(flipped)/2] ^= 0x10
	for _, tc := range []struct {
		name   string
		stream []byte
		want   error
	}{
		{"bit flipped", flipped, volstream.ErrChecksum},
		{"truncated", full.Bytes()[:full.Len()/2], volstream.ErrTruncated},
		{"no trailer", full.Bytes()[:full.Len()-1], volstream.ErrTruncated},
	} {
		bad := volID(t, "bad")
		_, err := dst.ReceiveVolume(c, backend.VolumeRequest{ID: bad, AccessType: backend.AccessBlock}, bytes.NewReader(tc.stream))
		if !errors.Is(err, tc.want) || !errors.Is(err, backend.ErrInvalid) {
			t.Errorf("%s: %v, want %v (InvalidArgument)", tc.name, err, tc.want)
		}
		wantNoLV(t, dstCfg.VG, bad, tc.name)
		badSnap := snapID(t, "bad")
		_, err = dst.ReceiveSnapshot(c, badSnap, "", bytes.NewReader(tc.stream))
		if !errors.Is(err, tc.want) {
			t.Errorf("%s (snapshot): %v, want %v", tc.name, err, tc.want)
		}
		wantNoLV(t, dstCfg.VG, badSnap, tc.name+" (snapshot)")
	}

	// A receive a crash interrupted: the LV as the receive creates it
	// (owned, tagged receiving), half written.
	half := volID(t, "half")
	lvm(t, "lvcreate", "--type", "thin", "--virtualsize", "64m", "--thinpool", "pool", "--name", half,
		"--addtag", "csi-thin.io/owned", "--addtag", "csi-thin.io/kind=volume", "--addtag", "csi-thin.io/receiving", dstCfg.VG)
	if _, err := dst.GetVolume(c, half); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("a half-received volume is visible: %v", err)
	}
	if _, err := lvmthin.New(c, dstCfg); err != nil {
		t.Fatal(err)
	}
	wantNoLV(t, dstCfg.VG, half, "restart")
}
