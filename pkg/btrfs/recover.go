package btrfs

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// recover finishes what a crash interrupted. It removes only what it can
// prove is an unfinished operation of ours: staged subvolumes (never shown
// to anyone), objects whose delete was committed, and torn record temps.
// A subvolume without a record is reported, never deleted: that would be
// deleting data on a guess. An object it cannot put right is left as it
// is and reported (needsAttention): one broken object must not keep the
// pool, and every other volume on the node, from being served. Only a
// pool whose layout cannot be read fails recovery.
func (p *Pool) recover(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.recoverGroups(ctx); err != nil {
		return err
	}
	staged, err := os.ReadDir(filepath.Join(p.base, "staging"))
	if err != nil {
		return err
	}
	for _, e := range staged {
		id := e.Name()
		if !backend.IsVolumeID(id) && !backend.IsSnapshotID(id) {
			klog.InfoS("leaving unknown entry in staging alone", "entry", id)
			continue
		}
		// A record may already point at it (crash between record and
		// rename): the object was never returned, so both go.
		os.Remove(p.metaPath(id))
		if err := p.discardStaging(ctx, id); err != nil {
			p.needsAttention(id, err)
		}
	}
	if err := p.recoverReceiving(ctx); err != nil {
		return err
	}
	metas, err := os.ReadDir(filepath.Join(p.base, "meta"))
	if err != nil {
		return err
	}
	for _, e := range metas {
		name := e.Name()
		switch {
		case strings.HasSuffix(name, tmpSuffix):
			// A record torn by a crash in writeRecord: its rename never
			// happened, so no reader ever saw it. Only our own names.
			if id := strings.TrimSuffix(name, tmpSuffix); backend.IsVolumeID(id) || backend.IsSnapshotID(id) {
				os.Remove(filepath.Join(p.base, "meta", name))
			}
		case strings.HasSuffix(name, deletingSuffix):
			id := strings.TrimSuffix(name, deletingSuffix)
			path := p.volumePath(id)
			if backend.IsSnapshotID(id) {
				path = p.snapshotPath(id)
			} else if !backend.IsVolumeID(id) {
				continue
			}
			klog.InfoS("finishing interrupted delete", "volumeID", id)
			if err := p.deleteObject(ctx, id, path); err != nil {
				p.needsAttention(id, fmt.Errorf("finish interrupted delete: %w", err))
			}
		}
	}
	return p.checkLayout(ctx)
}

// checkLayout re-applies read-only to snapshots (a crash can fall between
// the rename and the flag), moves the limits of volumes made before
// level-1 qgroups onto one, and reports subvolumes that have no record.
func (p *Pool) checkLayout(ctx context.Context) error {
	recs, err := p.listRecords()
	if err != nil {
		return err
	}
	for _, id := range slices.Sorted(maps.Keys(recs)) {
		rec := recs[id]
		if rec.Volume == nil || rec.Qgroup != "" {
			continue
		}
		if _, err := os.Lstat(p.volumePath(id)); err != nil {
			continue // reported as missing by the volume's condition
		}
		if err := p.migrateVolumeQgroup(ctx, id, rec); err != nil {
			p.needsAttention(id, fmt.Errorf("move the limit to a level-1 qgroup: %w", err))
		}
	}
	for _, dir := range []string{"volumes", "snapshots"} {
		entries, err := os.ReadDir(filepath.Join(p.base, dir))
		if err != nil {
			return err
		}
		for _, e := range entries {
			id := e.Name()
			if _, ok := recs[id]; !ok {
				klog.InfoS("orphan subvolume without a record: left in place for an operator", "path", filepath.Join(p.base, dir, id))
				continue
			}
			if dir != "snapshots" {
				continue
			}
			if err := p.ensureReadOnly(ctx, p.snapshotPath(id)); err != nil {
				p.needsAttention(id, fmt.Errorf("make snapshot read-only: %w", err))
			}
		}
	}
	return nil
}

// ensureReadOnly sets a snapshot's read-only flag unless it is set.
func (p *Pool) ensureReadOnly(ctx context.Context, path string) error {
	ro, err := p.cli.isReadOnly(ctx, path)
	if err != nil || ro {
		return err
	}
	return p.cli.makeReadOnly(ctx, path)
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
