package router

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/export"
	"github.com/csi-thin/csi-thin/pkg/k8s/lifecycle"
	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

// Keys the external-provisioner adds to the parameters with
// --extra-create-metadata. They describe the claim, not the storage: they
// become labels, not spec.parameters.
const (
	metadataPrefix      = "csi.storage.k8s.io/"
	paramPVCName        = "csi.storage.k8s.io/pvc/name"
	paramPVCNamespace   = "csi.storage.k8s.io/pvc/namespace"
	immediateBindingFix = "with WaitForFirstConsumer the scheduler picked another node; " +
		"use a StorageClass with volumeBindingMode: Immediate for clones and restores, " +
		"or keep the pod on the source's node"
)

// CreateVolume creates (or finds) the ThinVolume named req.ID on the node
// that must hold it and waits until that node reports it Ready or Failed.
func (r *Router) CreateVolume(ctx context.Context, req backend.VolumeRequest) (*backend.Volume, error) {
	if !backend.IsVolumeID(req.ID) {
		return nil, fmt.Errorf("volume ID %q: %w", req.ID, backend.ErrInvalid)
	}
	if req.Source.Kind == backend.SourceExport {
		if _, err := export.ParseHandle(req.Source.ID); err != nil {
			return nil, fmt.Errorf("volume %s: %w: %w", req.ID, backend.ErrInvalid, err)
		}
	}
	logger := klog.FromContext(ctx).WithValues("volumeID", req.ID)
	stages := startStages("create_volume")
	node, srcNode, err := r.placeVolume(ctx, req)
	if err != nil {
		return nil, err
	}
	stages.done(stagePlace)
	want := volumeFor(req, node, srcNode)
	tv := want.DeepCopy()
	err = r.client.Create(ctx, tv)
	stages.done(stageSubmit)
	if err != nil {
		if !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("create ThinVolume %s: %w", req.ID, err)
		}
		// A retry (or a concurrent call) for the same name: the API server
		// is the truth here, the cache may not have it yet.
		if err := r.api.Get(ctx, client.ObjectKey{Name: req.ID}, tv); err != nil {
			return nil, fmt.Errorf("get ThinVolume %s: %w", req.ID, err)
		}
		if tv.DeletionTimestamp != nil {
			return nil, fmt.Errorf("volume %s: an earlier attempt is still being cleaned up on node %s: %w", req.ID, tv.Spec.Node, backend.ErrBusy)
		}
		if err := compatibleVolume(tv, req); err != nil {
			return nil, err
		}
		if err := r.discardUnmadeOfGoneNode(ctx, tv); err != nil {
			return nil, err
		}
		logger.V(2).Info("ThinVolume exists, waiting for it", "node", tv.Spec.Node, "phase", tv.Status.Phase)
	} else {
		logger.Info("ThinVolume created, waiting for the node", "node", node, "requiredBytes", req.RequiredBytes, "source", req.Source.ID)
	}

	if err := r.waitVerdict(ctx, tv, "volume "+req.ID, func() nodeVerdict {
		return nodeVerdict{node: tv.Spec.Node, code: tv.Status.Code, message: tv.Status.Message, phase: tv.Status.Phase,
			conditions: tv.Status.Conditions, resumable: tv.Resumable()}
	}); err != nil {
		return nil, copyInProgress(tv, err)
	}
	stages.done(stageNode)
	logger.Info("volume ready", "node", tv.Spec.Node, "sizeBytes", tv.Status.SizeBytes)
	return volumeOf(tv), nil
}

