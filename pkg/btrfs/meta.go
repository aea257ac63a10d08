package btrfs

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// record is the JSON kept for each volume, snapshot or group snapshot.
// Exactly one of Volume, Snapshot and Group is set.
type record struct {
	Volume   *backend.Volume   `json:"volume,omitempty"`
	Snapshot *backend.Snapshot `json:"snapshot,omitempty"`
	// Group is a group snapshot's record (groupsnapshot.go).
	Group *groupRecord `json:"group,omitempty"`
	// SubvolumeID names the qgroup (0/<id>) charged for the object.
	SubvolumeID uint64 `json:"subvolumeID"`
	// Qgroup is the level-1 qgroup holding a volume's limit, its own
	// subvolume and every subvolume nested in it (nested.go). Empty in
	// records made before it existed, whose limit is on 0/<id> until
	// migrateVolumeQgroup moves it.
	Qgroup string `json:"qgroup,omitempty"`
}

// errCorruptRecord marks a record or delete marker that does not parse:
// such an object is reported (needsAttention) and can still be deleted.
var errCorruptRecord = errors.New("corrupt record")

const (
	metaSuffix     = ".json"
	deletingSuffix = ".json.deleting"
	tmpSuffix      = ".json.tmp"
)

// readRecordOrMarker reads the committed record of id, or, once its delete
// has been committed, the record kept in its delete marker: a delete that
// recovery finishes still needs it (the qgroup to destroy, the size to
// stop counting).
func (p *Pool) readRecordOrMarker(id string) (*record, error) {
	rec, err := p.readRecord(id)
	if !errors.Is(err, backend.ErrNotFound) {
		return rec, err
	}
	b, mErr := os.ReadFile(filepath.Join(p.base, "meta", id+deletingSuffix))
	if errors.Is(mErr, os.ErrNotExist) {
		return nil, err
	}
	if mErr != nil {
		return nil, fmt.Errorf("read delete marker of %s: %w", id, mErr)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("parse delete marker of %s: %w: %w", id, errCorruptRecord, err)
	}
	return &r, nil
}

func (p *Pool) metaPath(id string) string { return filepath.Join(p.base, "meta", id+metaSuffix) }

func (p *Pool) readRecord(id string) (*record, error) {
	b, err := os.ReadFile(p.metaPath(id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", id, backend.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read record of %s: %w", id, err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("parse record of %s: %w: %w", id, errCorruptRecord, err)
	}
	return &r, nil
}

// writeRecord replaces a record atomically: a crash leaves the old or the
// new file, never a torn one.
func (p *Pool) writeRecord(id string, r *record) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode record of %s: %w", id, err)
	}
	dst := p.metaPath(id)
	tmp := filepath.Join(p.base, "meta", id+tmpSuffix)
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("write record of %s: %w", id, err)
	}
	if _, err = f.Write(b); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write record of %s: %w", id, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("commit record of %s: %w", id, err)
	}
	return syncDir(filepath.Dir(dst))
}

// markDeleting is the commit point of a delete: from here on the object is
// gone for every reader, and a restart finishes the job.
func (p *Pool) markDeleting(id string) error {
	src := p.metaPath(id)
	if err := os.Rename(src, strings.TrimSuffix(src, metaSuffix)+deletingSuffix); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("mark %s deleting: %w", id, err)
	}
	return syncDir(filepath.Dir(src))
}

func (p *Pool) forgetDeleting(id string) error {
	err := os.Remove(filepath.Join(p.base, "meta", id+deletingSuffix))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove delete marker of %s: %w", id, err)
	}
	return nil
}

// listRecords returns the committed records, keyed by ID.
func (p *Pool) listRecords() (map[string]*record, error) {
	entries, err := os.ReadDir(filepath.Join(p.base, "meta"))
	if err != nil {
		return nil, fmt.Errorf("list records: %w", err)
	}
	out := make(map[string]*record, len(entries))
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), metaSuffix)
		if !ok || !(backend.IsVolumeID(id) || backend.IsSnapshotID(id)) {
			continue
		}
		r, err := p.readRecord(id)
		if errors.Is(err, backend.ErrNotFound) {
			continue // deleted since ReadDir
		}
		if err != nil {
			// One unreadable record must not hide every other object.
			p.needsAttention(id, err)
			continue
		}
		out[id] = r
	}
	return out, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
