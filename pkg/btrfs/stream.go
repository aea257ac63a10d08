package btrfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/command"
	"github.com/csi-thin/csi-thin/pkg/volstream"
)

// A snapshot leaves the pool as a volume stream (pkg/volstream) whose
// payload is `btrfs send` of its read-only subvolume (with -p, only the
// changes since an earlier snapshot). A stream comes back in by `btrfs
// receive` into a scratch subvolume, receiving/<id>, which the verifying
// reader feeds; only a stream whose trailer matched becomes an object, by
// the pool's usual commit (a record, written before the object is in
// place). receiving/<id> exists only while id is being received, so what
// a crash leaves there, and a snapshot in place without a record while it
// exists, is provably an unfinished receive: Open removes them.
//
// The scratch is a subvolume, not a directory, for the quota: a volume's
// level-1 qgroup, with its limit, is set on the scratch before the data
// arrives, and with simple quotas the kernel puts the subvolume that
// btrfs receive creates inside it into that qgroup, so every received
// byte is charged to the volume and bounded by its size as it lands
// (simple quotas charge an extent when it is written, to the qgroups of
// that moment: a qgroup made after the receive would stay empty). The
// volume's record names that qgroup.

var _ backend.Streamer = (*Pool)(nil)

// SendSnapshot writes snapshot id to w as a volume stream; with parentID,
// only what changed since that snapshot, which the receiver must hold (a
// snapshot received from the same source). w is not closed.
func (p *Pool) SendSnapshot(ctx context.Context, id, parentID string, w io.Writer) (backend.SendStats, error) {
	var st backend.SendStats
	snap, err := p.GetSnapshot(ctx, id)
	if err != nil {
		return st, fmt.Errorf("send: %w", err)
	}
	streamer, err := command.StreamerOf(p.cfg.Runner)
	if err != nil {
		return st, fmt.Errorf("send snapshot %s: %w", id, err)
	}
	args := []string{"send", "-q"}
	if parentID != "" {
		if _, err := p.GetSnapshot(ctx, parentID); err != nil {
			return st, fmt.Errorf("send: parent: %w", err)
		}
		if err := p.ensureReadOnly(ctx, p.snapshotPath(parentID)); err != nil {
			return st, fmt.Errorf("send: parent %s read-only: %w", parentID, classify(err))
		}
		args = append(args, "-p", p.snapshotPath(parentID))
	}
	path := p.snapshotPath(id)
	// btrfs sends only read-only subvolumes; a crash can leave a snapshot
	// writable until the next start (CreateSnapshot sets the flag last).
	if err := p.ensureReadOnly(ctx, path); err != nil {
		return st, fmt.Errorf("send: snapshot %s read-only: %w", id, classify(err))
	}
	if st.AllocatedBytes, err = p.cli.allocated(ctx, path); err != nil {
		return st, fmt.Errorf("send: size of snapshot %s: %w", id, classify(err))
	}
	sw, err := volstream.NewWriter(w, volstream.Header{
		Kind: volstream.KindBtrfs, VolumeBytes: snap.SizeBytes, AllocatedBytes: st.AllocatedBytes,
		SnapshotID: id, ParentSnapshotID: parentID,
	})
	if err != nil {
		return st, fmt.Errorf("send snapshot %s: %w", id, err)
	}
	start := time.Now()
	_, err = streamer.Stream(ctx, nil, sw, "btrfs", append(args, path)...)
	st.PayloadBytes = sw.PayloadBytes()
	if err != nil {
		st.StreamBytes = sw.StreamBytes()
		return st, fmt.Errorf("send snapshot %s: %w", id, classify(err))
	}
	// Without a trailer the receiver refuses the stream: nothing half
	// sent can pass for whole.
	err = sw.Close()
	st.PayloadBytes, st.StreamBytes = sw.PayloadBytes(), sw.StreamBytes()
	if err != nil {
		return st, fmt.Errorf("send snapshot %s: %w", id, err)
	}
	klog.InfoS("btrfs snapshot sent", "snapshotID", id, "parentID", parentID, "allocatedBytes", st.AllocatedBytes,
		"streamBytes", st.StreamBytes, "duration", time.Since(start))
	return st, nil
}

