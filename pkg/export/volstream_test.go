package export_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	"github.com/csi-thin/csi-thin/internal/s3test"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/volstream"
)

// A sparse volume stream written into a pipe (as a producer does) goes
// through the store and comes out of Get, into a pipe, as the same ranges
// with the stream's own verification passed.
func TestVolumeStreamThroughStore(t *testing.T) {
	t.Parallel()
	srv := s3test.ForTest(t)
	st := newStore(t, srv, nil)
	ctx := context.Background()
	vol, snap := backend.VolumeIDFor("pvc-volstream"), backend.SnapshotIDFor("snap-volstream")
	extents := []struct {
		off  int64
		data []byte
	}{{0, randomBytes(t, 5<<20)}, {64 << 20, randomBytes(t, 9<<20)}, {900 << 20, randomBytes(t, 3<<20)}}
	var allocated int64
	for _, e := range extents {
		allocated += int64(len(e.data))
	}

	pr, pw := io.Pipe()
	produced := make(chan int64, 1)
	go func() {
		w, err := volstream.NewWriter(pw, volstream.Header{Kind: volstream.KindLVMThin, VolumeBytes: 1 << 30, AllocatedBytes: allocated, SnapshotID: snap})
		for _, e := range extents {
			if err == nil {
				_, err = w.WriteAt(e.data, e.off)
			}
		}
		if err == nil {
			err = w.Close()
		}
		if err != nil {
			produced <- -1
			pw.CloseWithError(err)
			return
		}
		produced <- w.StreamBytes()
		pw.Close()
	}()
	m, err := st.Put(ctx, vol, snap, "", pr)
	if err != nil {
		t.Fatal(err)
	}
	if n := <-produced; n != m.Length {
		t.Fatalf("the producer wrote %d stream bytes, the manifest says %d", n, m.Length)
	}

	gr, gw := io.Pipe()
	got := make(chan error, 1)
	go func() {
		_, err := st.Get(ctx, m.ID(), gw)
		gw.CloseWithError(err)
		got <- err
	}()
	r, err := volstream.NewReader(gr)
	if err != nil {
		t.Fatal(err)
	}
	volume := map[int64][]byte{}
	for {
		c, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		volume[c.Offset] = bytes.Clone(c.Data)
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if !r.Verified() || r.PayloadBytes() != allocated || r.Header().SnapshotID != snap {
		t.Fatalf("stream read back: verified %v, %d payload bytes of %d, header %+v", r.Verified(), r.PayloadBytes(), allocated, r.Header())
	}
	for _, e := range extents {
		var back []byte
		for off := e.off; off < e.off+int64(len(e.data)); {
			c, ok := volume[off]
			if !ok {
				t.Fatalf("no frame at offset %d", off)
			}
			back = append(back, c...)
			off += int64(len(c))
		}
		if !bytes.Equal(back, e.data) {
			t.Fatalf("the range at %d differs after the round trip", e.off)
		}
	}
}