// discardUnmadeOfGoneNode deletes tv, and returns an error that has the
// sidecar retry, when its node was lost before making it and has since
// been deleted from the cluster: no agent will ever make it, and the claim
// (its selected node gone, rescheduled by the provisioner) is to be made
// afresh where the scheduler now puts it. A volume that was made is kept,
// Lost: its data is not given up on a guess.
func (r *Router) discardUnmadeOfGoneNode(ctx context.Context, tv *thinv1.ThinVolume) error {
	if tv.Status.Phase != thinv1.PhaseLost || !tv.Resumable() {
		return nil
	}
	err := r.api.Get(ctx, client.ObjectKey{Name: tv.Spec.Node}, &corev1.Node{})
	if !apierrors.IsNotFound(err) {
		if err != nil {
			return fmt.Errorf("get Node %s: %w", tv.Spec.Node, err)
		}
		return nil // the node may come back and make it
	}
	if err := r.deleteLost(ctx, tv, tv.Spec.Node); err != nil {
		return err
	}
	klog.FromContext(ctx).Info("discarded a volume its node, now deleted from the cluster, never made", "volumeID", tv.Name, "node", tv.Spec.Node)
	return fmt.Errorf("volume %s: node %s was deleted from the cluster before it made the volume; that attempt is discarded, and the next one makes it afresh: %w",
		tv.Name, tv.Spec.Node, backend.ErrBusy)
}

func phaseOf(p thinv1.Phase) thinv1.Phase {
	if p == "" {
		return thinv1.PhasePending
	}
	return p
}

// placeVolume returns the node the controller decided (req.Node; see
// controller placement) and, for a clone or restore, its source's node,
// read fresh (a source failed or being deleted is ErrNotFound). A source
// on another node than the one requested is copied there (crossnode.go)
// when transfers can carry it, else the request is FailedPrecondition.
// Only when the controller left the node open (no source, no topology)
// does it choose: the healthy pool with most room.
func (r *Router) placeVolume(ctx context.Context, req backend.VolumeRequest) (node, srcNode string, err error) {
	// An export lives in an object store: any node can restore it.
	if req.Source.Kind != backend.SourceNone && req.Source.Kind != backend.SourceExport {
		srcNode, err := r.sourceNode(ctx, req.Source)
		if err != nil {
			return "", "", err
		}
		if req.Node != "" && req.Node != srcNode {
			if err := r.canCopy(ctx, req.Source, srcNode, req.Node); err != nil {
				return "", "", fmt.Errorf("volume %s: its source %s %s is on node %s, but node %s was requested, and %v (%s): %w",
					req.ID, req.Source.Kind, req.Source.ID, srcNode, req.Node, err, immediateBindingFix, backend.ErrPrecondition)
			}
			return req.Node, srcNode, nil
		}
		return srcNode, srcNode, nil
	}
	if req.Node != "" {
		return req.Node, "", nil
	}
	nodes, err := r.usableNodes(ctx)
	if err != nil {
		return "", "", err
	}
	best := ""
	var bestAvail int64 = -1
	for _, tn := range nodes {
		a := tn.Status.AvailableBytes
		if a >= req.RequiredBytes && (a > bestAvail || (a == bestAvail && tn.Name < best)) {
			best, bestAvail = tn.Name, a
		}
	}
	if best == "" {
		return "", "", fmt.Errorf("volume %s: no node with a healthy pool has %d bytes available (%d usable nodes): %w",
			req.ID, req.RequiredBytes, len(nodes), backend.ErrNoSpace)
	}
	return best, "", nil
}

