package btrfs_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/btrfs"
	"github.com/csi-thin/csi-thin/pkg/btrfs/btrfstest"
	"github.com/csi-thin/csi-thin/pkg/volstream"
)

// A forged btrfs send stream, as whoever can write a bucket (or a peer)
// can make one: the volume stream around it is valid (its checksums are
// not a signature), only the btrfs commands inside are hostile.

// The btrfs send stream format (kernel fs/btrfs/send.h).
const (
	cmdSubvol        = 1
	cmdSnapshot      = 2
	cmdMkfile        = 3
	cmdRename        = 9
	cmdClone         = 16
	cmdEnd           = 21
	attrUUID         = 1
	attrCtransid     = 2
	attrIno          = 3
	attrPath         = 15
	attrPathTo       = 16
	attrFileOffset   = 18
	attrCloneUUID    = 20
	attrCloneCtrans  = 21
	attrClonePath    = 22
	attrCloneOffset  = 23
	attrCloneLen     = 24
	sendStreamHeader = "btrfs-stream\x00\x01\x00\x00\x00"
)

type sendAttr struct {
	typ uint16
	val []byte
}

func u64(n uint64) []byte { return binary.LittleEndian.AppendUint64(nil, n) }

// sendCommand encodes one command with its crc32c (btrfs's: seed 0, no
// final inversion).
func sendCommand(cmd uint16, attrs ...sendAttr) []byte {
	var body []byte
	for _, a := range attrs {
		body = binary.LittleEndian.AppendUint16(body, a.typ)
		body = binary.LittleEndian.AppendUint16(body, uint16(len(a.val)))
		body = append(body, a.val...)
	}
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(body)))
	b = binary.LittleEndian.AppendUint16(b, cmd)
	b = append(b, 0, 0, 0, 0)
	b = append(b, body...)
	crc := ^crc32.Update(0xffffffff, crc32.MakeTable(crc32.Castagnoli), b)
	binary.LittleEndian.PutUint32(b[6:10], crc)
	return b
}

// firstCommandAttrs reads the attributes of a volume stream's first btrfs
// command (the subvol command of a full send: its UUID and ctransid).
func firstCommandAttrs(t *testing.T, stream []byte) map[uint16][]byte {
	t.Helper()
	sr, err := volstream.NewReader(bytes.NewReader(stream))
	if err != nil {
		t.Fatal(err)
	}
	payload, err := io.ReadAll(sr)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(payload, []byte(sendStreamHeader)) {
		t.Fatalf("payload is not a btrfs send stream v1: %q", payload[:17])
	}
	b := payload[len(sendStreamHeader):]
	n := binary.LittleEndian.Uint32(b[0:4])
	body := b[10 : 10+n]
	attrs := map[uint16][]byte{}
	for len(body) > 0 {
		typ, l := binary.LittleEndian.Uint16(body[0:2]), binary.LittleEndian.Uint16(body[2:4])
		attrs[typ] = body[4 : 4+l]
		body = body[4+l:]
	}
	return attrs
}

