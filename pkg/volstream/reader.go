package volstream

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
)

// Reader verifies a stream as it reads it: a frame's data is handed out
// only after its checksum and place in the sequence were checked, and the
// end (io.EOF) only after the trailer matched everything read. Data handed
// out before a later error is not to be trusted as a whole: a consumer
// keeps what it built from the stream only once it has seen io.EOF.
type Reader struct {
	r       *bufio.Reader
	hdr     Header
	digest  hash.Hash
	pos     int64 // stream bytes consumed
	seq     uint64
	payload int64
	nextOff int64 // sparse: the lowest offset the next range may start at
	buf     []byte
	rest    []byte // Read: the unread part of the current frame
	err     error  // sticky, io.EOF once verified
}

// NewReader reads and checks the header.
func NewReader(r io.Reader) (*Reader, error) {
	sr := &Reader{r: bufio.NewReaderSize(r, 64<<10)}
	h, err := sr.readHeader()
	if err != nil {
		return nil, err
	}
	sr.hdr = h
	return sr, nil
}

// Header is the stream's header.
func (sr *Reader) Header() Header { return sr.hdr }

// StreamBytes is how many bytes of stream have been read so far.
func (sr *Reader) StreamBytes() int64 { return sr.pos }

// PayloadBytes is how much verified payload has been handed out so far.
func (sr *Reader) PayloadBytes() int64 { return sr.payload }

// Verified reports whether the whole stream was read and its trailer
// matched.
func (sr *Reader) Verified() bool { return sr.err == io.EOF }

// full reads exactly len(b) bytes; an early end is ErrTruncated.
func (sr *Reader) full(b []byte, what string) error {
	n, err := io.ReadFull(sr.r, b)
	sr.pos += int64(n)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%s at stream byte %d: got %d of %d bytes: %w", what, sr.pos-int64(n), n, len(b), ErrTruncated)
	}
	return fmt.Errorf("read %s at stream byte %d: %w", what, sr.pos, err)
}

func (sr *Reader) readHeader() (Header, error) {
	var h Header
	fixed := make([]byte, headerFixedLen)
	if err := sr.full(fixed[:len(magic)], "header magic"); err != nil {
		return h, err
	}
	if !bytes.Equal(fixed[:len(magic)], magic[:]) {
		return h, fmt.Errorf("%w: first bytes %q", ErrNotAStream, fixed[:len(magic)])
	}
	if err := sr.full(fixed[len(magic):], "header"); err != nil {
		return h, err
	}
	v := binary.BigEndian.Uint16(fixed[8:])
	if v != Version && v != 1 {
		return h, fmt.Errorf("%w: version %d, this reader knows 1 and %d", ErrVersion, v, Version)
	}
	sr.digest = newDigest(v)
	b := fixed
	ids := make([]string, 2)
	for i, what := range []string{"snapshot ID", "parent snapshot ID"} {
		l := make([]byte, 1)
		if err := sr.full(l, "header "+what+" length"); err != nil {
			return h, err
		}
		id := make([]byte, l[0])
		if err := sr.full(id, "header "+what); err != nil {
			return h, err
		}
		b = append(append(b, l...), id...)
		ids[i] = string(id)
	}
	sum := make([]byte, 4)
	if err := sr.full(sum, "header checksum"); err != nil {
		return h, err
	}
	if got, want := binary.BigEndian.Uint32(sum), crc32.Checksum(b, castagnoli); got != want {
		return h, fmt.Errorf("%w: crc32c %08x, computed %08x", ErrHeader, got, want)
	}
	sr.digest.Write(b)
	sr.digest.Write(sum)
	if fixed[11] != 0 {
		return h, fmt.Errorf("%w: reserved byte %d", ErrHeader, fixed[11])
	}
	h = Header{
		Kind:             Kind(fixed[10]),
		VolumeBytes:      int64(binary.BigEndian.Uint64(fixed[12:])),
		AllocatedBytes:   int64(binary.BigEndian.Uint64(fixed[20:])),
		SnapshotID:       ids[0],
		ParentSnapshotID: ids[1],
	}
	return h, h.Validate()
}

// Next returns the next frame's verified data, valid until the next call;
// io.EOF once the trailer matched; any other error for a stream that is
// corrupt, truncated, reordered, or failed underneath (and again on every
// later call).
func (sr *Reader) Next() (Chunk, error) {
	if sr.err != nil {
		return Chunk{}, sr.err
	}
	c, err := sr.next()
	if err != nil {
		sr.err = err
	}
	return c, err
}