// sourceNode finds the node of a clone's or restore's source.
func (r *Router) sourceNode(ctx context.Context, src backend.Source) (string, error) {
	var obj client.Object
	switch src.Kind {
	case backend.SourceVolume:
		if !backend.IsVolumeID(src.ID) {
			return "", fmt.Errorf("source volume %q: %w", src.ID, backend.ErrNotFound)
		}
		obj = &thinv1.ThinVolume{}
	case backend.SourceSnapshot:
		if !backend.IsSnapshotID(src.ID) {
			return "", fmt.Errorf("source snapshot %q: %w", src.ID, backend.ErrNotFound)
		}
		obj = &thinv1.ThinSnapshot{}
	default:
		return "", fmt.Errorf("source kind %q: %w", src.Kind, backend.ErrInvalid)
	}
	if err := r.getFresh(ctx, src.ID, obj); err != nil {
		if apierrors.IsNotFound(err) {
			return "", fmt.Errorf("source %s %s: %w", src.Kind, src.ID, backend.ErrNotFound)
		}
		return "", fmt.Errorf("get source %s %s: %w", src.Kind, src.ID, err)
	}
	if obj.GetDeletionTimestamp() != nil {
		return "", fmt.Errorf("source %s %s is being deleted: %w", src.Kind, src.ID, backend.ErrNotFound)
	}
	switch o := obj.(type) {
	case *thinv1.ThinVolume:
		if o.Status.Phase == thinv1.PhaseFailed {
			return "", fmt.Errorf("source volume %s failed: %w", src.ID, backend.ErrNotFound)
		}
		return o.Spec.Node, nil
	case *thinv1.ThinSnapshot:
		if o.Status.Phase == thinv1.PhaseFailed {
			return "", fmt.Errorf("source snapshot %s failed: %w", src.ID, backend.ErrNotFound)
		}
		return o.Spec.Node, nil
	}
	return "", nil
}

// getFresh reads from the cache and falls back to the API server on a
// miss: an object created a moment ago may not be cached yet.
func (r *Router) getFresh(ctx context.Context, name string, obj client.Object) error {
	err := r.client.Get(ctx, client.ObjectKey{Name: name}, obj)
	if apierrors.IsNotFound(err) {
		err = r.api.Get(ctx, client.ObjectKey{Name: name}, obj)
	}
	return err
}

// volumeFor is the ThinVolume answering req on node; srcNode is the
// source's node ("" or node itself for a copy on the same node).
func volumeFor(req backend.VolumeRequest, node, srcNode string) *thinv1.ThinVolume {
	labels := map[string]string{wellknown.LabelNode: node}
	params := map[string]string{}
	for k, v := range req.Parameters {
		if !strings.HasPrefix(k, metadataPrefix) {
			params[k] = v
		}
	}
	for param, label := range map[string]string{paramPVCName: wellknown.LabelPVCName, paramPVCNamespace: wellknown.LabelPVCNamespace} {
		if v := req.Parameters[param]; v != "" && len(validation.IsValidLabelValue(v)) == 0 {
			labels[label] = v
		}
	}
	tv := &thinv1.ThinVolume{
		ObjectMeta: metav1.ObjectMeta{Name: req.ID, Labels: labels, Finalizers: agentFinalizer()},
		Spec: thinv1.ThinVolumeSpec{
			Node:          node,
			Name:          req.Name,
			RequiredBytes: req.RequiredBytes,
			LimitBytes:    req.LimitBytes,
			AccessType:    thinv1.AccessType(req.AccessType),
			FsType:        req.FsType,
		},
	}
	if tv.Spec.AccessType == "" {
		tv.Spec.AccessType = thinv1.AccessMount
	}
	if len(params) > 0 {
		tv.Spec.Parameters = params
	}
	switch req.Source.Kind {
	case backend.SourceNone:
	case backend.SourceExport:
		h, _ := export.ParseHandle(req.Source.ID) // checked by CreateVolume
		tv.Spec.Source = &thinv1.VolumeSource{Kind: thinv1.VolumeSourceExport, ID: h.ExportID,
			Export: &thinv1.SnapshotExport{SecretNamespace: h.SecretNamespace, SecretName: h.SecretName}}
	default:
		tv.Spec.Source = &thinv1.VolumeSource{Kind: thinv1.VolumeSourceKind(req.Source.Kind), ID: req.Source.ID}
		if srcNode != "" && srcNode != node {
			tv.Spec.Source.Node = srcNode
			tv.Spec.Source.SnapshotID = streamedSnapshot(req.ID, req.Source)
		}
	}
	return tv
}

