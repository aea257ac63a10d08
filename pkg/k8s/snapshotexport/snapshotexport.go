// Package snapshotexport is the node agent's exporter: it copies each of
// its node's ThinSnapshots that names an export target (spec.export, a
// Secret with pkg/export's keys) into that object store once the snapshot
// is ready, and deletes the copy with the snapshot.
//
// The copy is the backend's volume stream (backend.Streamer.SendSnapshot)
// piped into export.Store.Put: nothing is staged on disk and memory is one
// upload part. It is incremental against the newest export of the same
// volume still in the bucket whose snapshot this pool still holds (btrfs
// send -p needs the parent on the sending side), else full. The export
// runs beside the snapshot's own reconciler, so the snapshot is ready (and
// restorable on its node) before its export is done.
//
// Every step is idempotent, so a failed attempt is retried with the
// controller's exponential backoff and a restarted agent resumes: an
// export already in the store (a crash after the upload, before the
// status) is found and recorded; an upload cut off half-way left no
// export (pkg/export writes the manifest last).
package snapshotexport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/export"
	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

// Condition reasons of ConditionExported.
const (
	ReasonExported     = "Exported"
	ReasonExportFailed = "ExportFailed"
)

// workers is how many exports run at once on a node: each is a send and
// an upload, bound by the disk and the network, not by the API server.
const workers = 2

// defaultProgressInterval is how often an upload's bytes are written to
// the status.
const defaultProgressInterval = 5 * time.Second

// Reconciler exports this node's ThinSnapshots that ask for it.
type Reconciler struct {
	Client client.Client
	// Secrets reads the export Secrets, uncached: a cache would list and
	// watch every Secret of the cluster; a get needs only the one named.
	Secrets  client.Reader
	Pool     backend.Local
	Streams  backend.Streamer
	Recorder events.EventRecorder
	// ProgressInterval: how often bytes done reach the status (default 5s).
	ProgressInterval time.Duration

	// volumes serialises exports and deletions of one volume's exports
	// (pkg/export has no locks: a Put racing a Delete of its parent could
	// leave an export without its parent).
	volumes sync.Map // volume ID -> *sync.Mutex
}

// SetupWithManager registers the exporter for this node's ThinSnapshots
// with spec.export.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	node := r.Pool.NodeName()
	wanted := predicate.NewPredicateFuncs(func(o client.Object) bool {
		ts, ok := o.(*thinv1.ThinSnapshot)
		return ok && ts.Spec.Node == node && ts.Spec.Export != nil
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("thinsnapshot-export").
		WithOptions(controller.Options{MaxConcurrentReconciles: workers}).
		For(&thinv1.ThinSnapshot{}, builder.WithPredicates(wanted)).
		Complete(r)
}

// Reconcile implements reconcile.Reconciler.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	ts := &thinv1.ThinSnapshot{}
	if err := r.Client.Get(ctx, req.NamespacedName, ts); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if ts.Spec.Node != r.Pool.NodeName() || ts.Spec.Export == nil {
		return ctrl.Result{}, nil
	}
	logger := klog.FromContext(ctx).WithValues("snapshotID", ts.Name, "volumeID", ts.Spec.SourceVolumeID)
	ctx = klog.NewContext(ctx, logger)
	if !ts.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.deleteExport(ctx, ts)
	}
	// A retained export outlives the snapshot: nothing to do at deletion.
	if !ts.Spec.Export.Retain && controllerutil.AddFinalizer(ts, wellknown.FinalizerExport) {
		if err := r.Client.Update(ctx, ts); err != nil {
			return ctrl.Result{}, client.IgnoreNotFound(fmt.Errorf("add export finalizer: %w", err))
		}
	}
	if ts.Status.Phase != thinv1.PhaseReady || !ts.Status.ReadyToUse {
		return ctrl.Result{}, nil // the snapshot's status update brings it back
	}
	if ts.Status.Export != nil && ts.Status.Export.Phase == thinv1.ExportExported {
		return ctrl.Result{}, nil
	}
	return ctrl.Result{}, r.export(ctx, ts)
}