func (sr *Reader) next() (Chunk, error) {
	at := sr.pos
	typ := make([]byte, 1)
	if err := sr.full(typ, fmt.Sprintf("frame %d", sr.seq)); err != nil {
		return Chunk{}, err
	}
	switch typ[0] {
	case frameTrailer:
		return Chunk{}, sr.trailer(at)
	case frameData:
	default:
		return Chunk{}, fmt.Errorf("%w: frame %d at stream byte %d has type %#x", ErrFrame, sr.seq, at, typ[0])
	}
	fh := make([]byte, frameHeaderLen)
	fh[0] = typ[0]
	if err := sr.full(fh[1:], fmt.Sprintf("frame %d header", sr.seq)); err != nil {
		return Chunk{}, err
	}
	seq := binary.BigEndian.Uint64(fh[1:])
	off := int64(binary.BigEndian.Uint64(fh[9:]))
	n := binary.BigEndian.Uint32(fh[17:])
	if n == 0 || n > MaxFrameBytes {
		return Chunk{}, fmt.Errorf("%w: frame %d at stream byte %d claims %d bytes (1..%d)", ErrFrame, sr.seq, at, n, MaxFrameBytes)
	}
	if cap(sr.buf) < int(n) {
		sr.buf = make([]byte, n)
	}
	data := sr.buf[:n]
	if err := sr.full(data, fmt.Sprintf("frame %d payload", sr.seq)); err != nil {
		return Chunk{}, err
	}
	if got, want := binary.BigEndian.Uint32(fh[21:]), frameCRC(fh[:21], data); got != want {
		return Chunk{}, fmt.Errorf("%w: frame %d at stream byte %d: crc32c %08x, computed %08x", ErrChecksum, sr.seq, at, got, want)
	}
	if seq != sr.seq {
		return Chunk{}, fmt.Errorf("%w: frame at stream byte %d is number %d, expected %d", ErrOrder, at, seq, sr.seq)
	}
	end := off + int64(n)
	if sr.hdr.Kind.Sequential() {
		if off != sr.payload {
			return Chunk{}, fmt.Errorf("%w: frame %d carries payload bytes from %d, expected %d", ErrOrder, seq, off, sr.payload)
		}
	} else {
		if off < sr.nextOff || off < 0 || end > sr.hdr.VolumeBytes || end < off {
			return Chunk{}, fmt.Errorf("%w: frame %d range [%d, %d) of a %d-byte volume, after one ending at %d", ErrOrder, seq, off, end, sr.hdr.VolumeBytes, sr.nextOff)
		}
		if sr.payload+int64(n) > sr.hdr.AllocatedBytes {
			return Chunk{}, fmt.Errorf("%w: frame %d brings the payload to %d bytes, the header allocates %d", ErrOrder, seq, sr.payload+int64(n), sr.hdr.AllocatedBytes)
		}
		sr.nextOff = end
	}
	sr.digest.Write(fh)
	sr.digest.Write(data)
	sr.seq++
	sr.payload += int64(n)
	return Chunk{Offset: off, Data: data}, nil
}

func (sr *Reader) trailer(at int64) error {
	t := make([]byte, trailerFixedLen+sr.digest.Size())
	t[0] = frameTrailer
	if err := sr.full(t[1:], "trailer"); err != nil {
		return err
	}
	frames := binary.BigEndian.Uint64(t[1:])
	payload := int64(binary.BigEndian.Uint64(t[9:]))
	if frames != sr.seq || payload != sr.payload {
		return fmt.Errorf("%w: trailer at stream byte %d counts %d frames and %d payload bytes, read %d and %d", ErrDigest, at, frames, payload, sr.seq, sr.payload)
	}
	if !sr.hdr.Kind.Sequential() && sr.payload != sr.hdr.AllocatedBytes {
		return fmt.Errorf("%w: %d payload bytes, the header allocates %d", ErrDigest, sr.payload, sr.hdr.AllocatedBytes)
	}
	if want := sr.digest.Sum(nil); !bytes.Equal(t[trailerFixedLen:], want) {
		return fmt.Errorf("%w: digest %x in the trailer, computed %x", ErrDigest, t[trailerFixedLen:], want)
	}
	return io.EOF
}

// Read reads a sequential stream's payload as one byte stream: io.EOF
// only after the trailer matched.
func (sr *Reader) Read(p []byte) (int, error) {
	if !sr.hdr.Kind.Sequential() {
		return 0, fmt.Errorf("a %s stream is sparse: read its ranges with Next", sr.hdr.Kind)
	}
	for len(sr.rest) == 0 {
		c, err := sr.Next()
		if err != nil {
			return 0, err
		}
		sr.rest = c.Data
	}
	n := copy(p, sr.rest)
	sr.rest = sr.rest[n:]
	return n, nil
}
