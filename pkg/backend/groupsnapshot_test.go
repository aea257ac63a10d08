package backend_test

import (
	"context"
	"errors"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/backend/fake"
)

func TestGroupSources(t *testing.T) {
	a, b := backend.VolumeIDFor("a"), backend.VolumeIDFor("b")
	got, err := backend.GroupSources([]string{b, a})
	if err != nil || len(got) != 2 || got[0] > got[1] {
		t.Fatalf("sorted sources: %v, %v", got, err)
	}
	for _, tc := range []struct {
		in   []string
		want error
	}{
		{nil, backend.ErrInvalid},
		{[]string{a, a}, backend.ErrInvalid},
		{[]string{a, "../etc"}, backend.ErrNotFound},
	} {
		if _, err := backend.GroupSources(tc.in); !errors.Is(err, tc.want) {
			t.Errorf("%q: want %v, got %v", tc.in, tc.want, err)
		}
	}
}

// A group an earlier attempt left with some members (a crash between two
// members) is not ready, and the retry remakes every member, so that none
// is of the earlier instant.
func TestSequentialGroupsRedoesAPartialGroup(t *testing.T) {
	ctx := context.Background()
	b := fake.New("n1", 10*backend.GiB)
	var ids []string
	for _, n := range []string{"a", "b"} {
		v, err := b.CreateVolume(ctx, backend.VolumeRequest{ID: backend.VolumeIDFor(n), Name: n})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, v.ID)
	}
	gid := backend.GroupSnapshotIDFor("g")
	early, err := b.CreateSnapshot(ctx, backend.SnapshotRequest{ID: backend.MemberSnapshotID(gid, ids[0]), SourceVolumeID: ids[0], GroupID: gid, GroupSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	g := backend.SequentialGroups{Backend: b}
	if partial, err := g.GetGroupSnapshot(ctx, gid); err != nil || partial.ReadyToUse || len(partial.Snapshots) != 1 {
		t.Fatalf("partial group: %+v, %v", partial, err)
	}
	whole, err := g.CreateGroupSnapshot(ctx, backend.GroupSnapshotRequest{ID: gid, Name: "g", SourceVolumeIDs: ids})
	if err != nil || !whole.ReadyToUse || len(whole.Snapshots) != 2 {
		t.Fatalf("retry: %+v, %v", whole, err)
	}
	if whole.OneInstant {
		t.Error("members taken one after another report OneInstant")
	}
	for _, s := range whole.Snapshots {
		if s.ID == early.ID && !s.CreatedAt.After(early.CreatedAt) {
			t.Fatal("the member of the earlier attempt was kept")
		}
	}
	replay, err := g.CreateGroupSnapshot(ctx, backend.GroupSnapshotRequest{ID: gid, Name: "g", SourceVolumeIDs: ids})
	if err != nil || !replay.CreatedAt.Equal(whole.CreatedAt) {
		t.Fatalf("replay remade the group: %+v, %v", replay, err)
	}
}
