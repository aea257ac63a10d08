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
	"sigs.k8s.io/controller-runtime/pkg/controller"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
)

// SnapshotReconciler makes the ThinSnapshots of this node real.
type SnapshotReconciler struct {
	Client client.Client
	// APIReader: as VolumeReconciler.APIReader.
	APIReader client.Reader
	Pool      backend.Local
	Recorder  events.EventRecorder
	Changed   func()

	seen sightings
}

// SetupWithManager registers the reconciler for this node's ThinSnapshots.
func (r *SnapshotReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("thinsnapshot").
		WithOptions(controller.Options{MaxConcurrentReconciles: reconcileWorkers}).
		For(&thinv1.ThinSnapshot{}, builder.WithPredicates(onNode(r.Pool.NodeName()))).
		Complete(r)
}

// Reconcile implements reconcile.Reconciler.
func (r *SnapshotReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	ts := &thinv1.ThinSnapshot{}
	if err := r.Client.Get(ctx, req.NamespacedName, ts); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	logger := klog.FromContext(ctx).WithValues("snapshotID", ts.Name, "volumeID", ts.Spec.SourceVolumeID)
	ctx = klog.NewContext(ctx, logger)
	if ts.Spec.Node != r.Pool.NodeName() {
		return ctrl.Result{}, nil
	}
	if !ts.DeletionTimestamp.IsZero() {
		r.seen.forget(ts.UID)
		return ctrl.Result{}, r.delete(ctx, ts)
	}
	fresh, err := pickUp(ctx, r.Client, ts, &r.seen, "create_snapshot")
	if err != nil {
		return ctrl.Result{}, err
	}
	if ts.Status.Phase == thinv1.PhaseLost {
		return ctrl.Result{}, ignoreConflict(r.recover(ctx, ts))
	}
	if ts.Status.Phase == thinv1.PhaseReady || ts.Status.Phase == thinv1.PhaseFailed {
		return ctrl.Result{}, nil
	}
	if r.APIReader != nil && !fresh {
		start := time.Now()
		if err := r.APIReader.Get(ctx, req.NamespacedName, ts); err != nil {
			return ctrl.Result{}, client.IgnoreNotFound(err)
		}
		observeStage("create_snapshot", stageRecheck, start)
		if !ts.DeletionTimestamp.IsZero() || ts.Status.Phase == thinv1.PhaseReady || ts.Status.Phase == thinv1.PhaseFailed {
			return ctrl.Result{}, nil // the cache was behind
		}
	}
	start := time.Now()
	s, err := r.take(ctx, ts)
	observeStage("create_snapshot", stageBackend, start)
	ts.Status.ObservedGeneration = ts.Generation
	ts.Status.OperationStatus = operation(err)
	setReady(&ts.Status.Conditions, ts.Generation, err, thinv1.ReasonCreated)
	if err != nil {
		ts.Status.Phase = thinv1.PhaseFailed
		logger.Error(err, "create snapshot failed", "code", ts.Status.Code)
		r.Recorder.Eventf(ts, nil, corev1.EventTypeWarning, "CreateFailed", "CreateSnapshot", "%s: %s", ts.Status.Code, err.Error())
	} else {
		ts.Status.Phase = thinv1.PhaseReady
		ts.Status.SizeBytes = s.SizeBytes
		ts.Status.ReadyToUse = s.ReadyToUse
		created := metav1.NewTime(s.CreatedAt)
		if s.CreatedAt.IsZero() {
			created = metav1.Now()
		}
		ts.Status.CreationTime = &created
		logger.Info("snapshot created", "sizeBytes", s.SizeBytes, "duration", time.Since(start))
		r.Recorder.Eventf(ts, nil, corev1.EventTypeNormal, "Created", "CreateSnapshot", "snapshot of %s taken on %s", ts.Spec.SourceVolumeID, ts.Spec.Node)
		if r.Changed != nil {
			r.Changed()
		}
	}
	written := time.Now()
	if err := r.Client.Status().Update(ctx, ts); err != nil {
		return ctrl.Result{}, ignoreConflict(fmt.Errorf("write status: %w", err))
	}
	observeStage("create_snapshot", stageStatus, written)
	return ctrl.Result{}, nil
}

// take takes the snapshot, or for a member of a group snapshot finds the
// member its group took: a member taken alone would not be of the
// group's instant.
func (r *SnapshotReconciler) take(ctx context.Context, ts *thinv1.ThinSnapshot) (*backend.Snapshot, error) {
	if ts.Spec.GroupID == "" {
		return r.Pool.CreateSnapshot(ctx, backend.SnapshotRequest{ID: ts.Name, Name: ts.Spec.Name, SourceVolumeID: ts.Spec.SourceVolumeID, SkipFreeze: ts.Spec.SkipFreeze})
	}
	s, err := r.Pool.GetSnapshot(ctx, ts.Name)
	if errors.Is(err, backend.ErrNotFound) {
		return nil, fmt.Errorf("member %s of group snapshot %s is not on node %s (the group was deleted or never taken): %w", ts.Name, ts.Spec.GroupID, ts.Spec.Node, backend.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	if s.SourceVolumeID != ts.Spec.SourceVolumeID {
		return nil, fmt.Errorf("member %s of group snapshot %s copies volume %s, not %s: %w", ts.Name, ts.Spec.GroupID, s.SourceVolumeID, ts.Spec.SourceVolumeID, backend.ErrExists)
	}
	return s, nil
}

// recover: as VolumeReconciler.recover.
func (r *SnapshotReconciler) recover(ctx context.Context, ts *thinv1.ThinSnapshot) error {
	s, err := r.Pool.GetSnapshot(ctx, ts.Name)
	if err != nil && !errors.Is(err, backend.ErrNotFound) {
		return fmt.Errorf("look for lost snapshot: %w", err)
	}
	if err == nil {
		ts.Status.ReadyToUse = s.ReadyToUse
	}
	return recovered(ctx, r.Client, r.Recorder, r.tracked(ts), err == nil, ts.Resumable())
}

func (r *SnapshotReconciler) tracked(ts *thinv1.ThinSnapshot) tracked {
	return tracked{obj: ts, node: ts.Spec.Node, what: "snapshot", phase: &ts.Status.Phase, op: &ts.Status.OperationStatus, conditions: &ts.Status.Conditions}
}

func (r *SnapshotReconciler) delete(ctx context.Context, ts *thinv1.ThinSnapshot) error {
	return released(ctx, r.Client, r.Recorder, r.tracked(ts), "DeleteSnapshot", func() error { return r.Pool.DeleteSnapshot(ctx, ts.Name) }, r.Changed)
}
