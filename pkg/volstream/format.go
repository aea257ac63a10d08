// Package volstream is the byte format in which a snapshot's data leaves a
// node: to another node, to object storage, to a file. A backend's
// producer writes its own payload into a Writer (btrfs: the output of
// `btrfs send`; LVM thin: the mapped block ranges of a thin device) and
// its consumer reads it back through a Reader, which hands out only data
// that passed its frame checksum and reports the stream complete only
// once the trailer's whole-stream digest matched. A stream is plain bytes
// on an io.Writer/io.Reader, so a transfer over a socket or into a bucket
// is plumbing around it.
//
// Layout (integers big-endian):
//
//	header   magic "CTVSTRM\n" | version u16 | kind u8 | 0 u8 |
//	         volume bytes u64 | allocated bytes u64 |
//	         len u8 + snapshot ID | len u8 + parent snapshot ID (may be empty) |
//	         crc32c u32 of the header's previous bytes
//	frame    'D' | sequence u64 | offset u64 | length u32 |
//	         crc32c u32 of (type, sequence, offset, length, payload) | payload
//	trailer  'T' | frames u64 | payload bytes u64 |
//	         digest of every byte before the trailer: XXH3-128 [16]
//	         (version 1, still read: sha256 [32])
//
// Frames are numbered from 0 with no gap, so a dropped, repeated or
// swapped frame breaks the sequence even when its checksum is intact. A
// sequential kind (btrfs) carries one byte stream: each frame's offset is
// the payload bytes before it. A sparse kind (LVM thin) carries ranges of
// the volume: offsets increase, ranges do not overlap and end within the
// volume, and the payload adds up to the allocated bytes of the header.
package volstream

import (
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// Version is the format version this package writes; it reads this one
// and version 1, which differs only in its digest.
const Version = 2

// Kind says which backend made the stream and so how its payload reads.
type Kind uint8

const (
	// KindBtrfs: the payload is one `btrfs send` stream (sequential).
	KindBtrfs Kind = 1
	// KindLVMThin: the payload is the mapped ranges of a thin device
	// (sparse: each frame lands at its offset).
	KindLVMThin Kind = 2
)

func (k Kind) String() string {
	switch k {
	case KindBtrfs:
		return "btrfs"
	case KindLVMThin:
		return "lvmthin"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Sequential reports whether the payload is one contiguous byte stream.
func (k Kind) Sequential() bool { return k == KindBtrfs }

const (
	// MaxFrameBytes bounds one frame's payload: a reader never allocates
	// more than this for a frame, whatever the stream claims.
	MaxFrameBytes = 4 << 20
	// DefaultFrameBytes is what a Writer packs into a frame.
	DefaultFrameBytes = 1 << 20

	frameData    = 'D'
	frameTrailer = 'T'
	// frameHeaderLen: type, sequence, offset, length, crc32c.
	frameHeaderLen  = 1 + 8 + 8 + 4 + 4
	trailerFixedLen = 1 + 8 + 8 // the trailer without its digest
	headerFixedLen  = 8 + 2 + 1 + 1 + 8 + 8
	maxIDLen        = 255
)

var magic = [8]byte{'C', 'T', 'V', 'S', 'T', 'R', 'M', '\n'}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// The errors a Reader returns, each wrapped with where and what it found.
var (
	// ErrNotAStream: the first bytes are not this format's magic.
	ErrNotAStream = errors.New("not a volume stream")
	// ErrVersion: a version this reader does not know.
	ErrVersion = errors.New("unsupported volume stream version")
	// ErrHeader: the header's checksum or one of its fields is wrong.
	ErrHeader = errors.New("invalid volume stream header")
	// ErrChecksum: a frame's payload or fields do not match its crc32c.
	ErrChecksum = errors.New("volume stream frame checksum mismatch")
	// ErrOrder: a frame is out of sequence, or its range is out of place.
	ErrOrder = errors.New("volume stream frame out of order")
	// ErrTruncated: the stream ended before its trailer.
	ErrTruncated = errors.New("volume stream truncated")
	// ErrDigest: the trailer does not match what was read.
	ErrDigest = errors.New("volume stream digest mismatch")
	// ErrFrame: a frame of an unknown type or an impossible length.
	ErrFrame = errors.New("invalid volume stream frame")
)

// Header describes the stream's snapshot; it is written first, before
// any data.
type Header struct {
	Kind Kind
	// VolumeBytes is the size of the volume the snapshot was taken of:
	// the smallest volume the stream can be restored into.
	VolumeBytes int64
	// AllocatedBytes is the data the producer found allocated in the
	// snapshot when it started: what a transfer's progress counts up to.
	// A sparse stream's payload is exactly this; a sequential stream
	// (btrfs send) adds its own metadata and, when incremental, sends only
	// the changes.
	AllocatedBytes int64
	// SnapshotID is the snapshot the stream holds.
	SnapshotID string
	// ParentSnapshotID, when set, makes the stream incremental: only what
	// changed since that snapshot, which the receiver must hold.
	ParentSnapshotID string
}

// Incremental reports whether the stream needs its parent to be restored.
func (h Header) Incremental() bool { return h.ParentSnapshotID != "" }

// Validate checks the fields a consumer relies on; IDs must be snapshot
// IDs, since a consumer turns them into paths and device names.
func (h Header) Validate() error {
	switch {
	case h.Kind != KindBtrfs && h.Kind != KindLVMThin:
		return fmt.Errorf("%w: unknown kind %d", ErrHeader, h.Kind)
	case h.VolumeBytes <= 0:
		return fmt.Errorf("%w: volume size %d", ErrHeader, h.VolumeBytes)
	case h.AllocatedBytes < 0:
		return fmt.Errorf("%w: allocated bytes %d", ErrHeader, h.AllocatedBytes)
	case h.Kind == KindLVMThin && h.AllocatedBytes > h.VolumeBytes:
		return fmt.Errorf("%w: %d allocated bytes in a %d-byte volume", ErrHeader, h.AllocatedBytes, h.VolumeBytes)
	case !backend.IsSnapshotID(h.SnapshotID):
		return fmt.Errorf("%w: snapshot ID %q", ErrHeader, h.SnapshotID)
	case h.ParentSnapshotID != "" && !backend.IsSnapshotID(h.ParentSnapshotID):
		return fmt.Errorf("%w: parent snapshot ID %q", ErrHeader, h.ParentSnapshotID)
	case h.ParentSnapshotID == h.SnapshotID:
		return fmt.Errorf("%w: snapshot %s is its own parent", ErrHeader, h.SnapshotID)
	}
	return nil
}

// Chunk is one frame's data: Offset is its place in the payload (a
// sequential kind) or in the volume (a sparse kind).
type Chunk struct {
	Offset int64
	Data   []byte
}
