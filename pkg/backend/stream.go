package backend

import (
	"context"
	"io"
)

// Streamer is a pool whose snapshots can leave it as a volume stream
// (pkg/volstream: only allocated data, checksummed end to end) and come
// back into another pool of the same kind. A transfer to another node or
// an export to an object store is plumbing between SendSnapshot on one
// side and a Receive on the other.
type Streamer interface {
	// SendSnapshot writes snapshot id to w as a volume stream; with
	// parentID, only what changed since that snapshot, which the receiver
	// must hold (a snapshot received from the same source). w is not
	// closed; a failed send writes no trailer, so the stream reads as
	// truncated.
	SendSnapshot(ctx context.Context, id, parentID string, w io.Writer) (SendStats, error)
	// ReceiveVolume makes the writable volume req.ID from a stream, sized
	// as CreateVolume sizes it (at least the stream's volume size). It
	// keeps the volume only when the stream verified to its trailer; any
	// refusal leaves nothing behind. An incremental stream whose parent
	// the pool does not hold is ErrFailedPrecondition.
	ReceiveVolume(ctx context.Context, req VolumeRequest, r io.Reader) (*Volume, error)
	// ReceiveSnapshot makes the read-only snapshot id (named name) from a
	// stream: it can restore volumes and be the parent of the next
	// incremental from the same source.
	ReceiveSnapshot(ctx context.Context, id, name string, r io.Reader) (*Snapshot, error)
}

// SendStats says what a send moved.
type SendStats struct {
	// AllocatedBytes is what the snapshot holds allocated when the send
	// started (btrfs: extents of its files; LVM thin: its mapped blocks):
	// what a full stream's payload is about and a transfer's progress
	// counts up to.
	AllocatedBytes int64
	// PayloadBytes is the data the stream carried; StreamBytes adds the
	// framing (what crossed w).
	PayloadBytes, StreamBytes int64
}