// event records an Event on ts and, where it can be found, on the
// VolumeSnapshot it was cut for (the one users look at).
func (r *Reconciler) event(ctx context.Context, ts *thinv1.ThinSnapshot, eventType, reason, action, note string) {
	r.Recorder.Eventf(ts, nil, eventType, reason, action, "%s", note)
	if ref := r.volumeSnapshotOf(ctx, ts); ref != nil {
		r.Recorder.Eventf(ref, ts, eventType, reason, action, "%s", note)
	}
}

// volumeSnapshotOf is the VolumeSnapshot ts was cut for, as the router
// recorded it (nil for a snapshot made without one).
func (r *Reconciler) volumeSnapshotOf(_ context.Context, ts *thinv1.ThinSnapshot) *corev1.ObjectReference {
	ns, name := ts.Annotations[wellknown.AnnotationVolumeSnapshotNamespace], ts.Annotations[wellknown.AnnotationVolumeSnapshotName]
	if ns == "" || name == "" {
		return nil
	}
	return &corev1.ObjectReference{APIVersion: "snapshot.storage.k8s.io/v1", Kind: "VolumeSnapshot", Namespace: ns, Name: name}
}

// ExportID is the export ID of a ThinSnapshot.
func ExportID(ts *thinv1.ThinSnapshot) string { return ts.Spec.SourceVolumeID + "/" + ts.Name }

// store opens the object store that ts's Secret describes.
func (r *Reconciler) store(ctx context.Context, ts *thinv1.ThinSnapshot) (*export.Store, error) {
	return openStore(ctx, r.Secrets, ts.Spec.Export)
}

// openStore opens the object store that the Secret ref describes.
func openStore(ctx context.Context, secrets client.Reader, ref *thinv1.SnapshotExport) (*export.Store, error) {
	sec := &corev1.Secret{}
	if err := secrets.Get(ctx, client.ObjectKey{Namespace: ref.SecretNamespace, Name: ref.SecretName}, sec); err != nil {
		return nil, fmt.Errorf("export secret %s/%s: %w", ref.SecretNamespace, ref.SecretName, err)
	}
	cfg, err := export.ConfigFromSecret(sec.Data)
	if err != nil {
		return nil, fmt.Errorf("export secret %s/%s: %w", ref.SecretNamespace, ref.SecretName, err)
	}
	return export.New(cfg)
}

func (r *Reconciler) lock(volumeID string) func() {
	m, _ := r.volumes.LoadOrStore(volumeID, &sync.Mutex{})
	mu := m.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock
}

// export makes ts's export exist and records it; an error is retried.
func (r *Reconciler) export(ctx context.Context, ts *thinv1.ThinSnapshot) error {
	logger := klog.FromContext(ctx)
	id := ExportID(ts)
	status := ts.Status.Export
	if status == nil {
		status = &thinv1.ExportStatus{}
	}
	status = status.DeepCopy()
	status.ID = id
	status.Attempts++
	m, stats, err := r.upload(ctx, ts, status)
	if err != nil {
		status.Phase = thinv1.ExportFailed
		status.Message = err.Error()
		logger.Error(err, "export failed; will retry", "attempt", status.Attempts)
		r.event(ctx, ts, corev1.EventTypeWarning, ReasonExportFailed, "Export", fmt.Sprintf("export %s (attempt %d): %s", id, status.Attempts, err.Error()))
		if uerr := r.writeStatus(ctx, ts, status, metav1.ConditionFalse, ReasonExportFailed, err.Error()); uerr != nil {
			logger.Error(uerr, "write export status")
		}
		return err
	}
	now := metav1.Now()
	status.Phase = thinv1.ExportExported
	status.Parent = m.Parent
	status.BytesDone = m.Length
	status.BytesTotal = m.Length
	status.Message = ""
	status.CompletionTime = &now
	kind := "full"
	if m.Parent != "" {
		kind = "incremental against " + m.Parent
	}
	logger.Info("snapshot exported", "exportID", id, "parent", m.Parent, "bytes", m.Length, "allocatedBytes", stats.AllocatedBytes)
	r.event(ctx, ts, corev1.EventTypeNormal, ReasonExported, "Export", fmt.Sprintf("exported as %s (%s, %d bytes)", id, kind, m.Length))
	return r.writeStatus(ctx, ts, status, metav1.ConditionTrue, ReasonExported, fmt.Sprintf("exported as %s (%s)", id, kind))
}

