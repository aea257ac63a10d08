package router

import (
	"context"
	"fmt"
	"sort"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

// CreateSnapshot creates (or finds) the ThinSnapshot named req.ID on the
// source volume's node and waits for that node's verdict.
func (r *Router) CreateSnapshot(ctx context.Context, req backend.SnapshotRequest) (*backend.Snapshot, error) {
	if !backend.IsSnapshotID(req.ID) {
		return nil, fmt.Errorf("snapshot ID %q: %w", req.ID, backend.ErrInvalid)
	}
	logger := klog.FromContext(ctx).WithValues("snapshotID", req.ID, "volumeID", req.SourceVolumeID)
	stages := startStages("create_snapshot")
	node, err := r.sourceNode(ctx, backend.Source{Kind: backend.SourceVolume, ID: req.SourceVolumeID})
	if err != nil {
		return nil, err
	}
	stages.done(stagePlace)
	ts := &thinv1.ThinSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: req.ID, Labels: map[string]string{wellknown.LabelNode: node}, Finalizers: agentFinalizer()},
		Spec:       thinv1.ThinSnapshotSpec{Node: node, Name: req.Name, SourceVolumeID: req.SourceVolumeID, SkipFreeze: req.SkipFreeze, GroupID: req.GroupID},
	}
	if req.VolumeSnapshotNamespace != "" && req.VolumeSnapshotName != "" {
		ts.Annotations = map[string]string{
			wellknown.AnnotationVolumeSnapshotNamespace: req.VolumeSnapshotNamespace,
			wellknown.AnnotationVolumeSnapshotName:      req.VolumeSnapshotName,
		}
	}
	if req.Export != nil {
		ts.Spec.Export = backendExport(req.Export)
	}
	if req.GroupID != "" {
		ts.Labels[wellknown.LabelGroup] = req.GroupID
	}
	err = r.client.Create(ctx, ts)
	stages.done(stageSubmit)
	if err != nil {
		if !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("create ThinSnapshot %s: %w", req.ID, err)
		}
		if err := r.api.Get(ctx, client.ObjectKey{Name: req.ID}, ts); err != nil {
			return nil, fmt.Errorf("get ThinSnapshot %s: %w", req.ID, err)
		}
		if ts.DeletionTimestamp != nil {
			return nil, fmt.Errorf("snapshot %s: an earlier attempt is still being cleaned up on node %s: %w", req.ID, ts.Spec.Node, backend.ErrBusy)
		}
		if ts.Spec.SourceVolumeID != req.SourceVolumeID {
			return nil, fmt.Errorf("snapshot %s exists for volume %s, requested for %s: %w", req.ID, ts.Spec.SourceVolumeID, req.SourceVolumeID, backend.ErrExists)
		}
		if !sameExport(ts.Spec.Export, req.Export) {
			return nil, fmt.Errorf("snapshot %s exists with export %s, requested with %s: %w", req.ID, exportString(ts.Spec.Export), exportString(backendExport(req.Export)), backend.ErrExists)
		}
	} else {
		logger.Info("ThinSnapshot created, waiting for the node", "node", node)
	}

	if err := r.waitVerdict(ctx, ts, "snapshot "+req.ID, func() nodeVerdict {
		return nodeVerdict{node: ts.Spec.Node, code: ts.Status.Code, message: ts.Status.Message, phase: ts.Status.Phase,
			conditions: ts.Status.Conditions, resumable: ts.Resumable()}
	}); err != nil {
		return nil, err
	}
	stages.done(stageNode)
	logger.Info("snapshot ready", "node", ts.Spec.Node, "sizeBytes", ts.Status.SizeBytes)
	return snapshotOf(ts), nil
}

// ExportsSnapshots implements backend.SnapshotExporter: the node agent
// holding a snapshot exports it (pkg/k8s/snapshotexport).
func (r *Router) ExportsSnapshots() bool { return true }

func backendExport(e *backend.ExportTarget) *thinv1.SnapshotExport {
	if e == nil {
		return nil
	}
	return &thinv1.SnapshotExport{SecretNamespace: e.SecretNamespace, SecretName: e.SecretName, Retain: e.Retain}
}

func sameExport(have *thinv1.SnapshotExport, want *backend.ExportTarget) bool {
	w := backendExport(want)
	if have == nil || w == nil {
		return have == nil && w == nil
	}
	return *have == *w
}

func exportString(e *thinv1.SnapshotExport) string {
	if e == nil {
		return "none"
	}
	if e.Retain {
		return "to Secret " + e.SecretNamespace + "/" + e.SecretName + " (retained)"
	}
	return "to Secret " + e.SecretNamespace + "/" + e.SecretName
}

func snapshotOf(ts *thinv1.ThinSnapshot) *backend.Snapshot {
	s := &backend.Snapshot{
		ID:             ts.Name,
		Name:           ts.Spec.Name,
		SourceVolumeID: ts.Spec.SourceVolumeID,
		SizeBytes:      ts.Status.SizeBytes,
		Node:           ts.Spec.Node,
		CreatedAt:      ts.CreationTimestamp.Time,
		ReadyToUse:     ts.Status.ReadyToUse,
		GroupID:        ts.Spec.GroupID,
	}
	if ts.Status.CreationTime != nil {
		s.CreatedAt = ts.Status.CreationTime.Time
	}
	return s
}

// DeleteSnapshot deletes the ThinSnapshot and waits until the node has
// removed the snapshot.
func (r *Router) DeleteSnapshot(ctx context.Context, id string) error {
	if !backend.IsSnapshotID(id) {
		return nil
	}
	if lost := (&thinv1.ThinSnapshot{}); r.getFresh(ctx, id, lost) == nil && lost.Status.Phase == thinv1.PhaseLost {
		return r.deleteLost(ctx, lost, lost.Spec.Node)
	}
	ts := &thinv1.ThinSnapshot{ObjectMeta: metav1.ObjectMeta{Name: id}}
	return r.deleteAndWait(ctx, ts, id, func() deleteState {
		return deleteState{ts.Spec.Node, ts.Status.Code, ts.Status.Message, deleteFailed(ts.Status.Conditions)}
	})
}

// GetSnapshot reads a snapshot's ThinSnapshot; a failed one does not exist.
func (r *Router) GetSnapshot(ctx context.Context, id string) (*backend.Snapshot, error) {
	if err := backend.CheckSnapshotID(id); err != nil {
		return nil, err
	}
	ts := &thinv1.ThinSnapshot{}
	if err := r.getFresh(ctx, id, ts); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("snapshot %s: %w", id, backend.ErrNotFound)
		}
		return nil, fmt.Errorf("get ThinSnapshot %s: %w", id, err)
	}
	if ts.Status.Phase == thinv1.PhaseFailed {
		return nil, fmt.Errorf("snapshot %s failed on node %s: %w", id, ts.Spec.Node, backend.ErrNotFound)
	}
	return snapshotOf(ts), nil
}

// ListSnapshots lists the Ready snapshots, sorted by ID.
func (r *Router) ListSnapshots(ctx context.Context) ([]*backend.Snapshot, error) {
	var list thinv1.ThinSnapshotList
	if err := r.client.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("list ThinSnapshots: %w", err)
	}
	out := make([]*backend.Snapshot, 0, len(list.Items))
	for i := range list.Items {
		// A snapshot taken for a cross-node copy is the controller's, not
		// a VolumeSnapshot's.
		if list.Items[i].Status.Phase == thinv1.PhaseReady && list.Items[i].Labels[wellknown.LabelTransferFor] == "" {
			out = append(out, snapshotOf(&list.Items[i]))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}
