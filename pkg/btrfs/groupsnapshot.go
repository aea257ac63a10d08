package btrfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// A group snapshot on btrfs is one read-only snapshot subvolume per member,
// all created by the kernel in ONE transaction commit, which is checked,
// not hoped for: every member's creation transaction (otransid) must be
// the same, or the attempt is undone and retried.
//
// Why that is one instant: btrfs creates the snapshots queued on a
// transaction inside that transaction's commit, after every other writer
// has left it and while no new one may join, so no write to any member can
// fall between two members' snapshots. Each snapshot holds what its
// subvolume's tree held at that point: every write whose fsync had
// returned, and whatever buffered data had reached the tree; the group is
// what a crash right after that commit would have left, for every member
// at once. FIFREEZE cannot give this on btrfs: it freezes the whole pool
// filesystem (every tenant's volumes) and the snapshot ioctl itself then
// blocks.
//
// How the snapshots are made to share a commit: each snapshot ioctl joins
// the running transaction and commits it; while a commit is running, new
// joiners wait for it. So a barrier snapshot is started first, and the member snapshots
// shortly after: they queue behind the barrier's commit and join the next
// transaction together. The barrier is one more snapshot (of the first
// member, deleted at once): creating an empty subvolume does not commit. The kernel also serialises snapshots into one
// parent directory, so each member is staged in a directory of its own.
//
// Crash safety follows the pool's protocol: members are staged under
// staging/<group>/, then each gets its record (naming the group) and moves
// into snapshots/, and the group's record, written last, is the commit
// point. Recovery removes staged members, finishes a committed delete,
// and deletes committed members whose group record was never written.

// How long each attempt lets the barrier's commit start before the members
// go is learnt from the attempts before it: a member that joined the
// barrier's own transaction went too early (wait longer); members that
// missed the barrier's commit and raced each other went too late (wait
// less). On a busy host the right wait moves with the load, which a fixed
// schedule cannot follow.
const (
	groupAttempts     = 12
	groupFirstDelay   = time.Millisecond
	groupMinimumDelay = 100 * time.Microsecond
	groupMaximumDelay = 64 * time.Millisecond
)

// nextGroupDelay is the wait for the attempt after one whose barrier
// landed in transaction barrier and whose members landed in members
// (barrier 0: the barrier failed, nothing learnt about the timing).
func nextGroupDelay(delay time.Duration, barrier uint64, members []uint64) time.Duration {
	switch {
	case barrier == 0:
		return delay
	case slices.Contains(members, barrier):
		return min(2*delay, groupMaximumDelay)
	default:
		return max(delay/2, groupMinimumDelay)
	}
}

// groupRecord is the record of a committed group snapshot.
type groupRecord struct {
	ID        string        `json:"id"`
	Name      string        `json:"name"`
	CreatedAt time.Time     `json:"createdAt"`
	TransID   uint64        `json:"transID"`
	Members   []groupMember `json:"members"`
}

type groupMember struct {
	SnapshotID     string `json:"snapshotID"`
	SourceVolumeID string `json:"sourceVolumeID"`
}

var _ backend.GroupSnapshotter = (*Pool)(nil)

func (p *Pool) groupStagingPath(id string) string { return filepath.Join(p.base, "staging", id) }

