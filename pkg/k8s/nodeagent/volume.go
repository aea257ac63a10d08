package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/k8s/snapshotexport"
)

// expandRetry is how soon a failed expansion is tried again: the resizer
// keeps asking, and the node must answer with a fresh outcome.
const expandRetry = 30 * time.Second

// VolumeReconciler makes the ThinVolumes of this node real on its pool.
type VolumeReconciler struct {
	Client client.Client
	// APIReader reads past the cache before a create: right after the
	// agent wrote a status, the cache may still show the resource Pending,
	// and the backend must not be asked twice. Nil: trust the cache.
	APIReader client.Reader
	Pool      backend.Local
	Recorder  events.EventRecorder
	// Changed is called after the pool changed (the ThinNode status
	// should be refreshed); may be nil.
	Changed func()
	// Unmount removes a mount: the staging mount of a deleted volume that
	// the kubelet left behind (leftover.go). Nil: never unmount.
	Unmount func(path string) error
	// LeftoverStagingGrace is how long after a deletion began the agent
	// leaves such a mount to the kubelet (0: DefaultLeftoverStagingGrace).
	LeftoverStagingGrace time.Duration
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// RestoreExport makes a volume whose source is an export
	// (snapshotexport.Restorer.Restore), counting what it reads into
	// progress; nil: the pool cannot.
	RestoreExport func(ctx context.Context, req backend.VolumeRequest, src *thinv1.VolumeSource, progress *snapshotexport.Progress) (*backend.Volume, error)
	// ProgressInterval is how often a restore's bytes reach
	// status.transfer (0: DefaultProgressInterval), EventInterval how
	// often they are an Event (0: DefaultEventInterval).
	ProgressInterval, EventInterval time.Duration
	// DiscardRestore deletes what an interrupted restore of a volume left
	// (snapshotexport.Restorer.Discard), when its ThinVolume is deleted.
	DiscardRestore func(ctx context.Context, volumeID string, src *thinv1.VolumeSource) error
	// Copies receives the cross-node copies (spec.source.node); nil: this
	// agent cannot (transfers off, or a pool that cannot stream).
	Copies *Puller

	seen sightings
}

// SetupWithManager registers the reconciler for this node's ThinVolumes.
func (r *VolumeReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("thinvolume").
		WithOptions(controller.Options{MaxConcurrentReconciles: reconcileWorkers}).
		For(&thinv1.ThinVolume{}, builder.WithPredicates(onNode(r.Pool.NodeName()))).
		Complete(r)
}

// onNode keeps only the resources whose spec.node is this node (the cache
// already selects by label; this guards against a mislabeled resource).
func onNode(node string) predicate.Predicate {
	return predicate.NewPredicateFuncs(func(obj client.Object) bool {
		switch o := obj.(type) {
		case *thinv1.ThinVolume:
			return o.Spec.Node == node
		case *thinv1.ThinSnapshot:
			return o.Spec.Node == node
		case *thinv1.ThinGroupSnapshot:
			return o.Spec.Node == node
		}
		return false
	})
}

// Reconcile implements reconcile.Reconciler.
func (r *VolumeReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	logger := klog.FromContext(ctx).WithValues("volumeID", req.Name)
	ctx = klog.NewContext(ctx, logger)
	tv := &thinv1.ThinVolume{}
	if err := r.Client.Get(ctx, req.NamespacedName, tv); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if tv.Spec.Node != r.Pool.NodeName() {
		return ctrl.Result{}, nil
	}
	if !tv.DeletionTimestamp.IsZero() {
		r.seen.forget(tv.UID)
		return deletedResult(r.delete(ctx, tv))
	}
	// Before any storage exists: the resource can never vanish without the
	// node hearing of it.
	fresh, err := pickUp(ctx, r.Client, tv, &r.seen, "create_volume")
	if err != nil {
		return ctrl.Result{}, err
	}
	switch {
	case tv.Status.Phase == thinv1.PhaseFailed:
		return ctrl.Result{}, nil // the controller deletes it
	case tv.Status.Phase == thinv1.PhaseLost:
		return ctrl.Result{}, ignoreConflict(r.recover(ctx, tv))
	case tv.Status.Phase != thinv1.PhaseReady:
		if !fresh {
			if pending, err := r.stillPending(ctx, tv); err != nil || !pending {
				return ctrl.Result{}, err
			}
		}
		if isCopy(tv) && r.Copies != nil {
			return r.Copies.Reconcile(ctx, tv)
		}
		return ctrl.Result{}, ignoreConflict(r.create(ctx, tv))
	case tv.Spec.RequiredBytes > tv.Status.SizeBytes:
		res, err := r.expand(ctx, tv)
		return res, ignoreConflict(err)
	case tv.Status.ObservedGeneration != tv.Generation:
		tv.Status.ObservedGeneration = tv.Generation
		return ctrl.Result{}, r.Client.Status().Update(ctx, tv)
	}
	return ctrl.Result{}, nil
}

