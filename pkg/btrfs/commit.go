package btrfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// The commit protocol. A create builds its subvolume in staging/, writes
// its record (meta.go) and only then renames the subvolume into place, so
// a crash leaves either nothing visible or a whole object; recovery
// (recover.go) removes what is still in staging. A delete commits by
// renaming the record to its .deleting marker (markDeleting) and then
// removes the subvolume, so that a retry or recovery finishes it.

// commit limits a staged subvolume (through its level-1 qgroup, which
// subvolumes nested in it later join: nested.go), writes its record and
// moves it into place. The record is written before the rename: a crash
// in between leaves a record whose subvolume is still in staging, which
// recovery removes together.
func (p *Pool) commit(ctx context.Context, staging, final string, rec *record, limit int64) error {
	subvolID, err := SubvolumeIDOf(staging)
	if err != nil {
		return fmt.Errorf("subvolume id of %s: %w", staging, err)
	}
	rec.SubvolumeID = subvolID
	if limit > 0 {
		if rec.Qgroup, err = p.setUpVolumeQgroup(ctx, subvolID, limit); err != nil {
			return fmt.Errorf("limit %s: %w", staging, err)
		}
	}
	id := filepath.Base(final)
	if err := p.writeRecord(id, rec); err != nil {
		return err
	}
	if err := os.Rename(staging, final); err != nil {
		os.Remove(p.metaPath(id))
		return fmt.Errorf("move %s into place: %w", id, err)
	}
	return syncDir(filepath.Dir(final))
}

// discardStaging removes a leftover staged subvolume of id, which can only
// be an unfinished create of ours, with the level-1 qgroup it may have
// got.
func (p *Pool) discardStaging(ctx context.Context, id string) error {
	path := p.stagingPath(id)
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		p.attended(id)
		return nil
	}
	if subvolID, err := SubvolumeIDOf(path); err == nil && backend.IsVolumeID(id) {
		if err := p.scheduleReap(volumeQgroup(subvolID)); err != nil {
			return err
		}
	}
	if err := p.deleteTree(ctx, id, path); err != nil {
		return fmt.Errorf("remove unfinished %s: %w", id, err)
	}
	p.attended(id)
	p.reapQgroups()
	klog.InfoS("removed unfinished staged subvolume", "volumeID", id)
	return nil
}

func (p *Pool) deleteObject(ctx context.Context, id, path string) error {
	rec, err := p.readRecord(id)
	if errors.Is(err, errCorruptRecord) {
		// Deleting is the way out for an unreadable record: what it
		// would have said is read from the subvolume itself below.
		klog.InfoS("deleting an object whose record is unreadable", "volumeID", id, "err", err)
		rec, err = nil, nil
	}
	if err != nil && !errors.Is(err, backend.ErrNotFound) {
		return err
	}
	if err := p.markDeleting(id); err != nil {
		return err
	}
	// Only the call that commits the delete stops counting the volume: a
	// retry, or recovery, finds the record already in the marker.
	if rec != nil && rec.Volume != nil {
		p.provisioned.Add(-rec.Volume.SizeBytes)
	}
	// A delete that an earlier attempt or a crash cut off after its commit
	// point finds its record in the marker.
	marked := rec
	if marked == nil {
		if marked, err = p.readRecordOrMarker(id); errors.Is(err, errCorruptRecord) {
			marked = nil
		} else if err != nil && !errors.Is(err, backend.ErrNotFound) {
			return err
		}
	}
	if _, statErr := os.Lstat(path); statErr == nil {
		if sid, err := SubvolumeIDOf(path); err == nil && backend.IsVolumeID(id) {
			// The subvolume itself names its level-1 qgroup, whatever
			// the record says (or if it says nothing).
			if err := p.scheduleReap(volumeQgroup(sid)); err != nil {
				return err
			}
		}
		// Subvolumes a tenant nested in the volume go first: btrfs
		// refuses to delete a subvolume that holds others.
		if err := p.deleteTree(ctx, id, path); err != nil {
			return fmt.Errorf("delete subvolume %s: %w", id, err)
		}
	}
	if marked != nil && marked.Volume != nil && marked.SubvolumeID != 0 {
		// Scheduled before the marker goes, so that a crash cannot lose
		// it; destroyed once the cleaner has emptied it (nested.go).
		if err := p.scheduleReap(volumeQgroup(marked.SubvolumeID)); err != nil {
			return err
		}
		// A received volume's limit is on the qgroup it was received
		// into (stream.go), which the record names.
		if marked.Qgroup != "" && marked.Qgroup != volumeQgroup(marked.SubvolumeID) {
			if err := p.scheduleReap(marked.Qgroup); err != nil {
				return err
			}
		}
	}
	if marked != nil && marked.SubvolumeID != 0 {
		// Before the marker goes, so that a crash here leaves recovery the
		// qgroup's ID. Best effort: until the cleaner has dropped the
		// subvolume the kernel may refuse, and newer kernels remove a
		// deleted subvolume's qgroup themselves; a leftover is an empty
		// qgroup 0/<id> that charges nothing.
		if err := p.cli.destroyQgroup(ctx, marked.SubvolumeID, p.mountPath); err != nil {
			klog.V(4).InfoS("qgroup not destroyed yet", "volumeID", id, "err", err)
		}
	}
	if err := p.forgetDeleting(id); err != nil {
		return err
	}
	p.attended(id)
	p.reapQgroups()
	if marked != nil {
		klog.InfoS("btrfs object deleted", "volumeID", id)
	}
	return nil
}
