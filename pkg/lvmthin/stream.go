package lvmthin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/volstream"
)

// Sending a snapshot (backend.Streamer): the pool's metadata says which
// blocks of the snapshot's thin device are mapped, so only those are read
// and sent, as a sparse volume stream (volstream.KindLVMThin) whose frames
// land at their volume offsets. The metadata is read from a metadata
// snapshot the pool reserves for the purpose (dm-thin's
// reserve_metadata_snap), the only consistent way to read a live pool's
// metadata: one reservation at a time per pool, held only while
// thin_dump/thin_delta run and always released, also when they fail; a
// reservation a crash left behind is released at the next start-up
// (releaseMetadataSnap in New).

var _ backend.Streamer = (*Backend)(nil)

// streams serialises the pool's metadata snapshot (dm-thin holds one at a
// time) and counts the sends reading each snapshot's device, so that the
// last one deactivates it.
type streams struct {
	meta    sync.Mutex
	mu      sync.Mutex
	readers map[string]int
}

// thinIDArgs reports the dm-thin device IDs of LVs.
func thinIDArgs(targets ...string) []string {
	return reportArgs("lvs", []string{"lv_name", "thin_id"}, targets)
}

// ParseThinIDs parses `lvs -o lv_name,thin_id --reportformat json`: the
// dm-thin device ID of each thin LV (LVs without one are left out).
func ParseThinIDs(out []byte) (map[string]uint64, error) {
	var r struct {
		Report []struct {
			LV []struct {
				Name   string `json:"lv_name"`
				ThinID string `json:"thin_id"`
			} `json:"lv"`
		} `json:"report"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return nil, fmt.Errorf("parse lvm json report: %w", err)
	}
	ids := map[string]uint64{}
	for _, part := range r.Report {
		for _, lv := range part.LV {
			if lv.ThinID == "" {
				continue
			}
			id, err := strconv.ParseUint(lv.ThinID, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("lv %s: field thin_id: %q is not a device ID: %w", lv.Name, lv.ThinID, err)
			}
			ids[lv.Name] = id
		}
	}
	return ids, nil
}

// thinIDs reports the dm-thin device ID of each of the named LVs of vg.
func (l *lvm) thinIDs(ctx context.Context, vg string, names ...string) (map[string]uint64, error) {
	targets := make([]string, len(names))
	for i, n := range names {
		targets[i] = lvPath(vg, n)
	}
	out, err := l.run(ctx, thinIDArgs(targets...)...)
	if err != nil {
		return nil, err
	}
	ids, err := ParseThinIDs(out)
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		if _, ok := ids[n]; !ok {
			return nil, fmt.Errorf("LV %s has no thin device ID: %w", n, backend.ErrNotFound)
		}
	}
	return ids, nil
}

// metadataSnap sends the pool's thin-pool target reserve_metadata_snap or
// release_metadata_snap.
func (l *lvm) metadataSnap(ctx context.Context, vg, pool, msg string) error {
	_, err := l.runner.Run(ctx, "dmsetup", "message", DMName(vg, pool, "tpool"), "0", msg)
	return err
}

// thinMetadata runs a thin-provisioning tool (thin_dump, thin_delta) on
// the pool's reserved metadata snapshot and returns its XML.
func (l *lvm) thinMetadata(ctx context.Context, vg, pool, tool string, args ...string) ([]byte, error) {
	argv := append([]string{"--metadata-snap"}, args...)
	argv = append(argv, "/dev/mapper/"+DMName(vg, pool+"_tmeta", ""))
	res, err := l.runner.Run(ctx, tool, argv...)
	if err != nil {
		return nil, err
	}
	return res.Stdout, nil
}

// changedRanges reads from the pool's metadata the ranges of thin device
// dev a stream carries: all its mapped ranges, or with a parent, those
// that differ from the parent's (ParseThinDelta).
func (b *Backend) changedRanges(ctx context.Context, dev, parent uint64, incremental bool) (ranges []ThinRange, err error) {
	b.streams.meta.Lock()
	defer b.streams.meta.Unlock()
	vg, pool := b.cfg.VG, b.cfg.ThinPool
	if err := b.lvm.metadataSnap(ctx, vg, pool, "reserve_metadata_snap"); err != nil {
		// dm-thin holds one at a time and this process's sends take
		// turns: one held now is a leftover.
		if s, serr := b.lvm.thinPoolStatus(ctx, vg, pool); serr != nil || !s.HeldMetadataRoot || !b.releaseMetadataSnap(ctx) {
			return nil, fmt.Errorf("reserve the pool's metadata snapshot: %w", err)
		}
		if err := b.lvm.metadataSnap(ctx, vg, pool, "reserve_metadata_snap"); err != nil {
			return nil, fmt.Errorf("reserve the pool's metadata snapshot: %w", err)
		}
	}
	defer func() {
		// Released even when the caller gave up: a held snapshot pins
		// metadata blocks until released.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if rerr := b.lvm.metadataSnap(rctx, vg, pool, "release_metadata_snap"); rerr != nil && err == nil {
			err = fmt.Errorf("release the pool's metadata snapshot: %w", rerr)
		}
	}()
	if incremental {
		out, err := b.lvm.thinMetadata(ctx, vg, pool, "thin_delta",
			"--thin1", strconv.FormatUint(parent, 10), "--thin2", strconv.FormatUint(dev, 10))
		if err != nil {
			return nil, err
		}
		ranges, _, err = ParseThinDelta(out, parent, dev)
		return ranges, err
	}
	out, err := b.lvm.thinMetadata(ctx, vg, pool, "thin_dump", "--dev-id", strconv.FormatUint(dev, 10))
	if err != nil {
		return nil, err
	}
	ranges, _, err = ParseThinDump(out, dev)
	return ranges, err
}

// releaseLeftoverMetadataSnap releases a metadata snapshot held while no
// send of this process holds it: one a send interrupted by a crash left
// reserved (csi-thin is the pool's only user of metadata snapshots), which
// would pin the pool's metadata and the data it maps until released. It
// is found where the pool's status is read anyway, the first change of
// the pool after a restart (stateForChange) and a send whose reservation
// failed, so that start-up runs no extra command.
func (b *Backend) releaseLeftoverMetadataSnap(ctx context.Context) bool {
	if !b.streams.meta.TryLock() {
		return false // a send holds it
	}
	defer b.streams.meta.Unlock()
	return b.releaseMetadataSnap(ctx)
}

// releaseMetadataSnap releases a leftover reservation; streams.meta held.
func (b *Backend) releaseMetadataSnap(ctx context.Context) bool {
	if err := b.lvm.metadataSnap(ctx, b.cfg.VG, b.cfg.ThinPool, "release_metadata_snap"); err != nil {
		klog.ErrorS(err, "releasing a leftover metadata snapshot", "pool", b.poolPath())
		return false
	}
	klog.InfoS("released the metadata snapshot an interrupted send left reserved", "pool", b.poolPath())
	return true
}

// SendSnapshot implements backend.Streamer: the mapped ranges of snapshot
// id's thin device (with parentID: those that differ from the parent's,
// ranges the parent maps and id does not as the zeros id reads there, as
// the format has no discard), read from its device and written in
// increasing order. AllocatedBytes is what the stream carries: the
// snapshot's mapped bytes, or for an incremental send its changed bytes.
func (b *Backend) SendSnapshot(ctx context.Context, id, parentID string, w io.Writer) (backend.SendStats, error) {
	var st backend.SendStats
	if err := backend.CheckSnapshotID(id); err != nil {
		return st, err
	}
	if parentID != "" {
		if err := backend.CheckSnapshotID(parentID); err != nil {
			return st, err
		}
		if parentID == id {
			return st, fmt.Errorf("send snapshot %s against itself: %w", id, backend.ErrInvalid)
		}
	}
	snap, _, _, err := b.lookupWithPool(ctx, id, kindSnapshot)
	if err != nil {
		return st, fmt.Errorf("send: %w", err)
	}
	names := []string{id}
	if parentID != "" {
		if _, _, _, err := b.lookupWithPool(ctx, parentID, kindSnapshot); err != nil {
			return st, fmt.Errorf("send: parent: %w", err)
		}
		names = append(names, parentID)
	}
	devs, err := b.lvm.thinIDs(ctx, b.cfg.VG, names...)
	if err != nil {
		return st, fmt.Errorf("send snapshot %s: %w", id, err)
	}
	ranges, err := b.changedRanges(ctx, devs[id], devs[parentID], parentID != "")
	if err != nil {
		return st, fmt.Errorf("send snapshot %s: %w", id, err)
	}
	if n := len(ranges); n > 0 && ranges[n-1].End() > snap.Size {
		return st, fmt.Errorf("send snapshot %s: mapped range [%d, %d) past its %d bytes: %w",
			id, ranges[n-1].Offset, ranges[n-1].End(), snap.Size, ErrThinMetadata)
	}
	st.AllocatedBytes = MappedBytes(ranges)
	sw, err := volstream.NewWriter(w, volstream.Header{
		Kind: volstream.KindLVMThin, VolumeBytes: snap.Size, AllocatedBytes: st.AllocatedBytes,
		SnapshotID: id, ParentSnapshotID: parentID,
	})
	if err != nil {
		return st, fmt.Errorf("send snapshot %s: %w", id, err)
	}
	start := time.Now()
	err = b.sendRanges(ctx, id, ranges, sw)
	st.PayloadBytes, st.StreamBytes = sw.PayloadBytes(), sw.StreamBytes()
	if err != nil {
		// No trailer: the receiver reads the stream as truncated.
		return st, fmt.Errorf("send snapshot %s: %w", id, err)
	}
	err = sw.Close()
	st.PayloadBytes, st.StreamBytes = sw.PayloadBytes(), sw.StreamBytes()
	if err != nil {
		return st, fmt.Errorf("send snapshot %s: %w", id, err)
	}
	klog.InfoS("thin snapshot sent", "snapshotID", id, "parentID", parentID, "ranges", len(ranges),
		"allocatedBytes", st.AllocatedBytes, "streamBytes", st.StreamBytes, "duration", time.Since(start))
	return st, nil
}

// sendRanges reads ranges of snapshot id's device into sw. The snapshot
// is activated (read-only, as it was made) for the read and deactivated
// again by the last send reading it.
func (b *Backend) sendRanges(ctx context.Context, id string, ranges []ThinRange, sw *volstream.Writer) (err error) {
	if len(ranges) == 0 {
		return nil
	}
	if err := b.openSnapshotDevice(ctx, id); err != nil {
		return err
	}
	defer func() {
		if cerr := b.closeSnapshotDevice(context.WithoutCancel(ctx), id); cerr != nil && err == nil {
			err = cerr
		}
	}()
	path, err := b.waitForDevice(ctx, id)
	if err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open snapshot device: %w", err)
	}
	defer f.Close()
	buf := make([]byte, volstream.DefaultFrameBytes)
	for _, r := range ranges {
		for off := r.Offset; off < r.End(); {
			if err := ctx.Err(); err != nil {
				return err
			}
			p := buf[:min(int64(len(buf)), r.End()-off)]
			if _, err := f.ReadAt(p, off); err != nil {
				return fmt.Errorf("read snapshot device at %d: %w", off, err)
			}
			if _, err := sw.WriteAt(p, off); err != nil {
				return err
			}
			off += int64(len(p))
		}
	}
	return nil
}

func (b *Backend) openSnapshotDevice(ctx context.Context, id string) error {
	b.streams.mu.Lock()
	defer b.streams.mu.Unlock()
	if b.streams.readers[id] == 0 {
		if _, err := b.lvm.run(ctx, activateArgs(b.cfg.VG, id)...); err != nil {
			return fmt.Errorf("activate snapshot %s: %w", id, err)
		}
	}
	if b.streams.readers == nil {
		b.streams.readers = map[string]int{}
	}
	b.streams.readers[id]++
	return nil
}

func (b *Backend) closeSnapshotDevice(ctx context.Context, id string) error {
	b.streams.mu.Lock()
	defer b.streams.mu.Unlock()
	b.streams.readers[id]--
	if b.streams.readers[id] > 0 {
		return nil
	}
	delete(b.streams.readers, id)
	if _, err := b.lvm.run(ctx, deactivateArgs(b.cfg.VG, id)...); err != nil {
		return fmt.Errorf("deactivate snapshot %s: %w", id, err)
	}
	return nil
}

// Receiving (backend.Streamer): a new thin LV written only where the
// stream has frames, so unmapped ranges of the source stay unallocated
// here too; an incremental stream is written on top of a writable thin
// snapshot of its parent. The LV is created with tagReceiving, which
// makes it half made (lvMeta): invisible to lookups and listings, never
// completed by a retried CreateVolume, and removed by the next start-up
// (removeHalfMade) if a crash interrupts the receive. Deleting the tag,
// once the stream verified to its trailer and the data is synced, is the
// commit. A stream refused for any reason removes the LV.

// ReceiveVolume implements backend.Streamer: the writable volume req.ID,
// at least the stream's volume size.
func (b *Backend) ReceiveVolume(ctx context.Context, req backend.VolumeRequest, r io.Reader) (*backend.Volume, error) {
	if err := backend.CheckVolumeID(req.ID); err != nil {
		return nil, err
	}
	access, err := volumeAccess(req)
	if err != nil {
		return nil, err
	}
	if req.Source.Kind != backend.SourceNone {
		return nil, fmt.Errorf("a received volume's source is its stream, not %s %s: %w", req.Source.Kind, req.Source.ID, backend.ErrInvalid)
	}
	if err := backend.CheckPlacement(req, b.cfg.NodeName); err != nil {
		return nil, err
	}
	hdr, sr, err := openStream(r)
	if err != nil {
		return nil, fmt.Errorf("receive volume %s: %w", req.ID, err)
	}
	size, err := backend.ResolveSize(req.RequiredBytes, req.LimitBytes, b.cfg.DefaultVolumeBytes, hdr.VolumeBytes, b.extentSize)
	if err != nil {
		return nil, fmt.Errorf("receive volume %s: %w", req.ID, err)
	}
	created := now()
	meta := objectMeta{Kind: kindVolume, Name: req.Name, AccessType: access, FsType: req.FsType,
		CreatedAt: created, Parameters: req.Parameters, Receiving: true}
	var vol *backend.Volume
	done, pool, err := b.receive(ctx, req.ID, meta, size, hdr, sr, func(st *poolState, lv *LV, m objectMeta) error {
		v := b.volumeFrom(lv, m, st.pool)
		if m.Kind != kindVolume || v.Source.Kind != backend.SourceNone || v.AccessType != access ||
			!backend.Fits(v.SizeBytes, req.RequiredBytes, req.LimitBytes) || v.SizeBytes < size {
			return fmt.Errorf("volume %s exists: %w", req.ID, backend.ErrExists)
		}
		vol = v
		return nil
	})
	if err != nil || done {
		return vol, err
	}
	klog.InfoS("thin volume received", "volumeID", req.ID, "name", req.Name, "sizeBytes", size,
		"snapshotID", hdr.SnapshotID, "parentID", hdr.ParentSnapshotID, "streamBytes", sr.StreamBytes())
	return &backend.Volume{
		ID: req.ID, Name: req.Name, SizeBytes: size, AccessType: access, FsType: req.FsType,
		Parameters: req.Parameters, Node: b.cfg.NodeName, CreatedAt: created,
		Condition: b.condition(&LV{Name: req.ID}, pool),
	}, nil
}

// ReceiveSnapshot implements backend.Streamer: the read-only snapshot id,
// of the stream's volume size, which restores like any snapshot
// (CreateVolume) and is the parent of the next incremental stream.
func (b *Backend) ReceiveSnapshot(ctx context.Context, id, name string, r io.Reader) (*backend.Snapshot, error) {
	if err := backend.CheckSnapshotID(id); err != nil {
		return nil, err
	}
	hdr, sr, err := openStream(r)
	if err != nil {
		return nil, fmt.Errorf("receive snapshot %s: %w", id, err)
	}
	created := now()
	meta := objectMeta{Kind: kindSnapshot, Name: name, CreatedAt: created, Receiving: true}
	var snap *backend.Snapshot
	done, _, err := b.receive(ctx, id, meta, hdr.VolumeBytes, hdr, sr, func(_ *poolState, lv *LV, m objectMeta) error {
		if m.Kind != kindSnapshot || m.Source.Kind != backend.SourceNone || lv.Size < hdr.VolumeBytes {
			return fmt.Errorf("snapshot %s exists: %w", id, backend.ErrExists)
		}
		snap = b.snapshotFrom(lv, m)
		return nil
	})
	if err != nil || done {
		return snap, err
	}
	klog.InfoS("thin snapshot received", "snapshotID", id, "name", name, "sizeBytes", hdr.VolumeBytes,
		"parentID", hdr.ParentSnapshotID, "streamBytes", sr.StreamBytes())
	return &backend.Snapshot{ID: id, Name: name, SizeBytes: hdr.VolumeBytes, Node: b.cfg.NodeName,
		CreatedAt: created, ReadyToUse: true}, nil
}

// openStream reads a stream's header and checks that it is a thin one.
func openStream(r io.Reader) (volstream.Header, *volstream.Reader, error) {
	sr, err := volstream.NewReader(r)
	if err != nil {
		return volstream.Header{}, nil, fmt.Errorf("%w: %w", backend.ErrInvalid, err)
	}
	hdr := sr.Header()
	if hdr.Kind != volstream.KindLVMThin {
		return hdr, nil, fmt.Errorf("a %s stream cannot be received into an LVM thin pool: %w", hdr.Kind, backend.ErrInvalid)
	}
	return hdr, sr, nil
}

// receive makes LV name (tagged by meta, which carries tagReceiving) of
// size bytes from the stream and commits it. An LV of that name that is
// complete already is handed to existing instead (done is then true), and
// the stream is not read.
func (b *Backend) receive(ctx context.Context, name string, meta objectMeta, size int64, hdr volstream.Header,
	sr *volstream.Reader, existing func(*poolState, *LV, objectMeta) error) (done bool, pool *LV, err error) {
	tags, err := encodeTags(meta)
	if err != nil {
		return false, nil, err
	}
	err = b.change(ctx, func(st *poolState) error {
		pool = st.pool
		lv, m, err := st.owned(name)
		if err != nil {
			return err
		}
		if lv != nil && !m.Creating {
			done = true
			return existing(st, lv, m)
		}
		if lv != nil {
			klog.InfoS("removing a half-made LV before receiving into its name", "volumeID", name, "kind", m.Kind)
			if _, err := b.lvm.run(ctx, removeArgs(b.cfg.VG, name)...); err != nil {
				return fmt.Errorf("remove half-made %s: %w", name, err)
			}
			st.drop(name)
		}
		var parent *LV
		if hdr.Incremental() {
			parent, err = st.source(backend.Source{Kind: backend.SourceSnapshot, ID: hdr.ParentSnapshotID})
			if errors.Is(err, backend.ErrNotFound) {
				return fmt.Errorf("incremental stream of %s needs its parent snapshot %s here: %w",
					hdr.SnapshotID, hdr.ParentSnapshotID, backend.ErrPrecondition)
			}
			if err != nil {
				return err
			}
		}
		if err := b.admit(st, size, size); err != nil {
			return fmt.Errorf("receive %s: %w", name, err)
		}
		args := createThinArgs(b.cfg.VG, b.cfg.ThinPool, name, size, tags)
		if parent != nil {
			args = createWritableSnapshotArgs(b.cfg.VG, parent.Name, name, tags)
		}
		if _, err := b.lvm.run(ctx, args...); err != nil {
			return fmt.Errorf("receive %s: %w", name, err)
		}
		b.cache.invalidate()
		if parent != nil && parent.Size < size {
			if _, err := b.lvm.run(ctx, extendArgs(b.cfg.VG, name, size)...); err != nil {
				if _, rerr := b.lvm.run(context.WithoutCancel(ctx), removeArgs(b.cfg.VG, name)...); rerr != nil {
					klog.ErrorS(rerr, "removing a refused receive's LV; it is removed at the next start", "volumeID", name)
				}
				return fmt.Errorf("receive %s: grow to %d bytes: %w", name, size, err)
			}
		}
		return nil
	})
	if err != nil || done {
		return done, pool, err
	}
	if err := b.writeReceived(ctx, name, sr); err != nil {
		return false, nil, b.dropReceived(ctx, name, fmt.Errorf("receive %s: %w", name, err))
	}
	var finish [][]string
	if meta.Kind == kindSnapshot {
		finish = append(finish, []string{"lvchange", "--permission", "r", "--setactivationskip", "y", lvPath(b.cfg.VG, name)})
	}
	finish = append(finish, deactivateArgs(b.cfg.VG, name),
		// The commit: from here on the LV is complete.
		[]string{"lvchange", "--deltag", tagReceiving, lvPath(b.cfg.VG, name)})
	err = b.change(ctx, func(*poolState) error {
		b.cache.invalidate()
		for _, args := range finish {
			if _, err := b.lvm.run(ctx, args...); err != nil {
				return fmt.Errorf("finish receiving %s: %w", name, err)
			}
		}
		return nil
	})
	if err != nil {
		return false, nil, b.dropReceived(ctx, name, err)
	}
	return false, pool, nil
}

// writeReceived writes the stream's ranges into LV name's device and
// syncs them; it succeeds only for a stream verified to its trailer.
func (b *Backend) writeReceived(ctx context.Context, name string, sr *volstream.Reader) error {
	if _, err := b.lvm.run(ctx, activateArgs(b.cfg.VG, name)...); err != nil {
		return fmt.Errorf("activate: %w", err)
	}
	path, err := b.waitForDevice(ctx, name)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open device: %w", err)
	}
	defer f.Close()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		c, err := sr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("%w: %w", backend.ErrInvalid, err)
		}
		if _, err := f.WriteAt(c.Data, c.Offset); err != nil {
			return fmt.Errorf("write at %d: %w", c.Offset, err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync device: %w", err)
	}
	return f.Close()
}

// dropReceived removes a refused receive's LV and returns why it was
// refused. If the removal fails too, the LV keeps tagReceiving, so the
// next start-up or receive of the name removes it.
func (b *Backend) dropReceived(ctx context.Context, name string, why error) error {
	ctx = context.WithoutCancel(ctx)
	err := b.change(ctx, func(st *poolState) error {
		if _, err := b.lvm.run(ctx, removeArgs(b.cfg.VG, name)...); err != nil && !errors.Is(err, backend.ErrNotFound) {
			return err
		}
		st.drop(name)
		return nil
	})
	if err != nil {
		klog.ErrorS(err, "removing a refused receive's LV; it is removed at the next start", "volumeID", name)
	}
	return why
}