// compatibleVolume decides whether an existing ThinVolume answers req (a
// retry) or is a different volume under the same name (ErrExists). The
// node is not compared: a retry may carry another scheduler choice, and
// the volume that exists is the one to return.
func compatibleVolume(tv *thinv1.ThinVolume, req backend.VolumeRequest) error {
	want := volumeFor(req, tv.Spec.Node, "")
	var diffs []string
	if tv.Spec.AccessType != want.Spec.AccessType {
		diffs = append(diffs, fmt.Sprintf("access type %s, requested %s", tv.Spec.AccessType, want.Spec.AccessType))
	}
	if tv.Spec.FsType != want.Spec.FsType {
		diffs = append(diffs, fmt.Sprintf("fsType %q, requested %q", tv.Spec.FsType, want.Spec.FsType))
	}
	if !sourceEqual(tv.Spec.Source, want.Spec.Source) {
		diffs = append(diffs, fmt.Sprintf("source %v, requested %v", tv.Spec.Source, want.Spec.Source))
	}
	if !maps.Equal(tv.Spec.Parameters, want.Spec.Parameters) {
		diffs = append(diffs, "different parameters")
	}
	size := tv.Spec.RequiredBytes
	if tv.Status.Phase == thinv1.PhaseReady {
		size = tv.Status.SizeBytes
	}
	if !backend.Fits(size, req.RequiredBytes, req.LimitBytes) {
		diffs = append(diffs, fmt.Sprintf("size %d outside the requested range [%d, %d]", size, req.RequiredBytes, req.LimitBytes))
	}
	if len(diffs) > 0 {
		return fmt.Errorf("volume %s: %s: %w", req.ID, strings.Join(diffs, "; "), backend.ErrExists)
	}
	return nil
}

// sourceEqual compares what a request names (kind, ID, export); where a
// copy comes from (node, streamed snapshot) follows from it.
func sourceEqual(a, b *thinv1.VolumeSource) bool {
	if a == nil || b == nil {
		return a == b
	}
	if a.Kind != b.Kind || a.ID != b.ID || (a.Export == nil) != (b.Export == nil) {
		return false
	}
	return a.Export == nil || *a.Export == *b.Export
}

// sourceOf is the backend's form of a ThinVolume's source: an export's
// becomes its handle again.
func sourceOf(s *thinv1.VolumeSource) backend.Source {
	if s.Kind == thinv1.VolumeSourceExport && s.Export != nil {
		return backend.Source{Kind: backend.SourceExport, ID: export.Handle{SecretNamespace: s.Export.SecretNamespace, SecretName: s.Export.SecretName, ExportID: s.ID}.String()}
	}
	return backend.Source{Kind: backend.SourceKind(s.Kind), ID: s.ID}
}

func volumeOf(tv *thinv1.ThinVolume) *backend.Volume {
	v := &backend.Volume{
		ID:         tv.Name,
		Name:       tv.Spec.Name,
		SizeBytes:  tv.Status.SizeBytes,
		AccessType: backend.AccessType(tv.Spec.AccessType),
		FsType:     tv.Spec.FsType,
		Parameters: tv.Spec.Parameters,
		Node:       tv.Spec.Node,
		CreatedAt:  tv.CreationTimestamp.Time,
	}
	if s := tv.Spec.Source; s != nil {
		v.Source = sourceOf(s)
	}
	if c := apimeta.FindStatusCondition(tv.Status.Conditions, thinv1.ConditionHealthy); c != nil && c.Status == metav1.ConditionFalse {
		v.Condition = backend.Condition{Abnormal: true, Message: c.Message}
	} else {
		v.Condition = backend.Condition{Message: "volume is healthy"}
	}
	return v
}