// CreateGroupSnapshot implements backend.GroupSnapshotter.
func (p *Pool) CreateGroupSnapshot(ctx context.Context, req backend.GroupSnapshotRequest) (*backend.GroupSnapshot, error) {
	if !backend.IsGroupSnapshotID(req.ID) {
		return nil, fmt.Errorf("group snapshot ID %q: %w", req.ID, backend.ErrInvalid)
	}
	sources, err := backend.GroupSources(req.SourceVolumeIDs)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if rec, err := p.readRecord(req.ID); err == nil && rec.Group != nil {
		var have []string
		for _, m := range rec.Group.Members {
			have = append(have, m.SourceVolumeID)
		}
		if !slices.Equal(have, sources) {
			return nil, fmt.Errorf("group snapshot %s is of %s: %w", req.ID, strings.Join(have, ", "), backend.ErrExists)
		}
		for _, m := range rec.Group.Members {
			if err := p.ensureReadOnly(ctx, p.snapshotPath(m.SnapshotID)); err != nil {
				return nil, fmt.Errorf("make snapshot %s read-only: %w", m.SnapshotID, classify(err))
			}
		}
		return p.groupFrom(rec.Group), nil
	} else if err != nil && !errors.Is(err, backend.ErrNotFound) {
		return nil, err
	}
	vols := make([]*backend.Volume, len(sources))
	for i, id := range sources {
		if vols[i], err = p.GetVolume(ctx, id); err != nil {
			return nil, fmt.Errorf("group snapshot %s: source: %w", req.ID, err)
		}
		if err := p.attentionError(id); err != nil {
			return nil, fmt.Errorf("group snapshot %s: source: %w", req.ID, err)
		}
	}
	if st, err := p.statfs(); err != nil {
		return nil, err
	} else if pct := usedPercent(st); pct >= p.cfg.FullPercent {
		return nil, fmt.Errorf("pool is %.1f%% full (limit %.0f%%): %w", pct, p.cfg.FullPercent, backend.ErrNoSpace)
	}
	// A delete of this name's earlier group cut short after its commit
	// point: finished first, or recovery would finish it on the new group.
	if err := p.deleteGroup(ctx, req.ID); err != nil {
		return nil, err
	}
	// Leftovers of an attempt cut short in this process.
	if err := p.discardGroup(ctx, req.ID, sources); err != nil {
		return nil, err
	}
	staged, transID, err := p.snapshotTogether(ctx, req.ID, sources)
	if err != nil {
		return nil, errors.Join(err, p.discardGroup(context.WithoutCancel(ctx), req.ID, sources))
	}
	rec := &groupRecord{ID: req.ID, Name: req.Name, CreatedAt: time.Now().UTC(), TransID: transID}
	for i, v := range vols {
		snap := &backend.Snapshot{
			ID: backend.MemberSnapshotID(req.ID, v.ID), Name: req.Name, SourceVolumeID: v.ID, SizeBytes: v.SizeBytes,
			Node: p.cfg.NodeName, CreatedAt: rec.CreatedAt, ReadyToUse: true, GroupID: req.ID, GroupSize: len(sources),
		}
		if err := p.commit(ctx, staged[i], p.snapshotPath(snap.ID), &record{Snapshot: snap}, 0); err != nil {
			return nil, errors.Join(err, p.discardGroup(context.WithoutCancel(ctx), req.ID, sources))
		}
		rec.Members = append(rec.Members, groupMember{SnapshotID: snap.ID, SourceVolumeID: v.ID})
	}
	if err := p.writeRecord(req.ID, &record{Group: rec}); err != nil {
		return nil, errors.Join(err, p.discardGroup(context.WithoutCancel(ctx), req.ID, sources))
	}
	if err := os.RemoveAll(p.groupStagingPath(req.ID)); err != nil {
		klog.InfoS("group staging directory not removed; recovery removes it", "groupSnapshotID", req.ID, "err", err)
	}
	for _, m := range rec.Members {
		// Recovery re-applies it after a crash, as for any snapshot.
		if err := p.cli.makeReadOnly(ctx, p.snapshotPath(m.SnapshotID)); err != nil {
			return nil, fmt.Errorf("make snapshot %s read-only: %w", m.SnapshotID, err)
		}
	}
	klog.InfoS("btrfs group snapshot created", "groupSnapshotID", req.ID, "name", req.Name, "volumeIDs", sources, "transID", transID)
	return p.groupFrom(rec), nil
}