// wrap puts a btrfs payload into a valid volume stream.
func wrap(t *testing.T, hdr volstream.Header, payload ...[]byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := volstream.NewWriter(&buf, hdr)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range payload {
		if _, err := w.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func subvolumeUUID(t *testing.T, path string) []byte {
	t.Helper()
	for _, line := range strings.Split(btrfsCmd(t, "subvolume", "show", path), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok && k == "UUID" {
			b, err := hex.DecodeString(strings.ReplaceAll(strings.TrimSpace(v), "-", ""))
			if err != nil || len(b) != 16 {
				t.Fatalf("UUID %q of %s", v, path)
			}
			return b
		}
	}
	t.Fatalf("no UUID for %s", path)
	return nil
}

func randomUUID() []byte {
	b := make([]byte, 16)
	rand.Read(b)
	return b
}

// TestForgedStreamCannotReadOtherSubvolumes: btrfs receive -C confines a
// stream's paths, but finds the subvolumes that a snapshot command (its
// parent) and a clone command (its source) name by UUID anywhere in the
// filesystem. A stream forged with another tenant's UUIDs, which that
// tenant's own exports in a shared bucket reveal, would make the restored
// volume a snapshot of that tenant's volume or clone its data in. Each
// such stream, valid as a volume stream, is refused (ErrInvalid,
// btrfs.ErrForeignSubvolume; an incremental's wrong parent
// ErrPrecondition) before btrfs receive sees the command, leaves nothing
// behind, the other tenant's data stays as it was, and an honest stream
// is received afterwards.
func TestForgedStreamCannotReadOtherSubvolumes(t *testing.T) {
	ctx := context.Background()
	src := btrfstest.NewPool(t, 2*backend.GiB, btrfs.Config{NodeName: "node-a"})
	dst := btrfstest.NewPool(t, 2*backend.GiB, btrfs.Config{NodeName: "node-b"})

	// The victim's snapshot, received on dst as a transfer or a restore's
	// parent receives it (ReceiveSnapshot keeps its received UUID).
	victim := newVolume(t, src, "victim", 256*backend.MiB, backend.Source{})
	secret := writePattern(t, filepath.Join(src.VolumePath(victim.ID), "secret"), backend.MiB, 42)
	vs := newSnapshot(t, src, "victim-snap", victim.ID)
	victimStream, _ := send(t, src, vs.ID, "")
	if _, err := dst.ReceiveSnapshot(ctx, vs.ID, "victim-copy", bytes.NewReader(victimStream)); err != nil {
		t.Fatal(err)
	}
	sub := firstCommandAttrs(t, victimStream)
	receivedUUID, receivedCtransid := sub[attrUUID], sub[attrCtransid]
	// A live volume of another tenant on dst, found by its own UUID.
	live := newVolume(t, dst, "victim-live", 256*backend.MiB, backend.Source{})
	liveSecret := writePattern(t, filepath.Join(dst.VolumePath(live.ID), "secret"), backend.MiB, 43)
	liveUUID := subvolumeUUID(t, dst.VolumePath(live.ID))

	// The attacker's own snapshot on dst, as the parent of an incremental.
	own := newVolume(t, src, "own", 256*backend.MiB, backend.Source{})
	writePattern(t, filepath.Join(src.VolumePath(own.ID), "mine"), backend.MiB, 44)
	ownSnap := newSnapshot(t, src, "own-snap", own.ID)
	ownStream, _ := send(t, src, ownSnap.ID, "")
	if _, err := dst.ReceiveSnapshot(ctx, ownSnap.ID, "own-copy", bytes.NewReader(ownStream)); err != nil {
		t.Fatal(err)
	}

	name := backend.SnapshotIDFor("forged")
	full := volstream.Header{Kind: volstream.KindBtrfs, VolumeBytes: 256 * backend.MiB, SnapshotID: name}
	incremental := full
	incremental.ParentSnapshotID = ownSnap.ID
	subvol := sendCommand(cmdSubvol, sendAttr{attrPath, []byte(name)}, sendAttr{attrUUID, randomUUID()}, sendAttr{attrCtransid, u64(1)})
	mkfile := [][]byte{
		sendCommand(cmdMkfile, sendAttr{attrPath, []byte("o257-1-0")}, sendAttr{attrIno, u64(257)}),
		sendCommand(cmdRename, sendAttr{attrPath, []byte("o257-1-0")}, sendAttr{attrPathTo, []byte("stolen")}),
	}
	cloneFrom := func(uuid, ctransid []byte) []byte {
		return sendCommand(cmdClone, sendAttr{attrPath, []byte("stolen")}, sendAttr{attrFileOffset, u64(0)},
			sendAttr{attrCloneLen, u64(uint64(backend.MiB))}, sendAttr{attrCloneUUID, uuid}, sendAttr{attrCloneCtrans, ctransid},
			sendAttr{attrClonePath, []byte("secret")}, sendAttr{attrCloneOffset, u64(0)})
	}
	snapshotOf := func(uuid, ctransid []byte) []byte {
		return sendCommand(cmdSnapshot, sendAttr{attrPath, []byte(name)}, sendAttr{attrUUID, randomUUID()}, sendAttr{attrCtransid, u64(1)},
			sendAttr{attrCloneUUID, uuid}, sendAttr{attrCloneCtrans, ctransid})
	}
	end := sendCommand(cmdEnd)
	head := []byte(sendStreamHeader)

	tests := []struct {
		name   string
		stream []byte
		want   []error
	}{
		{"clone from another tenant's received snapshot",
			wrap(t, full, head, subvol, mkfile[0], mkfile[1], cloneFrom(receivedUUID, receivedCtransid), end),
			[]error{backend.ErrInvalid, btrfs.ErrForeignSubvolume}},
		{"full stream that snapshots another tenant's received snapshot",
			wrap(t, full, head, snapshotOf(receivedUUID, receivedCtransid), end),
			[]error{backend.ErrInvalid, btrfs.ErrForeignSubvolume}},
		{"full stream that snapshots another tenant's live volume",
			wrap(t, full, head, snapshotOf(liveUUID, u64(1)), end),
			[]error{backend.ErrInvalid, btrfs.ErrForeignSubvolume}},
		{"incremental that clones from another tenant",
			wrap(t, incremental, head, snapshotOf(subvolumeUUID(t, filepath.Join(dst.MountPath(), "csi-thin", "snapshots", ownSnap.ID)), u64(1)),
				mkfile[0], mkfile[1], cloneFrom(receivedUUID, receivedCtransid), end),
			[]error{backend.ErrInvalid, btrfs.ErrForeignSubvolume}},
		{"incremental on another tenant's volume instead of its parent",
			wrap(t, incremental, head, snapshotOf(liveUUID, u64(1)), end),
			[]error{backend.ErrPrecondition}},
		{"two subvolumes in one stream",
			wrap(t, full, head, subvol, sendCommand(cmdSubvol, sendAttr{attrPath, []byte("second")}, sendAttr{attrUUID, randomUUID()}, sendAttr{attrCtransid, u64(1)}), end),
			[]error{backend.ErrInvalid, btrfs.ErrForeignSubvolume}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := backend.VolumeIDFor(tc.name)
			v, err := dst.ReceiveVolume(ctx, backend.VolumeRequest{ID: id, Name: tc.name}, bytes.NewReader(tc.stream))
			if err == nil {
				t.Fatalf("forged stream received as %s: %v", v.ID, treeSums(t, dst.VolumePath(id)))
			}
			for _, want := range tc.want {
				if !errors.Is(err, want) {
					t.Fatalf("want %v, got %v", want, err)
				}
			}
			if _, err := dst.GetVolume(ctx, id); !errors.Is(err, backend.ErrNotFound) {
				t.Fatalf("refused volume exists: %v", err)
			}
			sid := backend.SnapshotIDFor(tc.name)
			if _, err := dst.ReceiveSnapshot(ctx, sid, tc.name, bytes.NewReader(tc.stream)); !errors.Is(err, tc.want[len(tc.want)-1]) {
				t.Fatalf("as a snapshot: want %v, got %v", tc.want[len(tc.want)-1], err)
			}
			if _, err := dst.GetSnapshot(ctx, sid); !errors.Is(err, backend.ErrNotFound) {
				t.Fatalf("refused snapshot exists: %v", err)
			}
			assertNoLeftovers(t, dst, true)
			if got := fileSum(t, filepath.Join(dst.VolumePath(live.ID), "secret")); got != liveSecret {
				t.Fatal("the live victim's data changed")
			}
		})
	}
	// The honest streams still go in, whole.
	got, err := dst.ReceiveVolume(ctx, backend.VolumeRequest{ID: backend.VolumeIDFor("honest")}, bytes.NewReader(victimStream))
	if err != nil {
		t.Fatalf("the honest stream: %v", err)
	}
	if sum := fileSum(t, filepath.Join(dst.VolumePath(got.ID), "secret")); sum != secret {
		t.Fatal("the honest stream's data differs")
	}
	writePattern(t, filepath.Join(src.VolumePath(own.ID), "more"), backend.MiB, 45)
	child := newSnapshot(t, src, "own-child", own.ID)
	if _, err := dst.ReceiveSnapshot(ctx, child.ID, "own-child", bytes.NewReader(sendIncremental(t, src, child.ID, ownSnap.ID, nil))); err != nil {
		t.Fatalf("the honest incremental: %v", err)
	}
	assertNoLeftovers(t, dst, true)
}