// DeleteVolume deletes the ThinVolume and waits until the node agent has
// removed the storage and released its finalizer. A node-side failure is
// returned with its code; the agent keeps retrying in the background.
func (r *Router) DeleteVolume(ctx context.Context, id string) error {
	if !backend.IsVolumeID(id) {
		return nil // no such volume can exist
	}
	if lost := (&thinv1.ThinVolume{}); r.getFresh(ctx, id, lost) == nil && lost.Status.Phase == thinv1.PhaseLost {
		return r.deleteLost(ctx, lost, lost.Spec.Node)
	}
	tv := &thinv1.ThinVolume{ObjectMeta: metav1.ObjectMeta{Name: id}}
	return r.deleteAndWait(ctx, tv, id, func() deleteState {
		return deleteState{tv.Spec.Node, tv.Status.Code, tv.Status.Message, deleteFailed(tv.Status.Conditions)}
	})
}

// deleteLost deletes a resource whose node is lost without waiting for
// the node: the deletion of its PVC or VolumeSnapshot must complete. If
// the Node still exists the resource stays, terminating, with its
// finalizer, as the record that its storage is to go: the node's agent,
// back, removes the storage and then the resource. If the Node is gone
// from the cluster no agent will ever come, and the finalizer is released
// now (what the node still holds, should it return, is reported as stray
// storage, never deleted on a guess).
func (r *Router) deleteLost(ctx context.Context, obj client.Object, node string) error {
	logger := klog.FromContext(ctx).WithValues(idKeyOf(obj), obj.GetName(), "node", node)
	if err := r.client.Delete(ctx, obj); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete %s: %w", obj.GetName(), err)
	}
	n := &corev1.Node{}
	err := r.api.Get(ctx, client.ObjectKey{Name: node}, n)
	switch {
	case apierrors.IsNotFound(err):
		if err := lifecycle.ReleaseFinalizer(ctx, r.client, nil, obj, "node "+node+" was deleted from the cluster"); err != nil {
			return err
		}
	case err != nil:
		return fmt.Errorf("get Node %s: %w", node, err)
	default:
		logger.Info("node lost: deleted without waiting; its agent removes the storage when it returns")
	}
	return nil
}

func idKeyOf(obj client.Object) string {
	switch obj.(type) {
	case *thinv1.ThinSnapshot:
		return "snapshotID"
	case *thinv1.ThinGroupSnapshot:
		return "groupSnapshotID"
	}
	return "volumeID"
}

// deleteFailed: the node agent tried to remove the storage and could not.
func deleteFailed(conds []metav1.Condition) bool {
	c := apimeta.FindStatusCondition(conds, thinv1.ConditionReady)
	return c != nil && c.Reason == thinv1.ReasonDeleteFailed
}

// deleteState is what deleteAndWait needs to know of a resource's status.
type deleteState struct {
	node, code, message string
	failed              bool
}

func (r *Router) deleteAndWait(ctx context.Context, obj client.Object, id string, state func() deleteState) error {
	logger := klog.FromContext(ctx).WithValues(idKeyOf(obj), id)
	if err := r.client.Delete(ctx, obj); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("delete %s: %w", id, err)
	}
	logger.V(2).Info("deleted resource, waiting for the node to clean up")
	ctx, cancel := r.waitContext(ctx)
	defer cancel()
	var nodeErr error
	err := r.wait(ctx, obj, func(found bool) (bool, error) {
		if !found {
			return true, nil
		}
		if s := state(); s.failed && obj.GetDeletionTimestamp() != nil {
			nodeErr = statusError(s.node, s.code, s.message)
			return nodeErr != nil, nil
		}
		return false, nil
	})
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			return fmt.Errorf("%s still being deleted on node %s (is the csi-thin node agent running there?): %w", id, state().node, err)
		}
		return err
	}
	if nodeErr != nil {
		return nodeErr
	}
	logger.Info("deleted")
	return nil
}