// stillPending re-reads tv from the API server and reports whether it is
// still waiting for the node (tv is refreshed in place).
func (r *VolumeReconciler) stillPending(ctx context.Context, tv *thinv1.ThinVolume) (bool, error) {
	if r.APIReader == nil {
		return true, nil
	}
	start := time.Now()
	if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(tv), tv); err != nil {
		return false, client.IgnoreNotFound(err)
	}
	observeStage("create_volume", stageRecheck, start)
	return tv.DeletionTimestamp.IsZero() && tv.Status.Phase != thinv1.PhaseReady && tv.Status.Phase != thinv1.PhaseFailed, nil
}

// ignoreConflict drops a write conflict: the resource changed under us,
// and the change brings another reconcile with the new version.
func ignoreConflict(err error) error {
	if apierrors.IsConflict(err) {
		klog.V(4).InfoS("conflict writing status; the next reconcile sees the new version")
		return nil
	}
	return err
}

func requestOf(tv *thinv1.ThinVolume) backend.VolumeRequest {
	req := backend.VolumeRequest{
		ID:            tv.Name,
		Name:          tv.Spec.Name,
		RequiredBytes: tv.Spec.RequiredBytes,
		LimitBytes:    tv.Spec.LimitBytes,
		AccessType:    backend.AccessType(tv.Spec.AccessType),
		FsType:        tv.Spec.FsType,
		Parameters:    tv.Spec.Parameters,
		Node:          tv.Spec.Node,
	}
	if s := tv.Spec.Source; s != nil {
		req.Source = backend.Source{Kind: backend.SourceKind(s.Kind), ID: s.ID}
	}
	return req
}

// restoreExport rebuilds the volume from an object store (RestoreExport)
// and reports its progress as a copy's: in status.transfer the bytes read
// of the chain's streams and their total, phase Receiving, then Received
// with its completion time (or the failure's message), which create
// writes with the verdict; and as Events (RestoreStarted, Restoring,
// Restored).
func (r *VolumeReconciler) restoreExport(ctx context.Context, tv *thinv1.ThinVolume) (*backend.Volume, error) {
	if r.RestoreExport == nil {
		return nil, fmt.Errorf("volume %s: the pool of node %s cannot receive volume streams, so it cannot restore export %s: %w", tv.Name, tv.Spec.Node, tv.Spec.Source.ID, backend.ErrUnsupported)
	}
	req := requestOf(tv)
	req.Source = backend.Source{}
	exportID := tv.Spec.Source.ID
	start := time.Now()
	r.Recorder.Eventf(tv, nil, corev1.EventTypeNormal, "RestoreStarted", "CreateVolume", "restoring export %s", exportID)
	progress := &snapshotexport.Progress{}
	stop, wrote := make(chan struct{}), make(chan bool, 1)
	eventInterval := r.EventInterval
	if eventInterval <= 0 {
		eventInterval = DefaultEventInterval
	}
	go func() {
		wrote <- progressReporter{
			interval:      r.ProgressInterval,
			eventInterval: eventInterval,
			bytes:         progress.Bytes,
			write: func(ctx context.Context, done, total int64) error {
				return patchTransfer(ctx, r.Client, tv.Name, map[string]any{"phase": thinv1.TransferReceiving, "bytesDone": done, "bytesTotal": total})
			},
			event: func(done, total int64) {
				r.Recorder.Eventf(tv, nil, corev1.EventTypeNormal, "Restoring", "CreateVolume", "read %d of %d bytes of export %s", done, total, exportID)
			},
		}.run(ctx, stop)
	}()
	v, err := r.RestoreExport(ctx, req, tv.Spec.Source, progress)
	close(stop)
	done, total := progress.Bytes()
	if <-wrote {
		// The progress moved the object on; create's update must not
		// conflict with it.
		var reader client.Reader = r.Client
		if r.APIReader != nil {
			reader = r.APIReader
		}
		if gerr := reader.Get(ctx, client.ObjectKeyFromObject(tv), tv); gerr != nil {
			// No verdict without the current object: the retry finds the
			// restored volume (Restore is idempotent) or restores again.
			return nil, errRetry{fmt.Errorf("re-read after the restore's progress: %w", gerr)}
		}
	}
	if done == 0 && total == 0 && tv.Status.Transfer != nil {
		// A retry that found the volume made: the bytes are the earlier
		// attempt's, which its progress wrote.
		done, total = tv.Status.Transfer.BytesDone, tv.Status.Transfer.BytesTotal
	}
	st := &thinv1.TransferStatus{Phase: thinv1.TransferReceiving, BytesDone: done, BytesTotal: total}
	if err == nil {
		r.Recorder.Eventf(tv, nil, corev1.EventTypeNormal, "Restored", "CreateVolume", "restored export %s: %d of %d bytes read in %s, verified",
			exportID, done, total, time.Since(start).Round(time.Millisecond))
		now := metav1.Now()
		st.Phase, st.CompletionTime = thinv1.TransferReceived, &now
	} else {
		st.Message = err.Error()
	}
	tv.Status.Transfer = st
	return v, err
}