// upload puts ts's stream into the store unless it is there already.
func (r *Reconciler) upload(ctx context.Context, ts *thinv1.ThinSnapshot, status *thinv1.ExportStatus) (export.Manifest, backend.SendStats, error) {
	var stats backend.SendStats
	store, err := r.store(ctx, ts)
	if err != nil {
		return export.Manifest{}, stats, err
	}
	defer r.lock(ts.Spec.SourceVolumeID)()
	id := ExportID(ts)
	// An export that exists already (an earlier attempt uploaded it and
	// died before its status) is taken as it is, whatever its parent.
	if m, err := store.Manifest(ctx, id); err == nil {
		return m, stats, nil
	} else if !errors.Is(err, export.ErrNotFound) {
		return export.Manifest{}, stats, err
	}
	parent, err := r.parent(ctx, store, ts)
	if err != nil {
		return export.Manifest{}, stats, err
	}
	status.Phase = thinv1.ExportExporting
	status.Parent = parent
	status.BytesDone, status.BytesTotal = 0, 0
	status.Message = ""
	if err := r.writeStatus(ctx, ts, status, "", "", ""); err != nil {
		return export.Manifest{}, stats, err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	sent := make(chan error, 1)
	parentSnapshot := ""
	if parent != "" {
		_, parentSnapshot, _ = export.ParseID(parent)
	}
	go func() {
		var err error
		stats, err = r.Streams.SendSnapshot(ctx, ts.Name, parentSnapshot, pw)
		pw.CloseWithError(err) // nil: EOF
		sent <- err
	}()
	counted := &progressReader{r: pr}
	stopProgress := r.reportProgress(ctx, ts, status, counted)
	m, err := store.Put(ctx, ts.Spec.SourceVolumeID, ts.Name, parent, counted)
	stopProgress()
	if err != nil {
		cancel()
	}
	pr.CloseWithError(errors.New("upload ended")) // unblocks a send Put did not read to its end
	if serr := <-sent; serr != nil && err == nil {
		// Put read to EOF, so the send ended well; a send error after
		// that is not possible, but never record an export on one.
		err = serr
	} else if serr != nil {
		err = fmt.Errorf("%w (send: %w)", err, serr)
	}
	if err != nil {
		return export.Manifest{}, stats, err
	}
	return m, stats, nil
}

// parent picks what ts's export is incremental against: the newest export
// of the volume in the store whose snapshot this pool still holds.
func (r *Reconciler) parent(ctx context.Context, store *export.Store, ts *thinv1.ThinSnapshot) (string, error) {
	all, err := store.List(ctx, ts.Spec.SourceVolumeID)
	if err != nil {
		return "", err
	}
	for i := len(all) - 1; i >= 0; i-- {
		m := all[i]
		if m.Snapshot == ts.Name {
			continue
		}
		switch _, err := r.Pool.GetSnapshot(ctx, m.Snapshot); {
		case err == nil:
			return m.ID(), nil
		case !errors.Is(err, backend.ErrNotFound):
			return "", fmt.Errorf("look up the snapshot of export %s: %w", m.ID(), err)
		}
	}
	return "", nil
}

// reportProgress writes the bytes uploaded so far to the status every
// ProgressInterval until the returned stop is called.
func (r *Reconciler) reportProgress(ctx context.Context, ts *thinv1.ThinSnapshot, status *thinv1.ExportStatus, counted *progressReader) (stop func()) {
	interval := r.ProgressInterval
	if interval <= 0 {
		interval = defaultProgressInterval
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				s := status.DeepCopy()
				s.BytesDone = counted.n.Load()
				if err := r.writeStatus(ctx, ts, s, "", "", ""); err != nil {
					klog.FromContext(ctx).V(2).Info("write export progress", "err", err)
				}
			}
		}
	}()
	return func() { close(done); <-finished }
}