// ReceiveVolume creates volume req.ID from a volume stream, as CreateVolume
// does (size at least the stream's volume size, its level-1 qgroup and
// limit, record, then in place). An incremental stream needs its parent
// among this pool's snapshots. A stream that is corrupt, truncated or
// fails to apply is refused with what was wrong, and leaves nothing: no
// subvolume, record or qgroup.
func (p *Pool) ReceiveVolume(ctx context.Context, req backend.VolumeRequest, r io.Reader) (*backend.Volume, error) {
	if err := backend.CheckVolumeID(req.ID); err != nil {
		return nil, fmt.Errorf("%w: %w", backend.ErrInvalid, err)
	}
	if req.AccessType == backend.AccessBlock {
		return nil, fmt.Errorf("raw block volumes: %w (btrfs serves filesystems; use the lvmthin backend)", backend.ErrUnsupported)
	}
	if req.FsType != "" && req.FsType != FsTypeBtrfs {
		return nil, fmt.Errorf("fsType %q: %w (a btrfs pool serves btrfs subvolumes)", req.FsType, backend.ErrUnsupported)
	}
	if req.Source.Kind != backend.SourceNone {
		return nil, fmt.Errorf("a received volume's source is its stream, not %s %s: %w", req.Source.Kind, req.Source.ID, backend.ErrInvalid)
	}
	hdr, sr, err := p.openStream(ctx, r)
	if err != nil {
		return nil, fmt.Errorf("receive volume %s: %w", req.ID, err)
	}
	size, err := backend.ResolveSize(req.RequiredBytes, req.LimitBytes, defaultVolumeBytes, hdr.VolumeBytes, allocUnit)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	if v, done, err := p.existingVolume(req, size); done {
		p.mu.Unlock()
		return v, err
	}
	err = p.checkRoom(size)
	p.mu.Unlock()
	if err != nil {
		return nil, err
	}

	received, qg, err := p.receive(ctx, req.ID, hdr, sr, size)
	if err != nil {
		return nil, fmt.Errorf("receive volume %s: %w", req.ID, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if v, done, err := p.existingVolume(req, size); done {
		p.discardReceiving(context.WithoutCancel(ctx), req.ID)
		return v, err
	}
	// Writable in place, not through a writable snapshot: the data stays
	// charged to the volume (a snapshot would be charged nothing under
	// simple quotas). -f: btrfs asks for it because this drops the
	// received UUID, which only a snapshot needs, as an incremental's
	// parent.
	if err := p.cli.setWritableForce(ctx, received); err != nil {
		p.discardReceiving(context.WithoutCancel(ctx), req.ID)
		return nil, fmt.Errorf("receive volume %s: make writable: %w", req.ID, classify(err))
	}
	subvolID, err := SubvolumeIDOf(received)
	if err == nil {
		// Full qgroups have no auto hierarchy: the member is added here
		// (simple quotas did it at creation; "exists" is fine).
		err = p.cli.assignQgroup(ctx, levelZeroQgroup(subvolID), qg, p.mountPath)
	}
	if err != nil {
		p.discardReceiving(context.WithoutCancel(ctx), req.ID)
		return nil, fmt.Errorf("receive volume %s: charge it to %s: %w", req.ID, qg, classify(err))
	}
	staging := p.stagingPath(req.ID)
	if err := p.discardStaging(ctx, req.ID); err != nil {
		p.discardReceiving(context.WithoutCancel(ctx), req.ID)
		return nil, err
	}
	if err := os.Rename(received, staging); err != nil {
		p.discardReceiving(context.WithoutCancel(ctx), req.ID)
		return nil, fmt.Errorf("receive volume %s: move to staging: %w", req.ID, err)
	}
	vol := &backend.Volume{
		ID: req.ID, Name: req.Name, SizeBytes: size, AccessType: backend.AccessMount, FsType: FsTypeBtrfs,
		Parameters: req.Parameters, Node: p.cfg.NodeName, CreatedAt: time.Now().UTC().Truncate(time.Second),
	}
	// The commit of CreateVolume, with the qgroup already in place.
	final := p.volumePath(req.ID)
	err = p.writeRecord(req.ID, &record{Volume: vol, SubvolumeID: subvolID, Qgroup: qg})
	if err == nil {
		if err = os.Rename(staging, final); err != nil {
			os.Remove(p.metaPath(req.ID))
			err = fmt.Errorf("move %s into place: %w", req.ID, err)
		} else {
			err = syncDir(filepath.Dir(final))
		}
	}
	if err != nil {
		p.discardStaging(context.WithoutCancel(ctx), req.ID)
		p.discardReceiving(context.WithoutCancel(ctx), req.ID)
		return nil, err
	}
	p.provisioned.Add(size)
	// The scratch's qgroup is the volume's now: no longer to be reaped
	// (a crash before this line leaves it scheduled, which is harmless:
	// it is destroyed only once it has no member, after the delete).
	if err := os.Remove(filepath.Join(p.reapDir(), strings.ReplaceAll(qg, "/", "_"))); err != nil && !errors.Is(err, os.ErrNotExist) {
		klog.ErrorS(err, "unschedule the received volume's qgroup", "volumeID", req.ID, "qgroup", qg)
	}
	if err := p.finishReceiving(ctx, req.ID); err != nil {
		klog.ErrorS(err, "scratch of a finished receive left for the next start", "volumeID", req.ID)
	}
	klog.InfoS("btrfs volume received", "volumeID", req.ID, "name", req.Name, "sizeBytes", size,
		"snapshotID", hdr.SnapshotID, "parentID", hdr.ParentSnapshotID, "streamBytes", sr.StreamBytes())
	return p.withCondition(vol), nil
}

// existingVolume answers a receive whose volume exists already, as
// CreateVolume does: the same volume for a compatible request, ErrExists
// otherwise. done is false when there is none. Called under p.mu.
func (p *Pool) existingVolume(req backend.VolumeRequest, size int64) (*backend.Volume, bool, error) {
	existing, err := p.readRecord(req.ID)
	if errors.Is(err, backend.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, true, err
	}
	v := existing.Volume
	if v == nil || v.Source.Kind != backend.SourceNone || !backend.Fits(v.SizeBytes, req.RequiredBytes, req.LimitBytes) || v.SizeBytes < size {
		return nil, true, fmt.Errorf("volume %s exists: %w", req.ID, backend.ErrExists)
	}
	return p.withCondition(v), true, nil
}

// ReceiveSnapshot creates snapshot id from a volume stream: the received
// read-only subvolume itself, which keeps its received UUID, so that it
// can be the parent of a later incremental stream of the same source, or
// the source of a restore (CreateVolume). Refused streams leave nothing,
// as for ReceiveVolume.
//
// A read-only subvolume cannot move to another directory, and a snapshot
// of it would leave the data charged (simple quotas) to a qgroup whose
// subvolume is gone, so btrfs receive writes straight into snapshots/,
// where the subvolume takes the name it had on the sender, and a rename
// within the directory (which btrfs allows) gives it its ID. Until its
// record is written, the marker receiving/<id> (a file naming the sent
// snapshot) says that what is there without a record is ours to remove.
func (p *Pool) ReceiveSnapshot(ctx context.Context, id, name string, r io.Reader) (*backend.Snapshot, error) {
	if err := backend.CheckSnapshotID(id); err != nil {
		return nil, fmt.Errorf("%w: %w", backend.ErrInvalid, err)
	}
	hdr, sr, err := p.openStream(ctx, r)
	if err != nil {
		return nil, fmt.Errorf("receive snapshot %s: %w", id, err)
	}
	if s, err := p.GetSnapshot(ctx, id); err == nil {
		if s.SizeBytes != hdr.VolumeBytes {
			return nil, fmt.Errorf("snapshot %s of %d bytes: %w", id, s.SizeBytes, backend.ErrExists)
		}
		return s, nil
	}
	streamer, err := command.StreamerOf(p.cfg.Runner)
	if err != nil {
		return nil, err
	}
	if _, busy := inflight.LoadOrStore(p.receivingDir(id), true); busy {
		return nil, fmt.Errorf("receive snapshot %s: being received already: %w", id, backend.ErrBusy)
	}
	defer inflight.Delete(p.receivingDir(id))
	// Snapshot receives land in snapshots/ one at a time: what appears
	// there without a record during one is then its own (a snapshot that
	// CreateSnapshot makes has its record before it is in place).
	lock, _ := snapshotReceives.LoadOrStore(p.base, &sync.Mutex{})
	lock.(*sync.Mutex).Lock()
	defer lock.(*sync.Mutex).Unlock()
	before, err := p.startSnapshotReceive(ctx, id, hdr)
	if err != nil {
		return nil, fmt.Errorf("receive snapshot %s: %w", id, err)
	}
	// undo removes what the receive made; under p.mu.
	undo := func(err error) (*backend.Snapshot, error) {
		if derr := p.removeNewSnapshots(context.WithoutCancel(ctx), before); derr != nil {
			klog.ErrorS(derr, "remove a refused receive", "snapshotID", id)
		} else if derr := p.discardReceiving(context.WithoutCancel(ctx), id); derr != nil {
			klog.ErrorS(derr, "remove a refused receive", "snapshotID", id)
		}
		return nil, fmt.Errorf("receive snapshot %s: %w", id, err)
	}
	fail := func(err error) (*backend.Snapshot, error) {
		p.mu.Lock()
		defer p.mu.Unlock()
		return undo(err)
	}
	dir := filepath.Join(p.base, "snapshots")
	// -e: one subvolume, up to btrfs's own end marker; -C: confined to
	// snapshots/.
	if err := p.checkReceived(sr, runReceive(ctx, streamer, sr, hdr, dir)); err != nil {
		return fail(err)
	}
	received := p.snapshotPath(hdr.SnapshotID)
	if err := p.checkReceivedSubvolume(ctx, hdr, received); err != nil {
		return fail(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.removeNewSnapshots(ctx, append(before, hdr.SnapshotID)); err != nil {
		return nil, err
	}
	final := p.snapshotPath(id)
	if received != final {
		if err := os.Rename(received, final); err != nil {
			return undo(fmt.Errorf("name it %s: %w", id, err))
		}
	}
	subvolID, err := SubvolumeIDOf(final)
	snap := &backend.Snapshot{
		ID: id, Name: name, SizeBytes: hdr.VolumeBytes, Node: p.cfg.NodeName, CreatedAt: time.Now().UTC(), ReadyToUse: true,
	}
	if err == nil {
		err = p.writeRecord(id, &record{Snapshot: snap, SubvolumeID: subvolID})
	}
	if err != nil {
		return undo(err)
	}
	if err := p.discardReceiving(ctx, id); err != nil {
		klog.ErrorS(err, "marker of a finished receive left for the next start", "snapshotID", id)
	}
	klog.InfoS("btrfs snapshot received", "snapshotID", id, "name", name, "sourceSnapshotID", hdr.SnapshotID,
		"parentID", hdr.ParentSnapshotID, "streamBytes", sr.StreamBytes())
	return snap, nil
}

// startSnapshotReceive writes the marker receiving/<id> naming the sent
// snapshot and returns what snapshots/ holds before the receive.
func (p *Pool) startSnapshotReceive(ctx context.Context, id string, hdr volstream.Header) ([]string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.discardReceiving(ctx, id); err != nil {
		return nil, err
	}
	for _, sid := range []string{id, hdr.SnapshotID} {
		if _, err := os.Lstat(p.snapshotPath(sid)); err == nil {
			return nil, fmt.Errorf("%s exists already (a snapshot of this pool, or one without a record, left for an operator): %w", p.snapshotPath(sid), backend.ErrPrecondition)
		}
	}
	entries, err := os.ReadDir(filepath.Join(p.base, "snapshots"))
	if err != nil {
		return nil, err
	}
	var before []string
	for _, e := range entries {
		before = append(before, e.Name())
	}
	marker := p.receivingDir(id)
	if err := os.WriteFile(marker, []byte(hdr.SnapshotID), 0o600); err != nil {
		return nil, fmt.Errorf("receive marker: %w", err)
	}
	if err := syncDir(filepath.Dir(marker)); err != nil {
		return nil, err
	}
	return before, nil
}

// removeNewSnapshots removes the subvolumes in snapshots/ that are not in
// keep and have no record: what a receive made besides its own. Under p.mu.
func (p *Pool) removeNewSnapshots(ctx context.Context, keep []string) error {
	entries, err := os.ReadDir(filepath.Join(p.base, "snapshots"))
	if err != nil {
		return err
	}
	for _, e := range entries {
		if slices.Contains(keep, e.Name()) {
			continue
		}
		if _, err := p.readRecord(e.Name()); err == nil || !backend.IsSnapshotID(e.Name()) {
			continue
		}
		if err := p.removeSubvolume(ctx, e.Name(), p.snapshotPath(e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// openStream reads a stream's header and checks that this pool can apply
// it: a btrfs stream, and for an incremental one a parent it holds.
func (p *Pool) openStream(ctx context.Context, r io.Reader) (volstream.Header, *volstream.Reader, error) {
	sr, err := volstream.NewReader(r)
	if err != nil {
		return volstream.Header{}, nil, fmt.Errorf("%w: %w", backend.ErrInvalid, err)
	}
	hdr := sr.Header()
	if hdr.Kind != volstream.KindBtrfs {
		return hdr, nil, fmt.Errorf("a %s stream cannot be received into btrfs: %w", hdr.Kind, backend.ErrInvalid)
	}
	if hdr.Incremental() {
		if _, err := p.GetSnapshot(ctx, hdr.ParentSnapshotID); err != nil {
			return hdr, nil, fmt.Errorf("incremental stream of %s needs its parent snapshot %s here: %w", hdr.SnapshotID, hdr.ParentSnapshotID, backend.ErrPrecondition)
		}
	}
	return hdr, sr, nil
}

// inflight holds the receiving/<id> paths in use: a second receive of
// the same ID must not remove the first one's scratch.
var inflight sync.Map

// snapshotReceives holds a mutex per pool that serialises snapshot
// receives (ReceiveSnapshot).
var snapshotReceives sync.Map

func (p *Pool) receivingDir(id string) string { return filepath.Join(p.base, "receiving", id) }

// receive runs `btrfs receive` of the stream into the scratch subvolume
// receiving/<id> (for a volume, limited to limit bytes through the
// level-1 qgroup it returns, the volume's to be) and returns the received
// subvolume, once the stream verified to its end and (incremental) the
// subvolume turned out a snapshot of the parent this pool holds. On any
// failure nothing is left.
func (p *Pool) receive(ctx context.Context, id string, hdr volstream.Header, sr *volstream.Reader, limit int64) (string, string, error) {
	streamer, err := command.StreamerOf(p.cfg.Runner)
	if err != nil {
		return "", "", err
	}
	dir := p.receivingDir(id)
	if _, busy := inflight.LoadOrStore(dir, true); busy {
		return "", "", fmt.Errorf("%s is being received already: %w", id, backend.ErrBusy)
	}
	defer inflight.Delete(dir)
	fail := func(err error) (string, string, error) {
		p.mu.Lock()
		defer p.mu.Unlock()
		if derr := p.discardReceiving(context.WithoutCancel(ctx), id); derr != nil {
			klog.ErrorS(derr, "remove a refused receive", "volumeID", id)
		}
		return "", "", err
	}
	qg, err := p.makeScratch(ctx, id, limit)
	if err != nil {
		return fail(err)
	}
	// -C confines btrfs receive to the scratch: paths in the stream
	// cannot reach the rest of the pool; -e: one subvolume, up to btrfs's
	// own end marker.
	if err := p.checkReceived(sr, runReceive(ctx, streamer, sr, hdr, dir)); err != nil {
		return fail(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fail(fmt.Errorf("receive scratch: %w", err))
	}
	received := filepath.Join(dir, hdr.SnapshotID)
	if len(entries) != 1 || entries[0].Name() != hdr.SnapshotID {
		return fail(fmt.Errorf("stream of %s received %d entries, not one subvolume named after it: %w", hdr.SnapshotID, len(entries), backend.ErrInvalid))
	}
	if err := p.checkReceivedSubvolume(ctx, hdr, received); err != nil {
		return fail(err)
	}
	return received, qg, nil
}

// runReceive runs `btrfs receive` into dir on the stream's payload,
// through the guard (guardSendStream). A guard's refusal is
// ErrForeignSubvolume, which checkReceived reports before anything else.
func runReceive(ctx context.Context, streamer command.Streamer, sr *volstream.Reader, hdr volstream.Header, dir string) error {
	pr, pw := io.Pipe()
	guarded := make(chan error, 1)
	go func() {
		err := guardSendStream(sr, pw, hdr.Incremental())
		pw.CloseWithError(err) // nil: EOF
		guarded <- err
	}()
	_, err := streamer.Stream(ctx, pr, nil, "btrfs", "receive", "-e", "-C", dir)
	pr.CloseWithError(errors.New("btrfs receive ended")) // unblocks the guard's write past btrfs's end marker
	if gerr := <-guarded; errors.Is(gerr, ErrForeignSubvolume) {
		return fmt.Errorf("stream of %s refused: %w", hdr.SnapshotID, gerr)
	}
	return err
}

// checkReceived decides a receive from the stream first: whatever btrfs
// receive said, a stream that did not verify to its trailer is refused;
// then one the guard refused (ErrInvalid: it is not what a send makes).
func (p *Pool) checkReceived(sr *volstream.Reader, receiveErr error) error {
	if !sr.Verified() {
		// receive stops at btrfs's own end marker: read the rest, so that
		// a bad frame or trailer after it is still seen.
		if _, err := io.Copy(io.Discard, sr); err != nil || !sr.Verified() {
			if err == nil {
				err = errors.New("stream ended unverified")
			}
			return fmt.Errorf("%w: %w", backend.ErrInvalid, err)
		}
	}
	if errors.Is(receiveErr, ErrForeignSubvolume) {
		return fmt.Errorf("%w: %w", backend.ErrInvalid, receiveErr)
	}
	if receiveErr != nil {
		return fmt.Errorf("btrfs receive: %w", classify(receiveErr))
	}
	return nil
}

// checkReceivedSubvolume checks that the stream made the subvolume it
// names and, for an incremental, made it from the parent this pool holds:
// btrfs receive picks the parent by UUID anywhere in the filesystem,
// where a tenant can make subvolumes of its own.
func (p *Pool) checkReceivedSubvolume(ctx context.Context, hdr volstream.Header, received string) error {
	if _, err := SubvolumeIDOf(received); err != nil {
		return fmt.Errorf("stream of %s: %w: %w", hdr.SnapshotID, backend.ErrInvalid, err)
	}
	if !hdr.Incremental() {
		return nil
	}
	got, err := p.cli.subvolumeUUIDs(ctx, received)
	if err != nil {
		return fmt.Errorf("received subvolume: %w", classify(err))
	}
	parent, err := p.cli.subvolumeUUIDs(ctx, p.snapshotPath(hdr.ParentSnapshotID))
	if err != nil {
		return fmt.Errorf("parent snapshot %s: %w", hdr.ParentSnapshotID, classify(err))
	}
	if got.parent != parent.uuid {
		return fmt.Errorf("incremental stream of %s applied to subvolume %s, not to snapshot %s (%s): %w",
			hdr.SnapshotID, got.parent, hdr.ParentSnapshotID, parent.uuid, backend.ErrPrecondition)
	}
	return nil
}

// makeScratch creates the scratch subvolume receiving/<id>, after
// removing a leftover, and for limit > 0 its level-1 qgroup with that
// limit, which it returns.
func (p *Pool) makeScratch(ctx context.Context, id string, limit int64) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.discardReceiving(ctx, id); err != nil {
		return "", err
	}
	dir := p.receivingDir(id)
	if err := p.cli.createSubvolume(ctx, dir); err != nil {
		return "", fmt.Errorf("receive scratch: %w", classify(err))
	}
	if limit <= 0 {
		return "", nil
	}
	subvolID, err := SubvolumeIDOf(dir)
	if err != nil {
		return "", err
	}
	// Scheduled first, so that no crash loses it; reapQgroups destroys
	// it only once it has no member, and the scratch (then the volume)
	// is one from the next step on.
	if err := p.scheduleReap(volumeQgroup(subvolID)); err != nil {
		return "", err
	}
	qg, err := p.setUpVolumeQgroup(ctx, subvolID, limit)
	if err != nil {
		return "", fmt.Errorf("receive scratch: %w", err)
	}
	return qg, nil
}

// discardReceiving removes what an unfinished receive of id left: a
// volume's scratch subvolume receiving/<id> with what was received into
// it, or a snapshot's marker file receiving/<id> with the subvolume it
// names and snapshot <id>, where they have no record. Under p.mu.
func (p *Pool) discardReceiving(ctx context.Context, id string) error {
	path := p.receivingDir(id)
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("receive scratch of %s: %w", id, err)
	}
	rec, recErr := p.readRecord(id)
	if fi.Mode().IsRegular() {
		sent, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("receive marker of %s: %w", id, err)
		}
		for _, sid := range []string{id, string(sent)} {
			if !backend.IsSnapshotID(sid) {
				continue
			}
			if _, err := p.readRecord(sid); !errors.Is(err, backend.ErrNotFound) {
				continue
			}
			if _, err := os.Lstat(p.snapshotPath(sid)); err == nil {
				if err := p.removeSubvolume(ctx, id, p.snapshotPath(sid)); err != nil {
					return err
				}
			}
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("receive marker of %s: %w", id, err)
		}
		return syncDir(filepath.Dir(path))
	}
	subvolID, err := SubvolumeIDOf(path)
	if err != nil {
		return fmt.Errorf("receive scratch of %s: %w", id, err)
	}
	// Its qgroup is the volume's once the record names it; otherwise it
	// goes (scheduled already by makeScratch).
	if qg := volumeQgroup(subvolID); recErr != nil || rec.Qgroup != qg {
		if err := p.scheduleReap(qg); err != nil {
			return err
		}
	}
	if err := p.removeSubvolume(ctx, id, path); err != nil {
		return err
	}
	p.reapQgroups()
	klog.V(2).InfoS("removed receive scratch", "volumeID", id)
	return nil
}

// removeSubvolume deletes a subvolume that never became an object, with
// what is nested in it, and their level-0 qgroups. The kernel keeps a
// deleted subvolume's qgroup until the cleaner has dropped the subvolume
// (and then removes it only if it was empty at that moment), so this
// waits for the cleaner: a refused receive must not leave qgroups behind.
func (p *Pool) removeSubvolume(ctx context.Context, id, path string) error {
	subvolID, err := SubvolumeIDOf(path)
	if err != nil {
		return err
	}
	ids := []uint64{subvolID}
	if nested, err := p.nestedSubvolumes(ctx, path, subvolID); err == nil {
		ids = append(nested, ids...)
	}
	if err := p.deleteTree(ctx, id, path); err != nil {
		return fmt.Errorf("remove unfinished receive %s: %w", path, err)
	}
	p.dropQgroups(ctx, id, ids)
	return nil
}

// background counts the clean-ups finishReceiving left running.
var background sync.WaitGroup

// Settle waits for the clean-ups that successful receives left running
// (tests and benchmarks, before they count qgroups).
func (p *Pool) Settle() { background.Wait() }

// finishReceiving removes the emptied scratch of a received volume. Its
// level-0 qgroup can go only once the cleaner has dropped it, which the
// volume need not wait for: that wait runs in the background (a crash
// during it leaves an empty 0/<id> qgroup, which charges nothing).
// Under p.mu.
func (p *Pool) finishReceiving(ctx context.Context, id string) error {
	path := p.receivingDir(id)
	subvolID, err := SubvolumeIDOf(path)
	if err != nil {
		return err
	}
	if err := p.deleteTree(ctx, id, path); err != nil {
		return fmt.Errorf("remove the scratch of %s: %w", id, err)
	}
	background.Add(1)
	go func() {
		defer background.Done()
		p.dropQgroups(context.WithoutCancel(ctx), id, []uint64{subvolID})
	}()
	return nil
}

// dropQgroups waits for the cleaner to drop the deleted subvolumes ids,
// then destroys their level-0 qgroups (best effort: newer kernels remove
// those that were empty themselves).
func (p *Pool) dropQgroups(ctx context.Context, id string, ids []uint64) {
	args := []string{"subvolume", "sync", p.mountPath}
	for _, n := range ids {
		args = append(args, strconv.FormatUint(n, 10))
	}
	// The commit wakes the cleaner; sync waits for it.
	if _, err := p.cli.btrfs(ctx, "filesystem", "sync", p.mountPath); err != nil {
		klog.V(2).InfoS("commit after removing a receive", "volumeID", id, "err", err)
	}
	if _, err := p.cli.btrfs(ctx, args...); err != nil {
		klog.V(2).InfoS("wait for the cleaner after removing a receive", "volumeID", id, "err", err)
	}
	for _, n := range ids {
		if err := p.cli.destroyQgroup(ctx, n, p.mountPath); err != nil {
			klog.V(4).InfoS("qgroup not destroyed", "volumeID", id, "qgroup", levelZeroQgroup(n), "err", err)
		}
	}
}

// recoverReceiving removes every unfinished receive (Open, under p.mu).
func (p *Pool) recoverReceiving(ctx context.Context) error {
	entries, err := os.ReadDir(filepath.Join(p.base, "receiving"))
	if err != nil {
		return err
	}
	for _, e := range entries {
		id := e.Name()
		if !backend.IsVolumeID(id) && !backend.IsSnapshotID(id) {
			klog.InfoS("leaving unknown entry in receiving alone", "entry", id)
			continue
		}
		klog.InfoS("removing an unfinished receive", "volumeID", id)
		if err := p.discardReceiving(ctx, id); err != nil {
			p.needsAttention(id, fmt.Errorf("remove unfinished receive: %w", err))
		}
	}
	return nil
}

// allocated is the data the files under path hold (`btrfs filesystem du`
// Total: extents, not holes or sizes).
func (c cli) allocated(ctx context.Context, path string) (int64, error) {
	out, err := c.btrfs(ctx, "filesystem", "du", "-s", "--raw", path)
	if err != nil {
		return 0, err
	}
	return parseDuTotal(out)
}

// parseDuTotal reads `btrfs filesystem du -s --raw`: a header line, then
// "total exclusive shared path".
func parseDuTotal(out []byte) (int64, error) {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "Total") {
		return 0, fmt.Errorf("unexpected filesystem du output %q", out)
	}
	f := strings.Fields(lines[1])
	if len(f) < 4 {
		return 0, fmt.Errorf("unexpected filesystem du row %q", lines[1])
	}
	n, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("filesystem du total %q: not a byte count", f[0])
	}
	return n, nil
}

// setWritableForce clears a received subvolume's read-only flag, which
// btrfs allows only with -f because the received UUID goes with it.
func (c cli) setWritableForce(ctx context.Context, path string) error {
	_, err := c.btrfs(ctx, "property", "set", "-f", "-ts", path, "ro", "false")
	return err
}

type subvolUUIDs struct{ uuid, parent, received string }

func (c cli) subvolumeUUIDs(ctx context.Context, path string) (subvolUUIDs, error) {
	out, err := c.btrfs(ctx, "subvolume", "show", path)
	if err != nil {
		return subvolUUIDs{}, err
	}
	return parseSubvolumeUUIDs(out)
}

// parseSubvolumeUUIDs reads the "UUID:", "Parent UUID:" and "Received
// UUID:" lines of `btrfs subvolume show` ("-" when there is none).
func parseSubvolumeUUIDs(out []byte) (subvolUUIDs, error) {
	var u subvolUUIDs
	for _, line := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "UUID":
			u.uuid = v
		case "Parent UUID":
			u.parent = v
		case "Received UUID":
			u.received = v
		}
	}
	if u.uuid == "" || u.uuid == "-" {
		return u, fmt.Errorf("no UUID in subvolume show output %q", out)
	}
	return u, nil
}
