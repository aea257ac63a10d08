package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
)

// GroupSnapshotReconciler makes the ThinGroupSnapshots of this node real:
// the pool takes every member in one call (one instant), and deletes them
// with their group. The members' ThinSnapshots (made by the controller
// once the group is Ready) only look their member up.
type GroupSnapshotReconciler struct {
	Client client.Client
	// APIReader: as VolumeReconciler.APIReader.
	APIReader client.Reader
	Pool      backend.Local
	Groups    backend.GroupSnapshotter
	Recorder  events.EventRecorder
	Changed   func()

	seen sightings
}

// SetupWithManager registers the reconciler for this node's ThinGroupSnapshots.
func (r *GroupSnapshotReconciler) SetupWithManager(mgr ctrl.Manager) error {
	// One worker: a group's members are taken together, and two groups
	// of one pool would only queue on the pool's lock.
	return ctrl.NewControllerManagedBy(mgr).
		Named("thingroupsnapshot").
		For(&thinv1.ThinGroupSnapshot{}, builder.WithPredicates(onNode(r.Pool.NodeName()))).
		Complete(r)
}

// Reconcile implements reconcile.Reconciler.
func (r *GroupSnapshotReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	g := &thinv1.ThinGroupSnapshot{}
	if err := r.Client.Get(ctx, req.NamespacedName, g); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	logger := klog.FromContext(ctx).WithValues("groupSnapshotID", g.Name, "volumeIDs", g.Spec.SourceVolumeIDs)
	ctx = klog.NewContext(ctx, logger)
	if g.Spec.Node != r.Pool.NodeName() {
		return ctrl.Result{}, nil
	}
	if !g.DeletionTimestamp.IsZero() {
		r.seen.forget(g.UID)
		return ctrl.Result{}, r.delete(ctx, g)
	}
	fresh, err := pickUp(ctx, r.Client, g, &r.seen, "create_group_snapshot")
	if err != nil {
		return ctrl.Result{}, err
	}
	if g.Status.Phase == thinv1.PhaseLost {
		return ctrl.Result{}, ignoreConflict(r.recover(ctx, g))
	}
	if g.Status.Phase == thinv1.PhaseReady || g.Status.Phase == thinv1.PhaseFailed {
		return ctrl.Result{}, nil
	}
	if r.APIReader != nil && !fresh {
		if err := r.APIReader.Get(ctx, req.NamespacedName, g); err != nil {
			return ctrl.Result{}, client.IgnoreNotFound(err)
		}
		if !g.DeletionTimestamp.IsZero() || g.Status.Phase == thinv1.PhaseReady || g.Status.Phase == thinv1.PhaseFailed {
			return ctrl.Result{}, nil // the cache was behind
		}
	}
	start := time.Now()
	group, err := r.Groups.CreateGroupSnapshot(ctx, backend.GroupSnapshotRequest{
		ID: g.Name, Name: g.Spec.Name, SourceVolumeIDs: g.Spec.SourceVolumeIDs, SkipFreeze: g.Spec.SkipFreeze,
	})
	g.Status.ObservedGeneration = g.Generation
	g.Status.OperationStatus = operation(err)
	setReady(&g.Status.Conditions, g.Generation, err, thinv1.ReasonCreated)
	if err != nil {
		g.Status.Phase = thinv1.PhaseFailed
		logger.Error(err, "create group snapshot failed", "code", g.Status.Code)
		r.Recorder.Eventf(g, nil, corev1.EventTypeWarning, "CreateFailed", "CreateGroupSnapshot", "%s: %s", g.Status.Code, err.Error())
	} else {
		g.Status.Phase = thinv1.PhaseReady
		g.Status.ReadyToUse = group.ReadyToUse
		g.Status.Members = g.Status.Members[:0]
		for _, s := range group.Snapshots {
			g.Status.Members = append(g.Status.Members, thinv1.GroupMember{SnapshotID: s.ID, SourceVolumeID: s.SourceVolumeID, SizeBytes: s.SizeBytes})
		}
		created := metav1.NewTime(group.CreatedAt)
		if group.CreatedAt.IsZero() {
			created = metav1.Now()
		}
		g.Status.CreationTime = &created
		g.Status.OneInstant = group.OneInstant
		logger.Info("group snapshot created", "members", len(group.Snapshots), "oneInstant", group.OneInstant, "duration", time.Since(start))
		if group.OneInstant {
			r.Recorder.Eventf(g, nil, corev1.EventTypeNormal, "Created", "CreateGroupSnapshot", "%d snapshots taken at one instant on %s", len(group.Snapshots), g.Spec.Node)
		} else {
			r.Recorder.Eventf(g, nil, corev1.EventTypeNormal, "Created", "CreateGroupSnapshot",
				"%d snapshots taken one after another on %s: each is crash-consistent, but a write between two of them may be in one and not the other (docs/consistency.md)", len(group.Snapshots), g.Spec.Node)
		}
		if r.Changed != nil {
			r.Changed()
		}
	}
	if err := r.Client.Status().Update(ctx, g); err != nil {
		return ctrl.Result{}, ignoreConflict(fmt.Errorf("write status: %w", err))
	}
	return ctrl.Result{}, nil
}

// recover: as VolumeReconciler.recover, for a group the controller marked
// Lost while this node was away.
func (r *GroupSnapshotReconciler) recover(ctx context.Context, g *thinv1.ThinGroupSnapshot) error {
	group, err := r.Groups.GetGroupSnapshot(ctx, g.Name)
	if err != nil && !errors.Is(err, backend.ErrNotFound) {
		return fmt.Errorf("look for lost group snapshot: %w", err)
	}
	if err == nil {
		g.Status.ReadyToUse = group.ReadyToUse
	}
	// A group never taken is taken now, as a snapshot never taken is: the
	// CreateVolumeGroupSnapshot that asked for it still stands, and no
	// member exists yet (the router makes them once the group is Ready).
	return recovered(ctx, r.Client, r.Recorder, r.tracked(g), err == nil, g.Resumable())
}

func (r *GroupSnapshotReconciler) tracked(g *thinv1.ThinGroupSnapshot) tracked {
	return tracked{obj: g, node: g.Spec.Node, what: "group snapshot", phase: &g.Status.Phase, op: &g.Status.OperationStatus, conditions: &g.Status.Conditions}
}

func (r *GroupSnapshotReconciler) delete(ctx context.Context, g *thinv1.ThinGroupSnapshot) error {
	return released(ctx, r.Client, r.Recorder, r.tracked(g), "DeleteGroupSnapshot", func() error { return r.Groups.DeleteGroupSnapshot(ctx, g.Name) }, r.Changed)
}
