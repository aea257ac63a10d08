package controller

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/backend/fake"
)

func groupVolumes(t *testing.T, s *Server, names ...string) []string {
	t.Helper()
	var ids []string
	for _, n := range names {
		resp, err := s.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: n, VolumeCapabilities: rwo})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, resp.GetVolume().GetVolumeId())
	}
	return ids
}

func TestGroupSnapshotCodes(t *testing.T) {
	ctx := context.Background()
	b := fake.New("n1", 10*backend.GiB)
	s := New(b)
	g := s.Groups()
	if g == nil {
		t.Fatal("the fake backend takes group snapshots, but no GroupController")
	}
	ids := groupVolumes(t, s, "a", "b", "c")
	cases := []struct {
		name string
		req  *csi.CreateVolumeGroupSnapshotRequest
		want codes.Code
	}{
		{"no name", &csi.CreateVolumeGroupSnapshotRequest{SourceVolumeIds: ids}, codes.InvalidArgument},
		{"no sources", &csi.CreateVolumeGroupSnapshotRequest{Name: "g"}, codes.InvalidArgument},
		{"empty source", &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: []string{ids[0], ""}}, codes.InvalidArgument},
		{"duplicate source", &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: []string{ids[0], ids[1], ids[0]}}, codes.InvalidArgument},
		{"unknown parameter", &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: ids, Parameters: map[string]string{"x": "y"}}, codes.InvalidArgument},
		{"bad freeze", &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: ids, Parameters: map[string]string{ParamFreeze: "maybe"}}, codes.InvalidArgument},
		{"bad deletionPolicy copy", &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: ids, Parameters: map[string]string{ParamGroupDeletionPolicy: "Keep"}}, codes.InvalidArgument},
		{"unknown volume", &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: []string{ids[0], backend.VolumeIDFor("nope")}}, codes.NotFound},
		{"malformed volume id", &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: []string{ids[0], "../x"}}, codes.NotFound},
		{"ok", &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: ids[:2], Parameters: map[string]string{"csi.storage.k8s.io/volumegroupsnapshot/name": "x", ParamGroupDeletionPolicy: "Delete"}}, codes.OK},
		{"replay in another order", &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: []string{ids[1], ids[0]}}, codes.OK},
		{"same name, other sources", &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: ids[1:]}, codes.AlreadyExists},
		{"same name, more sources", &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: ids}, codes.AlreadyExists},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := g.CreateVolumeGroupSnapshot(ctx, tc.req)
			if got := status.Code(err); got != tc.want {
				t.Fatalf("code %v, want %v (%v)", got, tc.want, err)
			}
			if err != nil {
				return
			}
			gs := resp.GetGroupSnapshot()
			if len(gs.GetSnapshots()) != 2 || !gs.GetReadyToUse() || gs.GetGroupSnapshotId() != backend.GroupSnapshotIDFor("g") {
				t.Fatalf("group %v", gs)
			}
			for _, m := range gs.GetSnapshots() {
				if m.GetGroupSnapshotId() != gs.GetGroupSnapshotId() || !m.GetReadyToUse() {
					t.Fatalf("member %v", m)
				}
			}
		})
	}
	gid := backend.GroupSnapshotIDFor("g")
	got, err := g.GetVolumeGroupSnapshot(ctx, &csi.GetVolumeGroupSnapshotRequest{GroupSnapshotId: gid})
	if err != nil || len(got.GetGroupSnapshot().GetSnapshots()) != 2 {
		t.Fatalf("get: %v, %v", got, err)
	}
	member := got.GetGroupSnapshot().GetSnapshots()[0]
	// A member restores like any snapshot.
	if _, err := s.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "restored", VolumeCapabilities: rwo,
		VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: member.GetSnapshotId()}}}}); err != nil {
		t.Fatalf("restore a member: %v", err)
	}
	for _, tc := range []struct {
		name string
		req  *csi.GetVolumeGroupSnapshotRequest
		want codes.Code
	}{
		{"no id", &csi.GetVolumeGroupSnapshotRequest{}, codes.InvalidArgument},
		{"malformed id", &csi.GetVolumeGroupSnapshotRequest{GroupSnapshotId: "nope"}, codes.NotFound},
		{"unknown id", &csi.GetVolumeGroupSnapshotRequest{GroupSnapshotId: backend.GroupSnapshotIDFor("other")}, codes.NotFound},
		{"not a member", &csi.GetVolumeGroupSnapshotRequest{GroupSnapshotId: gid, SnapshotIds: []string{backend.SnapshotIDFor("x")}}, codes.InvalidArgument},
		{"members", &csi.GetVolumeGroupSnapshotRequest{GroupSnapshotId: gid, SnapshotIds: []string{member.GetSnapshotId()}}, codes.OK},
	} {
		if _, err := g.GetVolumeGroupSnapshot(ctx, tc.req); status.Code(err) != tc.want {
			t.Errorf("get %s: code %v, want %v (%v)", tc.name, status.Code(err), tc.want, err)
		}
	}
	if _, err := g.DeleteVolumeGroupSnapshot(ctx, &csi.DeleteVolumeGroupSnapshotRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("delete without id: %v", err)
	}
	for range 2 {
		if _, err := g.DeleteVolumeGroupSnapshot(ctx, &csi.DeleteVolumeGroupSnapshotRequest{GroupSnapshotId: gid}); err != nil {
			t.Fatalf("delete: %v", err)
		}
	}
	if _, err := g.DeleteVolumeGroupSnapshot(ctx, &csi.DeleteVolumeGroupSnapshotRequest{GroupSnapshotId: "malformed"}); err != nil {
		t.Errorf("delete of a malformed id: %v", err)
	}
	if snaps, _ := b.ListSnapshots(ctx); len(snaps) != 0 {
		t.Fatalf("members left after delete: %v", snaps)
	}
}

