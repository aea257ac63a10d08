package backend

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"time"
)

// A group snapshot (CSI GroupController, Kubernetes VolumeGroupSnapshot)
// is one ordinary snapshot per source volume, made together. Its ID is
// derived from the CSI name like every other ID, and each member's ID from
// the group's ID and the member's source, so that a retry after a crash
// finds the members an earlier attempt made.
const groupSnapshotPrefix = "g-"

var groupSnapshotIDPattern = regexp.MustCompile(`^g-[0-9a-f]{32}$`)

// GroupSnapshotIDFor returns the group snapshot ID for a CSI name.
func GroupSnapshotIDFor(name string) string {
	return groupSnapshotPrefix + hashName("groupsnapshot", name)
}

// MemberSnapshotID is the snapshot ID of the member of group groupID that
// copies volume sourceVolumeID.
func MemberSnapshotID(groupID, sourceVolumeID string) string {
	return snapshotPrefix + hashName("groupmember", groupID+"\x00"+sourceVolumeID)
}

// IsGroupSnapshotID reports whether id has the shape of a group snapshot ID.
func IsGroupSnapshotID(id string) bool { return groupSnapshotIDPattern.MatchString(id) }

// CheckGroupSnapshotID returns ErrNotFound for anything that is not a group
// snapshot ID.
func CheckGroupSnapshotID(id string) error {
	if !IsGroupSnapshotID(id) {
		return fmt.Errorf("group snapshot %q: %w", id, ErrNotFound)
	}
	return nil
}

// GroupSources validates a group's source volume IDs and returns them
// sorted: an empty list or a volume named twice is ErrInvalid, a string
// that cannot be a volume ID is ErrNotFound.
func GroupSources(ids []string) ([]string, error) {
	if len(ids) == 0 {
		return nil, fmt.Errorf("a group snapshot needs at least one source volume: %w", ErrInvalid)
	}
	sorted := slices.Sorted(slices.Values(ids))
	for i, id := range sorted {
		if i > 0 && sorted[i-1] == id {
			return nil, fmt.Errorf("source volume %s is listed twice: %w", id, ErrInvalid)
		}
		if err := CheckVolumeID(id); err != nil {
			return nil, err
		}
	}
	return sorted, nil
}

// GroupSnapshotRequest asks for snapshots of several volumes taken together.
type GroupSnapshotRequest struct {
	ID              string
	Name            string
	SourceVolumeIDs []string
	// SkipFreeze: as in SnapshotRequest, for every member.
	SkipFreeze bool
}

// GroupSnapshot is a set of member snapshots taken together.
type GroupSnapshot struct {
	ID        string
	Name      string
	Snapshots []*Snapshot
	CreatedAt time.Time
	// ReadyToUse is false while a member is missing: a group cut short by
	// a crash that its creator has not retried or deleted yet, or a member
	// deleted on its own.
	ReadyToUse bool
	// OneInstant says the members hold one instant: nothing written to
	// any member between the first member's snapshot and the last's is
	// in some of them and not the others. True where the backend cuts all
	// members at once (btrfs: one commit) or the members were held still
	// together (freeze.Pool); false for members taken one after another,
	// each as consistent as a single snapshot.
	OneInstant bool
}

// SameSources reports whether the group's members copy exactly sources
// (sorted, as GroupSources returns them).
func (g *GroupSnapshot) SameSources(sources []string) bool {
	have := make([]string, 0, len(g.Snapshots))
	for _, s := range g.Snapshots {
		have = append(have, s.SourceVolumeID)
	}
	slices.Sort(have)
	return slices.Equal(have, sources)
}

// GroupSnapshotter is a Backend that takes group snapshots. Like every
// Backend method, each call is idempotent: a create that finds its group
// made with the same sources returns it, one with other sources is
// ErrExists; a create that fails leaves no member behind; deleting what is
// gone succeeds.
type GroupSnapshotter interface {
	CreateGroupSnapshot(ctx context.Context, req GroupSnapshotRequest) (*GroupSnapshot, error)
	DeleteGroupSnapshot(ctx context.Context, id string) error
	GetGroupSnapshot(ctx context.Context, id string) (*GroupSnapshot, error)
}

// SequentialGroups takes a group snapshot as one snapshot per member, one
// after another, through the backend's own CreateSnapshot: each member is
// as consistent as a single snapshot of that backend, but the members are
// not one instant (a write to one member between two members' snapshots
// may be in one and not the other). Members carry
// their group's ID (SnapshotRequest.GroupID), which is all the state a
// group has: Get and Delete find members by it after a restart, and a
// group is whole when it has GroupSize members.
type SequentialGroups struct {
	Backend Backend
}