// errRetry is a create that reached no verdict: the reconcile returns
// its error and is retried, and no status is written.
type errRetry struct{ err error }

func (e errRetry) Error() string { return e.err.Error() }
func (e errRetry) Unwrap() error { return e.err }

func (r *VolumeReconciler) create(ctx context.Context, tv *thinv1.ThinVolume) error {
	logger := klog.FromContext(ctx)
	start := time.Now()
	var v *backend.Volume
	var err error
	if src := tv.Spec.Source; isCopy(tv) {
		err = fmt.Errorf("volume %s: its source is on node %s, and the agent of node %s cannot receive cross-node copies (transfers off, or a pool that cannot stream): %w",
			tv.Name, src.Node, tv.Spec.Node, backend.ErrUnsupported)
	} else if src != nil && src.Kind == thinv1.VolumeSourceExport {
		v, err = r.restoreExport(ctx, tv)
		if retry := (errRetry{}); errors.As(err, &retry) {
			return retry.err
		}
	} else {
		v, err = r.Pool.CreateVolume(ctx, requestOf(tv))
	}
	observeStage("create_volume", stageBackend, start)
	tv.Status.ObservedGeneration = tv.Generation
	tv.Status.OperationStatus = operation(err)
	setReady(&tv.Status.Conditions, tv.Generation, err, thinv1.ReasonCreated)
	if err != nil {
		// Every failure is final for this resource: the controller returns
		// the code and deletes the resource, and the CO's retry makes a new
		// one. The backend's create is idempotent, so nothing half-made
		// survives the deletion (which calls DeleteVolume).
		tv.Status.Phase = thinv1.PhaseFailed
		logger.Error(err, "create volume failed", "code", tv.Status.Code)
		r.Recorder.Eventf(tv, nil, corev1.EventTypeWarning, "CreateFailed", "CreateVolume", "%s: %s", tv.Status.Code, err.Error())
	} else {
		tv.Status.Phase = thinv1.PhaseReady
		tv.Status.SizeBytes = v.SizeBytes
		setHealthy(&tv.Status.Conditions, tv.Generation, v.Condition)
		logger.Info("volume created", "sizeBytes", v.SizeBytes, "source", v.Source.ID, "duration", time.Since(start))
		r.Recorder.Eventf(tv, nil, corev1.EventTypeNormal, "Created", "CreateVolume", "created %d bytes on %s", v.SizeBytes, tv.Spec.Node)
		r.changed()
	}
	written := time.Now()
	if uerr := r.Client.Status().Update(ctx, tv); uerr != nil {
		return fmt.Errorf("write status: %w", uerr)
	}
	observeStage("create_volume", stageStatus, written)
	return nil
}