// GetVolume reads a volume's ThinVolume; a failed one does not exist.
func (r *Router) GetVolume(ctx context.Context, id string) (*backend.Volume, error) {
	if err := backend.CheckVolumeID(id); err != nil {
		return nil, err
	}
	tv := &thinv1.ThinVolume{}
	if err := r.getFresh(ctx, id, tv); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("volume %s: %w", id, backend.ErrNotFound)
		}
		return nil, fmt.Errorf("get ThinVolume %s: %w", id, err)
	}
	if tv.Status.Phase == thinv1.PhaseFailed {
		return nil, fmt.Errorf("volume %s failed on node %s: %w", id, tv.Spec.Node, backend.ErrNotFound)
	}
	return volumeOf(tv), nil
}

// ListVolumes lists the Ready volumes, sorted by ID (stable pages).
func (r *Router) ListVolumes(ctx context.Context) ([]*backend.Volume, error) {
	var list thinv1.ThinVolumeList
	if err := r.client.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("list ThinVolumes: %w", err)
	}
	out := make([]*backend.Volume, 0, len(list.Items))
	for i := range list.Items {
		if list.Items[i].Status.Phase == thinv1.PhaseReady {
			out = append(out, volumeOf(&list.Items[i]))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// ExpandVolume raises spec.requiredBytes and waits until the node reports
// the new size (or the reason it could not grow the volume).
func (r *Router) ExpandVolume(ctx context.Context, id string, sizeBytes int64) (*backend.Volume, error) {
	if err := backend.CheckVolumeID(id); err != nil {
		return nil, err
	}
	logger := klog.FromContext(ctx).WithValues("volumeID", id)
	tv := &thinv1.ThinVolume{}
	if err := r.api.Get(ctx, client.ObjectKey{Name: id}, tv); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("volume %s: %w", id, backend.ErrNotFound)
		}
		return nil, fmt.Errorf("get ThinVolume %s: %w", id, err)
	}
	if tv.Status.Phase != thinv1.PhaseReady {
		return nil, fmt.Errorf("volume %s is %s, not Ready: %w", id, phaseOf(tv.Status.Phase), backend.ErrPrecondition)
	}
	if tv.Status.SizeBytes >= sizeBytes && tv.Status.ObservedGeneration >= tv.Generation {
		return volumeOf(tv), nil
	}
	if tv.Spec.RequiredBytes < sizeBytes {
		patch := client.MergeFromWithOptions(tv.DeepCopy(), client.MergeFromWithOptimisticLock{})
		tv.Spec.RequiredBytes = sizeBytes
		if tv.Spec.LimitBytes > 0 && tv.Spec.LimitBytes < sizeBytes {
			tv.Spec.LimitBytes = 0 // the resize request supersedes the creation limit
		}
		if err := r.client.Patch(ctx, tv, patch); err != nil {
			if apierrors.IsConflict(err) {
				return nil, fmt.Errorf("volume %s changed concurrently: %w", id, backend.ErrBusy)
			}
			return nil, fmt.Errorf("expand ThinVolume %s: %w", id, err)
		}
		logger.Info("requested expansion", "node", tv.Spec.Node, "sizeBytes", sizeBytes)
	}
	generation := tv.Generation
	ctx, cancel := r.waitContext(ctx)
	defer cancel()
	var nodeErr error
	err := r.wait(ctx, tv, func(found bool) (bool, error) {
		if !found {
			return false, fmt.Errorf("volume %s vanished during expansion: %w", id, backend.ErrNotFound)
		}
		if tv.Status.ObservedGeneration < generation {
			return false, nil
		}
		if tv.Status.SizeBytes >= sizeBytes {
			return true, nil
		}
		nodeErr = statusError(tv.Spec.Node, tv.Status.Code, tv.Status.Message)
		return nodeErr != nil, nil
	})
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			return nil, fmt.Errorf("volume %s: node %s has not finished the expansion to %d bytes: %w", id, tv.Spec.Node, sizeBytes, err)
		}
		return nil, err
	}
	if nodeErr != nil {
		return nil, nodeErr
	}
	logger.Info("volume expanded", "node", tv.Spec.Node, "sizeBytes", tv.Status.SizeBytes)
	return volumeOf(tv), nil
}
