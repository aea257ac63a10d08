package router

import (
	"context"
	"fmt"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

// A group snapshot is a ThinGroupSnapshot, which the node of its volumes
// takes in one call to its pool (one instant for all members), and, once
// that is Ready, one ThinSnapshot per member (spec.groupID set): the
// members are restored, listed and deleted through those like any
// snapshot, and the node agent only looks them up.

var _ backend.GroupSnapshotter = (*Router)(nil)

// CreateGroupSnapshot implements backend.GroupSnapshotter. The caller
// (pkg/controller) has checked that the sources share one node.
func (r *Router) CreateGroupSnapshot(ctx context.Context, req backend.GroupSnapshotRequest) (*backend.GroupSnapshot, error) {
	if !backend.IsGroupSnapshotID(req.ID) {
		return nil, fmt.Errorf("group snapshot ID %q: %w", req.ID, backend.ErrInvalid)
	}
	sources, err := backend.GroupSources(req.SourceVolumeIDs)
	if err != nil {
		return nil, err
	}
	logger := klog.FromContext(ctx).WithValues("groupSnapshotID", req.ID, "volumeIDs", sources)
	ctx = klog.NewContext(ctx, logger)
	node, err := r.sourceNode(ctx, backend.Source{Kind: backend.SourceVolume, ID: sources[0]})
	if err != nil {
		return nil, err
	}
	g := &thinv1.ThinGroupSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: req.ID, Labels: map[string]string{wellknown.LabelNode: node}, Finalizers: agentFinalizer()},
		Spec:       thinv1.ThinGroupSnapshotSpec{Node: node, Name: req.Name, SourceVolumeIDs: sources, SkipFreeze: req.SkipFreeze},
	}
	if err := r.client.Create(ctx, g); err != nil {
		if !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("create ThinGroupSnapshot %s: %w", req.ID, err)
		}
		if err := r.api.Get(ctx, client.ObjectKey{Name: req.ID}, g); err != nil {
			return nil, fmt.Errorf("get ThinGroupSnapshot %s: %w", req.ID, err)
		}
		if g.DeletionTimestamp != nil {
			return nil, fmt.Errorf("group snapshot %s: an earlier attempt is still being cleaned up on node %s: %w", req.ID, g.Spec.Node, backend.ErrBusy)
		}
		if !slices.Equal(g.Spec.SourceVolumeIDs, sources) {
			return nil, fmt.Errorf("group snapshot %s exists for volumes %v, requested for %v: %w", req.ID, g.Spec.SourceVolumeIDs, sources, backend.ErrExists)
		}
	} else {
		logger.Info("ThinGroupSnapshot created, waiting for the node", "node", node)
	}
	if err := r.waitVerdict(ctx, g, "group snapshot "+req.ID, func() nodeVerdict {
		return nodeVerdict{node: g.Spec.Node, code: g.Status.Code, message: g.Status.Message, phase: g.Status.Phase,
			conditions: g.Status.Conditions, resumable: g.Resumable()}
	}); err != nil {
		return nil, err
	}
	members := make([]*backend.Snapshot, 0, len(g.Status.Members))
	for _, m := range g.Status.Members {
		s, err := r.CreateSnapshot(ctx, backend.SnapshotRequest{
			ID: m.SnapshotID, Name: req.Name, SourceVolumeID: m.SourceVolumeID,
			SkipFreeze: req.SkipFreeze, GroupID: req.ID, GroupSize: len(g.Status.Members),
		})
		if err != nil {
			return nil, fmt.Errorf("group snapshot %s: member %s: %w", req.ID, m.SnapshotID, err)
		}
		s.GroupSize = len(g.Status.Members)
		members = append(members, s)
	}
	logger.Info("group snapshot ready", "node", node, "members", len(members))
	return groupOf(g, members), nil
}

func groupOf(g *thinv1.ThinGroupSnapshot, members []*backend.Snapshot) *backend.GroupSnapshot {
	out := &backend.GroupSnapshot{ID: g.Name, Name: g.Spec.Name, Snapshots: members, CreatedAt: g.CreationTimestamp.Time,
		ReadyToUse: g.Status.Phase == thinv1.PhaseReady && g.Status.ReadyToUse && len(members) == len(g.Spec.SourceVolumeIDs),
		OneInstant: g.Status.OneInstant}
	if g.Status.CreationTime != nil {
		out.CreatedAt = g.Status.CreationTime.Time
	}
	for _, m := range members {
		out.ReadyToUse = out.ReadyToUse && m.ReadyToUse
	}
	return out
}

// members lists the member ThinSnapshots of group id.
func (r *Router) members(ctx context.Context, id string) ([]thinv1.ThinSnapshot, error) {
	var list thinv1.ThinSnapshotList
	if err := r.api.List(ctx, &list, client.MatchingLabels{wellknown.LabelGroup: id}); err != nil {
		return nil, fmt.Errorf("list members of group snapshot %s: %w", id, err)
	}
	return list.Items, nil
}

// DeleteGroupSnapshot implements backend.GroupSnapshotter: the members'
// ThinSnapshots first, then the group, each waited for.
func (r *Router) DeleteGroupSnapshot(ctx context.Context, id string) error {
	if !backend.IsGroupSnapshotID(id) {
		return nil
	}
	members, err := r.members(ctx, id)
	if err != nil {
		return err
	}
	for i := range members {
		if err := r.DeleteSnapshot(ctx, members[i].Name); err != nil {
			return fmt.Errorf("group snapshot %s: member %s: %w", id, members[i].Name, err)
		}
	}
	if lost := (&thinv1.ThinGroupSnapshot{}); r.getFresh(ctx, id, lost) == nil && lost.Status.Phase == thinv1.PhaseLost {
		return r.deleteLost(ctx, lost, lost.Spec.Node)
	}
	g := &thinv1.ThinGroupSnapshot{ObjectMeta: metav1.ObjectMeta{Name: id}}
	return r.deleteAndWait(ctx, g, id, func() deleteState {
		return deleteState{g.Spec.Node, g.Status.Code, g.Status.Message, deleteFailed(g.Status.Conditions)}
	})
}

// GetGroupSnapshot implements backend.GroupSnapshotter.
func (r *Router) GetGroupSnapshot(ctx context.Context, id string) (*backend.GroupSnapshot, error) {
	if err := backend.CheckGroupSnapshotID(id); err != nil {
		return nil, err
	}
	g := &thinv1.ThinGroupSnapshot{}
	if err := r.getFresh(ctx, id, g); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("group snapshot %s: %w", id, backend.ErrNotFound)
		}
		return nil, fmt.Errorf("get ThinGroupSnapshot %s: %w", id, err)
	}
	if g.Status.Phase == thinv1.PhaseFailed {
		return nil, fmt.Errorf("group snapshot %s failed on node %s: %w", id, g.Spec.Node, backend.ErrNotFound)
	}
	items, err := r.members(ctx, id)
	if err != nil {
		return nil, err
	}
	members := make([]*backend.Snapshot, 0, len(items))
	for i := range items {
		if items[i].Status.Phase == thinv1.PhaseReady {
			s := snapshotOf(&items[i])
			s.GroupSize = len(g.Spec.SourceVolumeIDs)
			members = append(members, s)
		}
	}
	return groupOf(g, members), nil
}