// snapshotTogether stages a writable snapshot of each source, all created
// in one transaction, whose ID it returns with the staged paths (in the
// order of sources).
func (p *Pool) snapshotTogether(ctx context.Context, id string, sources []string) ([]string, uint64, error) {
	dir := p.groupStagingPath(id)
	staged := make([]string, len(sources))
	for i, src := range sources {
		memberDir := filepath.Join(dir, backend.MemberSnapshotID(id, src))
		if err := os.MkdirAll(memberDir, 0o700); err != nil {
			return nil, 0, fmt.Errorf("group snapshot %s: %w", id, err)
		}
		staged[i] = filepath.Join(memberDir, "snapshot")
	}
	barrier := filepath.Join(dir, "barrier")
	var transIDs []uint64
	delay := groupFirstDelay
	for attempt := range groupAttempts {
		if err := ctx.Err(); err != nil {
			return nil, 0, err
		}
		errs := make([]error, len(sources)+1)
		start := make(chan struct{})
		var wg sync.WaitGroup
		// Steps like any snapshot (cli.snapshot), so that the crash tests
		// can stop the driver between the members.
		for i, src := range sources {
			wg.Go(func() {
				<-start
				errs[i] = p.cli.snapshot(ctx, p.volumePath(src), staged[i])
			})
		}
		wg.Go(func() { errs[len(sources)] = p.cli.snapshot(ctx, p.volumePath(sources[0]), barrier) })
		time.Sleep(delay)
		close(start)
		wg.Wait()
		var barrierTrans uint64
		if errs[len(sources)] == nil {
			// Unknown (0) only costs the next attempt its adjustment.
			barrierTrans, _ = creationTransID(barrier)
			if err := p.cli.deleteSubvolume(ctx, barrier); err != nil {
				return nil, 0, fmt.Errorf("group snapshot %s: remove barrier: %w", id, classify(err))
			}
		}
		if err := errors.Join(errs[:len(sources)]...); err != nil {
			return nil, 0, fmt.Errorf("group snapshot %s: %w", id, errnoSentinel(err))
		}
		transIDs = transIDs[:0]
		for _, path := range staged {
			t, err := creationTransID(path)
			if err != nil {
				return nil, 0, fmt.Errorf("group snapshot %s: %w", id, err)
			}
			transIDs = append(transIDs, t)
		}
		if slices.Min(transIDs) == slices.Max(transIDs) {
			klog.V(2).InfoS("group snapshot members in one transaction", "groupSnapshotID", id, "transID", transIDs[0], "delay", delay, "attempt", attempt+1)
			return staged, transIDs[0], nil
		}
		klog.InfoS("group snapshot members landed in different transactions; retrying", "groupSnapshotID", id,
			"transIDs", transIDs, "barrierTransID", barrierTrans, "delay", delay, "attempt", attempt+1)
		delay = nextGroupDelay(delay, barrierTrans, transIDs)
		for _, path := range staged {
			if err := p.cli.deleteSubvolume(ctx, path); err != nil {
				return nil, 0, fmt.Errorf("group snapshot %s: undo attempt: %w", id, classify(err))
			}
		}
	}
	return nil, 0, fmt.Errorf("group snapshot %s: members landed in different btrfs transactions %v in all %d attempts (retry later): %w",
		id, transIDs, groupAttempts, backend.ErrBusy)
}

// errnoSentinel maps the kernel's answer to a snapshot ioctl.
func errnoSentinel(err error) error {
	switch {
	case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EDQUOT):
		return fmt.Errorf("%w: %w", backend.ErrNoSpace, err)
	case errors.Is(err, unix.EROFS):
		return fmt.Errorf("%w: %w", backend.ErrUnavailable, err)
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("a source volume's subvolume is missing: %w: %w", backend.ErrUnavailable, err)
	}
	return err
}

// discardGroup removes everything an unfinished create of group id left:
// its staging directory and the members already moved into place (whose
// IDs follow from id and sources). Called under p.mu, never for a group
// whose record is written.
func (p *Pool) discardGroup(ctx context.Context, id string, sources []string) error {
	var errs []error
	for _, src := range sources {
		mid := backend.MemberSnapshotID(id, src)
		if rec, err := p.readRecordOrMarker(mid); err == nil && rec.Snapshot != nil && rec.Snapshot.GroupID == id {
			errs = append(errs, p.deleteObject(ctx, mid, p.snapshotPath(mid)))
		}
	}
	return errors.Join(append(errs, p.discardGroupStaging(ctx, id))...)
}

// discardGroupStaging deletes the subvolumes under staging/<id> and then
// the directory.
func (p *Pool) discardGroupStaging(ctx context.Context, id string) error {
	dir := p.groupStagingPath(id)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		for _, path := range []string{filepath.Join(dir, e.Name(), "snapshot"), filepath.Join(dir, e.Name())} {
			if _, err := SubvolumeIDOf(path); err != nil {
				continue // not a subvolume (a member's plain directory)
			}
			if err := p.deleteTree(ctx, id, path); err != nil {
				return fmt.Errorf("remove unfinished group snapshot %s: %w", id, err)
			}
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove unfinished group snapshot %s: %w", id, err)
	}
	klog.InfoS("removed unfinished group snapshot", "groupSnapshotID", id)
	return nil
}

