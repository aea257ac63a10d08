package btrfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// btrfs receive -C confines the paths of a stream to the receiving
// directory, but not the subvolumes a stream names by UUID: a snapshot
// command's parent and a clone command's source are looked up in the
// whole filesystem (by received UUID, and a parent also by UUID) and read
// through the filesystem's root. The checksums of a volume stream prove
// only that it arrived as it was written, and whoever can write a bucket
// (or a peer) can write a valid one: so a crafted stream could make the
// received volume a snapshot of another tenant's volume, or clone its
// files' data in. The guard stands between the volume stream and btrfs
// receive and lets through only what this driver's own sends produce: one
// subvolume (a full stream begins with a subvol command, an incremental
// one with a snapshot command), and clones only from that subvolume or
// its parent. The parent itself is checked after the receive
// (checkReceivedSubvolume).

// ErrForeignSubvolume: a stream refers to a subvolume it may not read.
var ErrForeignSubvolume = errors.New("the stream refers to a subvolume outside it")

// The parts of the btrfs send stream format (kernel send.h) the guard reads.
const (
	sendMagic         = "btrfs-stream\x00"
	sendCmdHeaderSize = 10 // le32 length, le16 command, le32 crc32c
	sendCmdSubvol     = 1
	sendCmdSnapshot   = 2
	sendCmdClone      = 16
	sendCmdEnd        = 21
	sendAttrUUID      = 1
	sendAttrCloneUUID = 20
	// maxGuardedCommand bounds what the guard buffers: a subvol, snapshot
	// or clone command is a few paths and numbers.
	maxGuardedCommand = 64 << 10
)

// guardSendStream copies the btrfs send stream from r to w, refusing (an
// error, after which nothing more is written) what a stream of the
// snapshot sent as incremental (or not) may not contain. It stops
// checking at the end command and copies the rest as it is.
func guardSendStream(r io.Reader, w io.Writer, incremental bool) error {
	var head [len(sendMagic) + 4]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return fmt.Errorf("btrfs send stream header: %w", err)
	}
	if string(head[:len(sendMagic)]) != sendMagic {
		return fmt.Errorf("%w: not a btrfs send stream", ErrForeignSubvolume)
	}
	if _, err := w.Write(head[:]); err != nil {
		return err
	}
	var allowed [][]byte // the stream's subvolume and its parent
	for n := 0; ; n++ {
		var h [sendCmdHeaderSize]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return fmt.Errorf("btrfs send stream command %d: %w", n, err)
		}
		length := binary.LittleEndian.Uint32(h[0:4])
		cmd := binary.LittleEndian.Uint16(h[4:6])
		guarded := cmd == sendCmdSubvol || cmd == sendCmdSnapshot || cmd == sendCmdClone
		first := n == 0
		switch {
		case first && incremental && cmd != sendCmdSnapshot:
			return fmt.Errorf("%w: an incremental stream must begin with a snapshot command, not %d", ErrForeignSubvolume, cmd)
		case first && !incremental && cmd != sendCmdSubvol:
			return fmt.Errorf("%w: a full stream must begin with a subvol command, not %d", ErrForeignSubvolume, cmd)
		case !first && (cmd == sendCmdSubvol || cmd == sendCmdSnapshot):
			return fmt.Errorf("%w: a second subvolume in the stream (command %d)", ErrForeignSubvolume, n)
		}
		if _, err := w.Write(h[:]); err != nil {
			return err
		}
		if !guarded {
			if _, err := io.CopyN(w, r, int64(length)); err != nil {
				return fmt.Errorf("btrfs send stream command %d: %w", n, err)
			}
			if cmd == sendCmdEnd {
				_, err := io.Copy(w, r)
				return err
			}
			continue
		}
		if length > maxGuardedCommand {
			return fmt.Errorf("%w: command %d of %d bytes", ErrForeignSubvolume, n, length)
		}
		body := make([]byte, length)
		if _, err := io.ReadFull(r, body); err != nil {
			return fmt.Errorf("btrfs send stream command %d: %w", n, err)
		}
		attrs, err := sendAttrs(body)
		if err != nil {
			return fmt.Errorf("%w: command %d: %w", ErrForeignSubvolume, n, err)
		}
		switch cmd {
		case sendCmdSubvol:
			allowed = append(allowed, attrs[sendAttrUUID])
		case sendCmdSnapshot:
			allowed = append(allowed, attrs[sendAttrUUID], attrs[sendAttrCloneUUID])
		case sendCmdClone:
			src := attrs[sendAttrCloneUUID]
			ok := false
			for _, a := range allowed {
				ok = ok || (len(a) > 0 && bytes.Equal(a, src))
			}
			if !ok {
				return fmt.Errorf("%w: command %d clones from subvolume %x", ErrForeignSubvolume, n, src)
			}
		}
		if _, err := w.Write(body); err != nil {
			return err
		}
	}
}

// sendAttrs reads a command's attributes (le16 type, le16 length, value);
// a repeated one is refused, so that the value checked is the value used.
func sendAttrs(body []byte) (map[uint16][]byte, error) {
	attrs := map[uint16][]byte{}
	for len(body) > 0 {
		if len(body) < 4 {
			return nil, errors.New("attribute header cut short")
		}
		typ := binary.LittleEndian.Uint16(body[0:2])
		n := int(binary.LittleEndian.Uint16(body[2:4]))
		if len(body) < 4+n {
			return nil, errors.New("attribute cut short")
		}
		if _, dup := attrs[typ]; dup {
			return nil, fmt.Errorf("attribute %d repeated", typ)
		}
		attrs[typ] = body[4 : 4+n]
		body = body[4+n:]
	}
	return attrs, nil
}