// writeStatus patches status.export (and, with a condition status, the
// Exported condition) of ts. A merge patch without a resource version: the
// exporter owns these fields, the snapshot reconciler the others.
func (r *Reconciler) writeStatus(ctx context.Context, ts *thinv1.ThinSnapshot, status *thinv1.ExportStatus, cond metav1.ConditionStatus, reason, message string) error {
	base := ts.DeepCopy()
	ts.Status.Export = status.DeepCopy()
	if cond != "" {
		meta.SetStatusCondition(&ts.Status.Conditions, metav1.Condition{
			Type: thinv1.ConditionExported, Status: cond, Reason: reason, Message: message, ObservedGeneration: ts.Generation,
		})
	}
	if err := r.Client.Status().Patch(ctx, ts, client.MergeFrom(base)); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("write export status: %w", err)
	}
	return nil
}

// deleteExport deletes ts's export and releases the snapshot. An export
// that a later export names as its parent stays (the later one needs it
// to restore); it then has no snapshot and is left in the bucket.
func (r *Reconciler) deleteExport(ctx context.Context, ts *thinv1.ThinSnapshot) error {
	if !controllerutil.ContainsFinalizer(ts, wellknown.FinalizerExport) {
		return nil
	}
	logger := klog.FromContext(ctx)
	id := ExportID(ts)
	store, err := r.store(ctx, ts)
	switch {
	case apierrors.IsNotFound(err):
		logger.Error(err, "the export's secret is gone: its export is left in the store", "exportID", id)
		r.Recorder.Eventf(ts, nil, corev1.EventTypeWarning, "ExportNotDeleted", "DeleteExport", "export %s left in the store: %s", id, err.Error())
	case err != nil:
		r.Recorder.Eventf(ts, nil, corev1.EventTypeWarning, "DeleteExportFailed", "DeleteExport", "%s", err.Error())
		return err
	default:
		unlock := r.lock(ts.Spec.SourceVolumeID)
		err := store.Delete(ctx, id)
		unlock()
		switch {
		case errors.Is(err, export.ErrInUse):
			logger.Info("export kept: a later export is incremental against it", "exportID", id, "reason", err.Error())
			r.Recorder.Eventf(ts, nil, corev1.EventTypeNormal, "ExportKept", "DeleteExport", "export %s kept in the store: %s", id, err.Error())
		case err != nil:
			logger.Error(err, "delete export failed; will retry", "exportID", id)
			r.Recorder.Eventf(ts, nil, corev1.EventTypeWarning, "DeleteExportFailed", "DeleteExport", "%s", err.Error())
			return err
		default:
			r.Recorder.Eventf(ts, nil, corev1.EventTypeNormal, "ExportDeleted", "DeleteExport", "export %s deleted", id)
		}
	}
	controllerutil.RemoveFinalizer(ts, wellknown.FinalizerExport)
	if err := r.Client.Update(ctx, ts); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("remove export finalizer: %w", err)
	}
	return nil
}

// progressReader counts what was read through it.
type progressReader struct {
	r io.Reader
	n atomic.Int64
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.n.Add(int64(n))
	return n, err
}

// GoneNodeExports deletes the exports of ThinSnapshots deleted on a node
// that is gone from the cluster: its agent, which deletes them otherwise,
// never will, and the store is reachable from anywhere. The controller's
// lost-node detector (lifecycle.Detector.Exports) calls it; it needs get
// on the export Secrets, as the node agents do.
type GoneNodeExports struct {
	Client   client.Client
	Secrets  client.Reader
	Recorder events.EventRecorder
}

// DeleteExport deletes ts's export as its agent would (an export a later
// one is incremental against stays), then removes its export finalizer.
func (g *GoneNodeExports) DeleteExport(ctx context.Context, ts *thinv1.ThinSnapshot) error {
	ctx = klog.NewContext(ctx, klog.FromContext(ctx).WithValues("snapshotID", ts.Name, "volumeID", ts.Spec.SourceVolumeID, "node", ts.Spec.Node))
	r := &Reconciler{Client: g.Client, Secrets: g.Secrets, Recorder: g.Recorder}
	return r.deleteExport(ctx, ts)
}
