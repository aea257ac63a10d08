package volstream

import (
	"errors"
	"io"
	"testing"
)

// FuzzReader: whatever bytes arrive, the reader does not panic, never
// allocates more than a frame's bound, and ends either verified (io.EOF)
// or with one of its own errors, so a consumer always learns precisely
// why a stream was refused.
func FuzzReader(f *testing.F) {
	f.Add(sequentialStream(f, randomBytes(3000, 1), ""))
	f.Add(sequentialStream(f, nil, snapB))
	f.Add(sparseStream(f, 1<<20, []extent{{0, randomBytes(100, 2)}, {8192, randomBytes(50, 3)}}))
	f.Add([]byte("CTVSTRM\n"))
	f.Fuzz(func(t *testing.T, stream []byte) {
		_, _, chunks, err := readAll(stream)
		if err == nil {
			var last int64 = -1
			for _, c := range chunks {
				if c.off <= last {
					t.Fatalf("a verified sparse stream handed out chunk %d after %d", c.off, last)
				}
				last = c.off
			}
			return
		}
		known := []error{ErrNotAStream, ErrVersion, ErrHeader, ErrChecksum, ErrOrder, ErrTruncated, ErrDigest, ErrFrame}
		for _, k := range known {
			if errors.Is(err, k) {
				return
			}
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("a short stream must be ErrTruncated, got %v", err)
		}
		t.Fatalf("refused with an error of no known kind: %v", err)
	})
}
