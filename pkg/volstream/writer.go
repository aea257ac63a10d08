package volstream

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
)

// Writer frames a producer's payload. Sequential kinds write with Write
// (packed into frames of DefaultFrameBytes); sparse kinds with WriteAt,
// in increasing offsets. Close writes the trailer; without it the stream
// reads as truncated. A Writer is not safe for concurrent use.
type Writer struct {
	w       io.Writer
	hdr     Header
	digest  hash.Hash
	pending []byte // sequential: payload not yet framed
	seq     uint64
	payload int64 // payload bytes framed so far
	next    int64 // sparse: the lowest offset the next range may start at
	written int64 // stream bytes written
	err     error // sticky: a failed write poisons the stream
	closed  bool
}

// NewWriter validates h and writes it to w.
func NewWriter(w io.Writer, h Header) (*Writer, error) {
	return newWriter(w, h, Version)
}

// newWriter writes a stream of the given format version (a test writes
// version 1).
func newWriter(w io.Writer, h Header, version uint16) (*Writer, error) {
	if err := h.Validate(); err != nil {
		return nil, err
	}
	sw := &Writer{w: w, hdr: h, digest: newDigest(version)}
	if err := sw.emit(encodeHeader(h, version)); err != nil {
		return nil, err
	}
	return sw, nil
}

func encodeHeader(h Header, version uint16) []byte {
	b := make([]byte, 0, headerFixedLen+2+len(h.SnapshotID)+len(h.ParentSnapshotID)+4)
	b = append(b, magic[:]...)
	b = binary.BigEndian.AppendUint16(b, version)
	b = append(b, byte(h.Kind), 0)
	b = binary.BigEndian.AppendUint64(b, uint64(h.VolumeBytes))
	b = binary.BigEndian.AppendUint64(b, uint64(h.AllocatedBytes))
	b = append(b, byte(len(h.SnapshotID)))
	b = append(b, h.SnapshotID...)
	b = append(b, byte(len(h.ParentSnapshotID)))
	b = append(b, h.ParentSnapshotID...)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// emit writes stream bytes and adds them to the digest.
func (sw *Writer) emit(b []byte) error {
	if sw.err != nil {
		return sw.err
	}
	n, err := sw.w.Write(b)
	sw.written += int64(n)
	if err != nil {
		sw.err = fmt.Errorf("write volume stream: %w", err)
		return sw.err
	}
	sw.digest.Write(b)
	return nil
}

// frame writes one data frame of p at offset off.
func (sw *Writer) frame(off int64, p []byte) error {
	fh := make([]byte, frameHeaderLen)
	fh[0] = frameData
	binary.BigEndian.PutUint64(fh[1:], sw.seq)
	binary.BigEndian.PutUint64(fh[9:], uint64(off))
	binary.BigEndian.PutUint32(fh[17:], uint32(len(p)))
	binary.BigEndian.PutUint32(fh[21:], frameCRC(fh[:21], p))
	if err := sw.emit(fh); err != nil {
		return err
	}
	if err := sw.emit(p); err != nil {
		return err
	}
	sw.seq++
	sw.payload += int64(len(p))
	return nil
}

func frameCRC(fields, payload []byte) uint32 {
	return crc32.Update(crc32.Checksum(fields, castagnoli), castagnoli, payload)
}

var errClosed = errors.New("volume stream writer is closed")

// Write appends p to a sequential stream's payload.
func (sw *Writer) Write(p []byte) (int, error) {
	if sw.closed {
		return 0, errClosed
	}
	if !sw.hdr.Kind.Sequential() {
		return 0, fmt.Errorf("a %s stream is sparse: write ranges with WriteAt", sw.hdr.Kind)
	}
	n := len(p)
	for len(p) > 0 {
		if len(sw.pending) == 0 && len(p) >= DefaultFrameBytes {
			if err := sw.frame(sw.payload, p[:DefaultFrameBytes]); err != nil {
				return n - len(p), err
			}
			p = p[DefaultFrameBytes:]
			continue
		}
		take := min(len(p), DefaultFrameBytes-len(sw.pending))
		sw.pending = append(sw.pending, p[:take]...)
		p = p[take:]
		if len(sw.pending) == DefaultFrameBytes {
			if err := sw.flush(); err != nil {
				return n - len(p), err
			}
		}
	}
	return n, sw.err
}

func (sw *Writer) flush() error {
	if len(sw.pending) == 0 {
		return sw.err
	}
	err := sw.frame(sw.payload, sw.pending)
	sw.pending = sw.pending[:0]
	return err
}

// WriteAt adds the range of a sparse stream's volume at off holding p.
// Ranges must come in increasing order without overlap and end within
// the volume; the payload must add up to the header's allocated bytes.
func (sw *Writer) WriteAt(p []byte, off int64) (int, error) {
	if sw.closed {
		return 0, errClosed
	}
	if sw.hdr.Kind.Sequential() {
		return 0, fmt.Errorf("a %s stream is sequential: use Write", sw.hdr.Kind)
	}
	if off < sw.next || off+int64(len(p)) > sw.hdr.VolumeBytes {
		return 0, fmt.Errorf("range [%d, %d) of a %d-byte volume after one ending at %d: %w",
			off, off+int64(len(p)), sw.hdr.VolumeBytes, sw.next, ErrOrder)
	}
	if sw.payload+int64(len(p)) > sw.hdr.AllocatedBytes {
		return 0, fmt.Errorf("%d payload bytes exceed the header's %d allocated bytes: %w",
			sw.payload+int64(len(p)), sw.hdr.AllocatedBytes, ErrOrder)
	}
	n := 0
	for n < len(p) {
		end := min(len(p), n+DefaultFrameBytes)
		if err := sw.frame(off+int64(n), p[n:end]); err != nil {
			return n, err
		}
		n = end
	}
	sw.next = off + int64(len(p))
	return n, nil
}

// Close frames what is pending and writes the trailer. It does not close
// the underlying writer.
func (sw *Writer) Close() error {
	if sw.closed {
		return sw.err
	}
	sw.closed = true
	if err := sw.flush(); err != nil {
		return err
	}
	if !sw.hdr.Kind.Sequential() && sw.payload != sw.hdr.AllocatedBytes {
		sw.err = fmt.Errorf("sparse stream of %d payload bytes, header says %d allocated: %w", sw.payload, sw.hdr.AllocatedBytes, ErrOrder)
		return sw.err
	}
	t := make([]byte, 0, trailerFixedLen+sw.digest.Size())
	t = append(t, frameTrailer)
	t = binary.BigEndian.AppendUint64(t, sw.seq)
	t = binary.BigEndian.AppendUint64(t, uint64(sw.payload))
	t = sw.digest.Sum(t)
	return sw.emit(t)
}

// StreamBytes is how many bytes of stream (header, frames, trailer) have
// been written so far.
func (sw *Writer) StreamBytes() int64 { return sw.written }

// PayloadBytes is how much payload has been framed so far.
func (sw *Writer) PayloadBytes() int64 { return sw.payload }