// A member that fails takes the members already made with it.
func TestGroupSnapshotFailedMemberLeavesNothing(t *testing.T) {
	ctx := context.Background()
	b := fake.New("n1", 10*backend.GiB)
	s := New(b)
	ids := groupVolumes(t, s, "a", "b", "c")
	sorted := append([]string(nil), ids...)
	slices.Sort(sorted)
	b.FailSnapshotsOf(sorted[2], backend.ErrNoSpace) // the last one made
	_, err := s.Groups().CreateVolumeGroupSnapshot(ctx, &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: ids})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("code %v, want ResourceExhausted (%v)", status.Code(err), err)
	}
	if snaps, _ := b.ListSnapshots(ctx); len(snaps) != 0 {
		t.Fatalf("members left after a failed create: %v", snaps)
	}
	if _, err := s.Groups().GetVolumeGroupSnapshot(ctx, &csi.GetVolumeGroupSnapshotRequest{GroupSnapshotId: backend.GroupSnapshotIDFor("g")}); status.Code(err) != codes.NotFound {
		t.Fatalf("failed group: %v", err)
	}
	// The retry after the cause is gone makes the whole group.
	b.FailSnapshotsOf(sorted[2], nil)
	resp, err := s.Groups().CreateVolumeGroupSnapshot(ctx, &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: ids})
	if err != nil || len(resp.GetGroupSnapshot().GetSnapshots()) != 3 {
		t.Fatalf("retry: %v, %v", resp, err)
	}
}

func TestGroupSnapshotMembersOnTwoNodes(t *testing.T) {
	b := fake.New("node-a", 10*backend.GiB)
	s := New(b)
	a := groupVolumes(t, s, "a")
	b.Node = "node-b"
	bb := groupVolumes(t, s, "b")
	_, err := s.Groups().CreateVolumeGroupSnapshot(context.Background(), &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: append(a, bb...)})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), `"node-a"`) || !strings.Contains(err.Error(), `"node-b"`) {
		t.Fatalf("want FailedPrecondition naming both nodes, got %v", err)
	}
	if snaps, _ := b.ListSnapshots(context.Background()); len(snaps) != 0 {
		t.Fatalf("snapshots made: %v", snaps)
	}
}

// A backend without group snapshots gets no GroupController.
func TestNoGroupControllerWithoutBackendSupport(t *testing.T) {
	if New(plainBackend{fake.New("n1", backend.GiB)}).Groups() != nil {
		t.Fatal("GroupController offered over a backend without group snapshots")
	}
}

// plainBackend hides the fake's group snapshots.
type plainBackend struct{ backend.Backend }