// DeleteGroupSnapshot implements backend.GroupSnapshotter: the members go
// with the group.
func (p *Pool) DeleteGroupSnapshot(ctx context.Context, id string) error {
	if !backend.IsGroupSnapshotID(id) {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.deleteGroup(ctx, id)
}

func (p *Pool) deleteGroup(ctx context.Context, id string) error {
	rec, err := p.readRecordOrMarker(id)
	if errors.Is(err, backend.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if rec.Group == nil {
		return fmt.Errorf("record of %s holds no group snapshot: %w", id, errCorruptRecord)
	}
	if err := p.markDeleting(id); err != nil {
		return err
	}
	for _, m := range rec.Group.Members {
		if !backend.IsSnapshotID(m.SnapshotID) {
			continue
		}
		if err := p.deleteObject(ctx, m.SnapshotID, p.snapshotPath(m.SnapshotID)); err != nil {
			return fmt.Errorf("group snapshot %s: delete member %s: %w", id, m.SnapshotID, err)
		}
	}
	if err := p.forgetDeleting(id); err != nil {
		return err
	}
	klog.InfoS("btrfs group snapshot deleted", "groupSnapshotID", id)
	return nil
}

// GetGroupSnapshot implements backend.GroupSnapshotter.
func (p *Pool) GetGroupSnapshot(ctx context.Context, id string) (*backend.GroupSnapshot, error) {
	if err := backend.CheckGroupSnapshotID(id); err != nil {
		return nil, err
	}
	rec, err := p.readRecord(id)
	if err != nil {
		return nil, err
	}
	if rec.Group == nil {
		return nil, fmt.Errorf("group snapshot %s: %w", id, backend.ErrNotFound)
	}
	return p.groupFrom(rec.Group), nil
}

// groupFrom reads the group's members; one deleted on its own is left
// out and makes the group not ready.
func (p *Pool) groupFrom(g *groupRecord) *backend.GroupSnapshot {
	// One transaction commit made every member: one instant, always.
	out := &backend.GroupSnapshot{ID: g.ID, Name: g.Name, CreatedAt: g.CreatedAt, ReadyToUse: true, OneInstant: true}
	for _, m := range g.Members {
		snap, err := p.GetSnapshot(context.Background(), m.SnapshotID)
		if err != nil {
			out.ReadyToUse = false
			continue
		}
		out.Snapshots = append(out.Snapshots, snap)
	}
	return out
}

// recoverGroups finishes or undoes the group snapshots a crash interrupted
// (under p.mu, before recover's own pass): staged members go, a committed
// delete is finished, and committed members of a group whose record was
// never written are deleted.
func (p *Pool) recoverGroups(ctx context.Context) error {
	staged, err := os.ReadDir(filepath.Join(p.base, "staging"))
	if err != nil {
		return err
	}
	for _, e := range staged {
		if id := e.Name(); backend.IsGroupSnapshotID(id) {
			if err := p.discardGroupStaging(ctx, id); err != nil {
				p.needsAttention(id, err)
			}
		}
	}
	metas, err := os.ReadDir(filepath.Join(p.base, "meta"))
	if err != nil {
		return err
	}
	for _, e := range metas {
		name := e.Name()
		if id, ok := strings.CutSuffix(name, tmpSuffix); ok && backend.IsGroupSnapshotID(id) {
			os.Remove(filepath.Join(p.base, "meta", name))
		}
		if id, ok := strings.CutSuffix(name, deletingSuffix); ok && backend.IsGroupSnapshotID(id) {
			klog.InfoS("finishing interrupted group snapshot delete", "groupSnapshotID", id)
			if err := p.deleteGroup(ctx, id); err != nil {
				p.needsAttention(id, fmt.Errorf("finish interrupted delete: %w", err))
			}
		}
	}
	recs, err := p.listRecords()
	if err != nil {
		return err
	}
	for id, rec := range recs {
		if rec.Snapshot == nil || rec.Snapshot.GroupID == "" {
			continue
		}
		if _, err := p.readRecord(rec.Snapshot.GroupID); !errors.Is(err, backend.ErrNotFound) {
			continue
		}
		klog.InfoS("deleting a member of a group snapshot that was never committed", "snapshotID", id, "groupSnapshotID", rec.Snapshot.GroupID)
		if err := p.deleteObject(ctx, id, p.snapshotPath(id)); err != nil {
			p.needsAttention(id, fmt.Errorf("remove member of an unfinished group snapshot: %w", err))
		}
	}
	return nil
}