// CreateGroupSnapshot implements GroupSnapshotter.
func (g SequentialGroups) CreateGroupSnapshot(ctx context.Context, req GroupSnapshotRequest) (*GroupSnapshot, error) {
	if !IsGroupSnapshotID(req.ID) {
		return nil, fmt.Errorf("group snapshot ID %q: %w", req.ID, ErrInvalid)
	}
	sources, err := GroupSources(req.SourceVolumeIDs)
	if err != nil {
		return nil, err
	}
	existing, err := g.members(ctx, req.ID)
	if err != nil {
		return nil, err
	}
	for _, s := range existing {
		if !slices.Contains(sources, s.SourceVolumeID) || s.GroupSize != len(sources) {
			return nil, fmt.Errorf("group snapshot %s has a member of volume %s of a group of %d: %w", req.ID, s.SourceVolumeID, s.GroupSize, ErrExists)
		}
	}
	if len(existing) == len(sources) {
		return groupOf(req.ID, req.Name, existing), nil
	}
	if len(existing) > 0 {
		// Made by an attempt cut short: of another instant, so redone.
		if err := g.DeleteGroupSnapshot(ctx, req.ID); err != nil {
			return nil, fmt.Errorf("group snapshot %s: remove the members of an unfinished attempt: %w", req.ID, err)
		}
	}
	// Every source must exist before anything is made.
	for _, id := range sources {
		if _, err := g.Backend.GetVolume(ctx, id); err != nil {
			return nil, fmt.Errorf("group snapshot %s: source: %w", req.ID, err)
		}
	}
	var made []*Snapshot
	for _, src := range sources {
		snap, err := g.Backend.CreateSnapshot(ctx, SnapshotRequest{
			ID: MemberSnapshotID(req.ID, src), Name: req.Name, SourceVolumeID: src, SkipFreeze: req.SkipFreeze,
			GroupID: req.ID, GroupSize: len(sources),
		})
		if err != nil {
			err = fmt.Errorf("group snapshot %s: member of %s: %w", req.ID, src, err)
			// Nothing half-made: the members already made go too.
			if derr := g.DeleteGroupSnapshot(context.WithoutCancel(ctx), req.ID); derr != nil {
				return nil, errors.Join(err, fmt.Errorf("remove the members made (a retry or delete finishes it): %w", derr))
			}
			return nil, err
		}
		made = append(made, snap)
	}
	return groupOf(req.ID, req.Name, made), nil
}

func groupOf(id, name string, members []*Snapshot) *GroupSnapshot {
	out := &GroupSnapshot{ID: id, Name: name, Snapshots: members, ReadyToUse: len(members) > 0 && len(members) == members[0].GroupSize}
	for _, s := range members {
		if s.CreatedAt.After(out.CreatedAt) {
			out.CreatedAt = s.CreatedAt
		}
	}
	return out
}

// DeleteGroupSnapshot implements GroupSnapshotter.
func (g SequentialGroups) DeleteGroupSnapshot(ctx context.Context, id string) error {
	if !IsGroupSnapshotID(id) {
		return nil
	}
	members, err := g.members(ctx, id)
	if err != nil {
		return err
	}
	for _, s := range members {
		if err := g.Backend.DeleteSnapshot(ctx, s.ID); err != nil {
			return fmt.Errorf("group snapshot %s: delete member %s: %w", id, s.ID, err)
		}
	}
	return nil
}

// GetGroupSnapshot implements GroupSnapshotter.
func (g SequentialGroups) GetGroupSnapshot(ctx context.Context, id string) (*GroupSnapshot, error) {
	if err := CheckGroupSnapshotID(id); err != nil {
		return nil, err
	}
	members, err := g.members(ctx, id)
	if err != nil {
		return nil, err
	}
	if len(members) == 0 {
		return nil, fmt.Errorf("group snapshot %s: %w", id, ErrNotFound)
	}
	return groupOf(id, members[0].Name, members), nil
}

func (g SequentialGroups) members(ctx context.Context, id string) ([]*Snapshot, error) {
	all, err := g.Backend.ListSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	var out []*Snapshot
	for _, s := range all {
		if s.GroupID == id {
			out = append(out, s)
		}
	}
	return out, nil
}
