package volstream

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
)

const (
	snapA = "s-0123456789abcdef0123456789abcdef"
	snapB = "s-fedcba9876543210fedcba9876543210"
)

func randomBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed)}).Read(b)
	return b
}

// sequentialStream frames payload as a btrfs stream in writes of odd
// sizes, so that frames are packed across writes.
func sequentialStream(t testing.TB, payload []byte, parent string) []byte {
	t.Helper()
	var out bytes.Buffer
	w, err := NewWriter(&out, Header{Kind: KindBtrfs, VolumeBytes: 4 << 30, AllocatedBytes: int64(len(payload)), SnapshotID: snapA, ParentSnapshotID: parent})
	if err != nil {
		t.Fatal(err)
	}
	for p := payload; len(p) > 0; {
		n := min(len(p), 77777)
		if _, err := w.Write(p[:n]); err != nil {
			t.Fatal(err)
		}
		p = p[n:]
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if w.StreamBytes() != int64(out.Len()) {
		t.Fatalf("StreamBytes %d, wrote %d", w.StreamBytes(), out.Len())
	}
	return out.Bytes()
}

type extent struct {
	off  int64
	data []byte
}

func sparseStream(t testing.TB, volume int64, extents []extent) []byte {
	t.Helper()
	var total int64
	for _, e := range extents {
		total += int64(len(e.data))
	}
	var out bytes.Buffer
	w, err := NewWriter(&out, Header{Kind: KindLVMThin, VolumeBytes: volume, AllocatedBytes: total, SnapshotID: snapB})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range extents {
		if _, err := w.WriteAt(e.data, e.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// readAll reads a stream to its end and returns its payload (sequential)
// or its chunks (sparse).
func readAll(stream []byte) (Header, []byte, []extent, error) {
	r, err := NewReader(bytes.NewReader(stream))
	if err != nil {
		return Header{}, nil, nil, err
	}
	if r.Header().Kind.Sequential() {
		b, err := io.ReadAll(r)
		if err == nil && !r.Verified() {
			err = errors.New("ReadAll ended without a verified trailer")
		}
		return r.Header(), b, nil, err
	}
	var got []extent
	for {
		c, err := r.Next()
		if err == io.EOF {
			return r.Header(), nil, got, nil
		}
		if err != nil {
			return r.Header(), nil, got, err
		}
		got = append(got, extent{c.Offset, bytes.Clone(c.Data)})
	}
}

func TestRoundTrip(t *testing.T) {
	for _, n := range []int{0, 1, DefaultFrameBytes - 1, DefaultFrameBytes, 3*DefaultFrameBytes + 12345} {
		payload := randomBytes(n, uint64(n))
		stream := sequentialStream(t, payload, snapB)
		h, got, _, err := readAll(stream)
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("%d bytes: payload differs after the round trip (%d bytes back)", n, len(got))
		}
		if h.ParentSnapshotID != snapB || !h.Incremental() || h.SnapshotID != snapA || h.AllocatedBytes != int64(n) {
			t.Fatalf("header came back as %+v", h)
		}
		frames := (n + DefaultFrameBytes - 1) / DefaultFrameBytes
		if overhead := len(stream) - n; overhead != headerFixedLen+2+2*len(snapA)+4+frames*frameHeaderLen+trailerFixedLen+16 {
			t.Fatalf("%d bytes in %d frames: %d bytes of overhead", n, frames, overhead)
		}
	}
	extents := []extent{{0, randomBytes(4096, 1)}, {65536, randomBytes(2*DefaultFrameBytes+5, 2)}, {8 << 20, randomBytes(1, 3)}}
	_, _, got, err := readAll(sparseStream(t, 16<<20, extents))
	if err != nil {
		t.Fatal(err)
	}
	var off int64 = -1
	var joined []byte
	for _, c := range got {
		if c.off < off {
			t.Fatalf("chunk at %d after %d", c.off, off)
		}
		off = c.off
	}
	for _, e := range extents {
		joined = append(joined, e.data...)
	}
	var back []byte
	for _, c := range got {
		back = append(back, c.data...)
	}
	if !bytes.Equal(back, joined) || got[0].off != 0 || got[1].off != 65536 || got[len(got)-1].off != 8<<20 {
		t.Fatalf("sparse chunks came back wrong: %d chunks", len(got))
	}
}

// Offsets in a stream of one 1000-byte payload in three frames (the
// frame size is lowered for it), for the corruption table below.
func framedStream(t *testing.T) ([]byte, []int) {
	t.Helper()
	var out bytes.Buffer
	w, err := NewWriter(&out, Header{Kind: KindBtrfs, VolumeBytes: 1 << 20, AllocatedBytes: 1000, SnapshotID: snapA})
	if err != nil {
		t.Fatal(err)
	}
	starts := []int{out.Len()}
	payload := randomBytes(1000, 9)
	for _, p := range [][]byte{payload[:400], payload[400:800], payload[800:]} {
		if err := w.frame(w.payload, p); err != nil {
			t.Fatal(err)
		}
		starts = append(starts, out.Len())
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), starts // starts: frame 0, 1, 2, trailer
}

func TestReaderRefuses(t *testing.T) {
	good, at := framedStream(t)
	if _, _, _, err := readAll(good); err != nil {
		t.Fatalf("the unmodified stream: %v", err)
	}
	frame := func(i int) []byte { return good[at[i]:at[i+1]] }
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	edit := func(f func(b []byte)) []byte { b := bytes.Clone(good); f(b); return b }
	// reframe rewrites frame i's payload and fixes its crc32c: only the
	// whole-stream digest can tell.
	reframe := func(i int) []byte {
		return edit(func(b []byte) {
			f := b[at[i]:at[i+1]]
			f[frameHeaderLen] ^= 1
			binary.BigEndian.PutUint32(f[21:], frameCRC(f[:21], f[frameHeaderLen:]))
		})
	}
	tests := []struct {
		name   string
		stream []byte
		want   error
	}{
		{"empty", nil, ErrTruncated},
		{"not a stream", []byte("btrfs-stream\x00\x01\x00\x00\x00"), ErrNotAStream},
		{"future version", edit(func(b []byte) { b[9] = Version + 1 }), ErrVersion},
		{"header bit flipped", edit(func(b []byte) { b[20] ^= 0x10 }), ErrHeader},
		{"header cut", good[:at[0]-1], ErrTruncated},
		{"payload bit flipped", edit(func(b []byte) { b[at[1]+frameHeaderLen+7] ^= 0x80 }), ErrChecksum},
		{"frame length changed", edit(func(b []byte) { b[at[1]+20]-- }), ErrChecksum},
		{"frame rewritten with a fresh crc", reframe(1), ErrDigest},
		{"frames swapped", cat(good[:at[0]], frame(1), frame(0), good[at[2]:]), ErrOrder},
		{"frame dropped", cat(good[:at[1]], good[at[2]:]), ErrOrder},
		{"frame repeated", cat(good[:at[2]], frame(1), good[at[2]:]), ErrOrder},
		{"cut inside a frame", good[:at[1]+30], ErrTruncated},
		{"cut between frames", good[:at[2]], ErrTruncated},
		{"trailer missing", good[:at[3]], ErrTruncated},
		{"trailer cut", good[:len(good)-1], ErrTruncated},
		{"trailer digest changed", edit(func(b []byte) { b[len(b)-1] ^= 1 }), ErrDigest},
		{"trailer frame count changed", edit(func(b []byte) { b[at[3]+8]++ }), ErrDigest},
		{"unknown frame type", edit(func(b []byte) { b[at[1]] = 'X' }), ErrFrame},
		{"oversized frame", edit(func(b []byte) { binary.BigEndian.PutUint32(b[at[0]+17:], MaxFrameBytes+1) }), ErrFrame},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, _, err := readAll(tc.stream)
			if !errors.Is(err, tc.want) {
				t.Fatalf("want %v, got %v", tc.want, err)
			}
		})
	}
}

// TestReadsVersion1: a stream of format version 1 (a sha256 trailer: what
// exports made before version 2 hold) reads back whole; one whose digest
// is changed is refused.
func TestReadsVersion1(t *testing.T) {
	payload := randomBytes(2*DefaultFrameBytes+7, 5)
	var out bytes.Buffer
	w, err := newWriter(&out, Header{Kind: KindBtrfs, VolumeBytes: 4 << 30, AllocatedBytes: int64(len(payload)), SnapshotID: snapA}, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(payload); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	stream := out.Bytes()
	if v := binary.BigEndian.Uint16(stream[8:]); v != 1 {
		t.Fatalf("wrote version %d", v)
	}
	if len(stream) != headerFixedLen+2+len(snapA)+4+3*frameHeaderLen+len(payload)+trailerFixedLen+sha256.Size {
		t.Fatalf("a version 1 stream of %d bytes: not a sha256 trailer", len(stream))
	}
	_, got, _, err := readAll(stream)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("version 1 read back: %d bytes, %v", len(got), err)
	}
	stream[len(stream)-1] ^= 1
	if _, _, _, err := readAll(stream); !errors.Is(err, ErrDigest) {
		t.Fatalf("version 1 with its digest changed: %v, want %v", err, ErrDigest)
	}
}

// TestEveryTruncationRefused cuts a stream at every byte: none reads as
// complete.
func TestEveryTruncationRefused(t *testing.T) {
	good, _ := framedStream(t)
	for n := range len(good) {
		if _, _, _, err := readAll(good[:n]); !errors.Is(err, ErrTruncated) {
			t.Fatalf("cut at %d of %d bytes: want ErrTruncated, got %v", n, len(good), err)
		}
	}
}

func TestSparseRules(t *testing.T) {
	// Frames written below WriteAt's checks, so that the reader's own
	// rules are what refuses them.
	forge := func(volume, allocated int64, ranges [][2]int64) []byte {
		var out bytes.Buffer
		w, err := NewWriter(&out, Header{Kind: KindLVMThin, VolumeBytes: volume, AllocatedBytes: allocated, SnapshotID: snapA})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range ranges {
			if err := w.frame(r[0], make([]byte, r[1])); err != nil {
				t.Fatal(err)
			}
		}
		w.closed = true
		t2 := []byte{frameTrailer}
		t2 = binary.BigEndian.AppendUint64(t2, w.seq)
		t2 = binary.BigEndian.AppendUint64(t2, uint64(w.payload))
		return append(out.Bytes(), w.digest.Sum(t2)...)
	}
	tests := []struct {
		name      string
		volume    int64
		allocated int64
		ranges    [][2]int64
		want      error
	}{
		{"in order", 1 << 20, 200, [][2]int64{{0, 100}, {4096, 100}}, nil},
		{"touching", 1 << 20, 200, [][2]int64{{0, 100}, {100, 100}}, nil},
		{"overlapping", 1 << 20, 200, [][2]int64{{0, 100}, {50, 100}}, ErrOrder},
		{"backwards", 1 << 20, 200, [][2]int64{{4096, 100}, {0, 100}}, ErrOrder},
		{"past the volume's end", 1 << 20, 100, [][2]int64{{1<<20 - 50, 100}}, ErrOrder},
		{"more than allocated", 1 << 20, 150, [][2]int64{{0, 100}, {4096, 100}}, ErrOrder},
		{"less than allocated", 1 << 20, 300, [][2]int64{{0, 100}, {4096, 100}}, ErrDigest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, _, err := readAll(forge(tc.volume, tc.allocated, tc.ranges))
			if !errors.Is(err, tc.want) {
				t.Fatalf("want %v, got %v", tc.want, err)
			}
		})
	}
}

