package router

import (
	"errors"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/rpcerr"
	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

// groupNode plays the node agent for groups: the pool takes every member
// (their IDs derived like the backends derive them), and member
// ThinSnapshots find theirs.
func groupNode(h *harness, size int64) {
	h.onGrp = func(g *thinv1.ThinGroupSnapshot) {
		g.Status.Phase, g.Status.ReadyToUse, g.Status.Code, g.Status.OneInstant = thinv1.PhaseReady, true, "OK", true
		for _, src := range g.Spec.SourceVolumeIDs {
			g.Status.Members = append(g.Status.Members, thinv1.GroupMember{SnapshotID: backend.MemberSnapshotID(g.Name, src), SourceVolumeID: src, SizeBytes: size})
		}
	}
	h.onSnap = func(ts *thinv1.ThinSnapshot) {
		if ts.Spec.GroupID == "" {
			h.t.Errorf("ThinSnapshot %s of a group has no groupID: the node would take it alone", ts.Name)
		}
		ts.Status.Phase, ts.Status.ReadyToUse, ts.Status.SizeBytes = thinv1.PhaseReady, true, size
	}
}

func TestGroupSnapshot(t *testing.T) {
	gib := backend.GiB
	h := newHarness(t, readyVolume(volA, "n2", gib), readyVolume(volB, "n2", gib))
	groupNode(h, gib)
	id := backend.GroupSnapshotIDFor("group-1")
	req := backend.GroupSnapshotRequest{ID: id, Name: "group-1", SourceVolumeIDs: []string{volB, volA}, SkipFreeze: true}
	g, err := h.r.CreateGroupSnapshot(h.ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if g.ID != id || !g.ReadyToUse || len(g.Snapshots) != 2 || !g.OneInstant {
		t.Fatalf("group %+v (want ready, 2 members, OneInstant as the node reported)", g)
	}
	var tgs thinv1.ThinGroupSnapshot
	if err := h.c.Get(h.ctx, client.ObjectKey{Name: id}, &tgs); err != nil {
		t.Fatal(err)
	}
	if tgs.Spec.Node != "n2" || !tgs.Spec.SkipFreeze || !slices.IsSorted(tgs.Spec.SourceVolumeIDs) || tgs.Labels[wellknown.LabelNode] != "n2" ||
		!slices.Equal(tgs.Finalizers, []string{wellknown.FinalizerNodeCleanup}) {
		t.Errorf("ThinGroupSnapshot %+v (labels %v, finalizers %v): want node n2, skipFreeze, sorted sources, node label, the agent's finalizer", tgs.Spec, tgs.Labels, tgs.Finalizers)
	}
	for _, s := range g.Snapshots {
		if s.ID != backend.MemberSnapshotID(id, s.SourceVolumeID) || s.Node != "n2" || s.GroupID != id || s.GroupSize != 2 || !s.ReadyToUse {
			t.Errorf("member %+v", s)
		}
		// A member is a snapshot like any other: found, and restored on its node.
		if got, err := h.r.GetSnapshot(h.ctx, s.ID); err != nil || got.GroupID != id {
			t.Errorf("GetSnapshot(member %s) = %+v, %v", s.ID, got, err)
		}
	}
	// Idempotent; other sources under the same ID are AlreadyExists.
	again, err := h.r.CreateGroupSnapshot(h.ctx, req)
	if err != nil || again.ID != id || len(again.Snapshots) != 2 {
		t.Fatalf("create again: %+v, %v", again, err)
	}
	if _, err := h.r.CreateGroupSnapshot(h.ctx, backend.GroupSnapshotRequest{ID: id, SourceVolumeIDs: []string{volA}}); rpcerr.Code(err) != codes.AlreadyExists {
		t.Errorf("same ID, other sources: %v, want AlreadyExists", err)
	}
	got, err := h.r.GetGroupSnapshot(h.ctx, id)
	if err != nil || !got.ReadyToUse || len(got.Snapshots) != 2 {
		t.Fatalf("GetGroupSnapshot = %+v, %v", got, err)
	}
	// A member deleted on its own leaves the group not ready.
	if err := h.r.DeleteSnapshot(h.ctx, g.Snapshots[0].ID); err != nil {
		t.Fatal(err)
	}
	if got, err := h.r.GetGroupSnapshot(h.ctx, id); err != nil || got.ReadyToUse || len(got.Snapshots) != 1 {
		t.Errorf("GetGroupSnapshot with a member gone = %+v, %v; want 1 member, not ready", got, err)
	}
	if err := h.r.DeleteGroupSnapshot(h.ctx, id); err != nil {
		t.Fatal(err)
	}
	var left thinv1.ThinSnapshotList
	if err := h.c.List(h.ctx, &left); err != nil || len(left.Items) != 0 {
		t.Errorf("after the delete: %d ThinSnapshots left, %v", len(left.Items), err)
	}
	if _, err := h.r.GetGroupSnapshot(h.ctx, id); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("GetGroupSnapshot after delete: %v, want NotFound", err)
	}
	if err := h.r.DeleteGroupSnapshot(h.ctx, id); err != nil {
		t.Errorf("delete again: %v", err)
	}
}

// A group the node could not take carries the node's code to the caller,
// and its ThinGroupSnapshot goes so that a retry starts afresh; no member
// ThinSnapshot is made.
func TestGroupSnapshotNodeFails(t *testing.T) {
	h := newHarness(t, readyVolume(volA, "n2", backend.GiB))
	h.onGrp = func(g *thinv1.ThinGroupSnapshot) {
		g.Status.Phase, g.Status.Code, g.Status.Message = thinv1.PhaseFailed, codes.ResourceExhausted.String(), "pool full"
	}
	h.onSnap = func(ts *thinv1.ThinSnapshot) { t.Errorf("member ThinSnapshot %s made for a failed group", ts.Name) }
	id := backend.GroupSnapshotIDFor("group-full")
	_, err := h.r.CreateGroupSnapshot(h.ctx, backend.GroupSnapshotRequest{ID: id, SourceVolumeIDs: []string{volA}})
	if rpcerr.Code(err) != codes.ResourceExhausted {
		t.Fatalf("err %v, want ResourceExhausted", err)
	}
	var tgs thinv1.ThinGroupSnapshot
	if !deleted(h.ctx, h.c, id, &tgs) {
		t.Errorf("the failed ThinGroupSnapshot was not deleted: %+v", tgs.Status)
	}
	// Bad input is refused before anything is made.
	if _, err := h.r.CreateGroupSnapshot(h.ctx, backend.GroupSnapshotRequest{ID: "g-nope", SourceVolumeIDs: []string{volA}}); !errors.Is(err, backend.ErrInvalid) {
		t.Errorf("bad ID: %v", err)
	}
	if _, err := h.r.CreateGroupSnapshot(h.ctx, backend.GroupSnapshotRequest{ID: id, SourceVolumeIDs: []string{volB}}); rpcerr.Code(err) != codes.NotFound {
		t.Errorf("missing source: %v, want NotFound", err)
	}
}