// recover answers the controller's verdict that this node was lost: the
// agent is back, so it looks for the storage. Found, the volume is Ready
// again; missing (a replaced disk), it stays Lost with the reason, and
// nothing is recreated: an empty volume in place of the data would be a
// silent loss. A volume never made (the node was lost before it made it,
// or mid-copy) is made now (ThinVolume.Resumable).
func (r *VolumeReconciler) recover(ctx context.Context, tv *thinv1.ThinVolume) error {
	v, err := r.Pool.GetVolume(ctx, tv.Name)
	if err != nil && !errors.Is(err, backend.ErrNotFound) {
		return fmt.Errorf("look for lost volume: %w", err)
	}
	if err == nil {
		tv.Status.SizeBytes = v.SizeBytes
		setHealthy(&tv.Status.Conditions, tv.Generation, v.Condition)
	}
	return recovered(ctx, r.Client, r.Recorder, r.tracked(tv), err == nil, tv.Resumable())
}

func (r *VolumeReconciler) tracked(tv *thinv1.ThinVolume) tracked {
	return tracked{obj: tv, node: tv.Spec.Node, what: "volume", phase: &tv.Status.Phase, op: &tv.Status.OperationStatus, conditions: &tv.Status.Conditions}
}

func setHealthy(conds *[]metav1.Condition, generation int64, c backend.Condition) {
	cond := metav1.Condition{Type: thinv1.ConditionHealthy, Status: metav1.ConditionTrue, Reason: "Healthy", Message: c.Message, ObservedGeneration: generation}
	if c.Abnormal {
		cond.Status, cond.Reason = metav1.ConditionFalse, "Abnormal"
		if c.Reason != "" {
			cond.Reason = c.Reason
		}
	}
	apimeta.SetStatusCondition(conds, cond)
}

func (r *VolumeReconciler) expand(ctx context.Context, tv *thinv1.ThinVolume) (ctrl.Result, error) {
	logger := klog.FromContext(ctx)
	v, err := r.Pool.ExpandVolume(ctx, tv.Name, tv.Spec.RequiredBytes)
	tv.Status.ObservedGeneration = tv.Generation
	tv.Status.OperationStatus = operation(err)
	result := ctrl.Result{}
	if err != nil {
		// The volume is still there and usable: the phase stays Ready.
		logger.Error(err, "expand volume failed", "code", tv.Status.Code, "requiredBytes", tv.Spec.RequiredBytes)
		r.Recorder.Eventf(tv, nil, corev1.EventTypeWarning, "ExpandFailed", "ExpandVolume", "%s: %s", tv.Status.Code, err.Error())
		result.RequeueAfter = expandRetry
	} else {
		logger.Info("volume expanded", "from", tv.Status.SizeBytes, "sizeBytes", v.SizeBytes)
		r.Recorder.Eventf(tv, nil, corev1.EventTypeNormal, "Expanded", "ExpandVolume", "expanded from %d to %d bytes", tv.Status.SizeBytes, v.SizeBytes)
		tv.Status.SizeBytes = v.SizeBytes
		r.changed()
	}
	if uerr := r.Client.Status().Update(ctx, tv); uerr != nil {
		return ctrl.Result{}, fmt.Errorf("write status: %w", uerr)
	}
	return result, nil
}

func (r *VolumeReconciler) delete(ctx context.Context, tv *thinv1.ThinVolume) error {
	if r.Copies != nil {
		r.Copies.Cancel(tv.Name)
	}
	return released(ctx, r.Client, r.Recorder, r.tracked(tv), "DeleteVolume", func() error {
		if err := r.deleteVolume(ctx, tv); err != nil {
			return err
		}
		if r.DiscardRestore != nil && tv.Spec.Source != nil && tv.Spec.Source.Kind == thinv1.VolumeSourceExport {
			return r.DiscardRestore(ctx, tv.Name, tv.Spec.Source)
		}
		return nil
	}, r.Changed)
}

func (r *VolumeReconciler) changed() {
	if r.Changed != nil {
		r.Changed()
	}
}

// isCopy: tv is a cross-node copy (its source lives on another node).
func isCopy(tv *thinv1.ThinVolume) bool {
	return tv.Spec.Source != nil && tv.Spec.Source.Node != "" && tv.Spec.Source.Node != tv.Spec.Node
}