func TestWriterRefuses(t *testing.T) {
	var sink bytes.Buffer
	for _, h := range []Header{
		{Kind: 9, VolumeBytes: 1, SnapshotID: snapA},
		{Kind: KindBtrfs, VolumeBytes: 0, SnapshotID: snapA},
		{Kind: KindBtrfs, VolumeBytes: 1, SnapshotID: "../etc"},
		{Kind: KindBtrfs, VolumeBytes: 1, SnapshotID: snapA, ParentSnapshotID: "v-0123456789abcdef0123456789abcdef"},
		{Kind: KindBtrfs, VolumeBytes: 1, SnapshotID: snapA, ParentSnapshotID: snapA},
		{Kind: KindLVMThin, VolumeBytes: 10, AllocatedBytes: 11, SnapshotID: snapA},
	} {
		if _, err := NewWriter(&sink, h); !errors.Is(err, ErrHeader) {
			t.Errorf("header %+v: want ErrHeader, got %v", h, err)
		}
	}
	w, err := NewWriter(&sink, Header{Kind: KindLVMThin, VolumeBytes: 1000, AllocatedBytes: 300, SnapshotID: snapA})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("x")); err == nil {
		t.Error("Write on a sparse stream succeeded")
	}
	if _, err := w.WriteAt(make([]byte, 100), 500); err != nil {
		t.Fatal(err)
	}
	for _, r := range [][2]int64{{450, 100}, {950, 100}, {600, 250}} {
		if _, err := w.WriteAt(make([]byte, r[1]), r[0]); !errors.Is(err, ErrOrder) {
			t.Errorf("range %v: want ErrOrder, got %v", r, err)
		}
	}
	if err := w.Close(); !errors.Is(err, ErrOrder) {
		t.Errorf("close with 100 of 300 allocated bytes: want ErrOrder, got %v", err)
	}
}

// A failed write poisons the writer: nothing after it can make the
// stream look whole.
func TestWriterStopsAfterAFailedWrite(t *testing.T) {
	fw := &failingWriter{after: 100}
	w, err := NewWriter(fw, Header{Kind: KindBtrfs, VolumeBytes: 1 << 30, SnapshotID: snapA})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(make([]byte, 2*DefaultFrameBytes)); err == nil {
		t.Fatal("write past the failure succeeded")
	}
	if err := w.Close(); err == nil {
		t.Fatal("close after a failed write succeeded")
	}
}

type failingWriter struct{ after, n int }

func (f *failingWriter) Write(p []byte) (int, error) {
	if f.n+len(p) > f.after {
		return 0, errors.New("disk full")
	}
	f.n += len(p)
	return len(p), nil
}
