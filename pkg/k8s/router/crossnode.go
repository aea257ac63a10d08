package router

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/rpcerr"
	"github.com/csi-thin/csi-thin/pkg/transfer"
	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

// Cross-node copies. When the scheduler puts a clone or a restore on
// another node than its source's, the router makes the ThinVolume on the
// chosen node with spec.source.node naming the source's node and
// spec.source.snapshotID the snapshot to stream (for a clone, a snapshot
// the controller takes of the source volume for this copy). The target
// node's agent pulls that snapshot's stream from the source node's agent
// (pkg/transfer) and reports the volume Ready once the stream verified;
// CreateVolume waits for that verdict like for any other volume. Copies
// (below) owns the rest of a copy's life on the controller's side: it
// takes the clone's snapshot, grants the one-time tokens (a new one for
// every attempt the agent makes), removes the snapshot once the copy is
// over, and cancels a copy whose claim is gone.

// Timing of the tokens a copy is granted.
const (
	// TokenTTL is a granted token's life: the attempt that spends it
	// must start within it (the source checks the expiry once, at the
	// start of the stream).
	TokenTTL = 10 * time.Minute
	// tokenRenewBefore: a token this close to its expiry is replaced, so
	// that an attempt never starts with one about to expire.
	tokenRenewBefore = 2 * time.Minute
	// copyRecheck is how often a copy in progress is looked at without an
	// event: its claim may be gone, its token may be due for renewal.
	copyRecheck = 15 * time.Second
	// copyWaitAgain: the trust or the source's address is not there yet.
	copyWaitAgain = 5 * time.Second
)

// CopySnapshotID is the ID of the snapshot taken of a clone's source to
// copy it into volumeID on another node: derived from volumeID, so a
// retried CreateVolume (or a restarted controller) finds the same one.
func CopySnapshotID(volumeID string) string {
	sum := sha256.Sum256([]byte("csi-thin.io/cross-node-copy/" + volumeID))
	return "s-" + hex.EncodeToString(sum[:16])
}

// streamedSnapshot is the snapshot a cross-node copy of src into
// volumeID streams.
func streamedSnapshot(volumeID string, src backend.Source) string {
	if src.Kind == backend.SourceSnapshot {
		return src.ID
	}
	return CopySnapshotID(volumeID)
}

// CopiesAcrossNodes implements backend.NodeCopier: with transfers on, a
// clone or restore may be placed on another node than its source's.
func (r *Router) CopiesAcrossNodes() bool { return r.cfg.Transfers != nil }

// canCopy says why src cannot be copied from srcNode to node, or nil.
func (r *Router) canCopy(ctx context.Context, src backend.Source, srcNode, node string) error {
	if r.cfg.Transfers == nil {
		return errors.New("cross-node copies are off (the controller runs without --transfer; chart: transfer.enabled)")
	}
	var backends []string
	for _, n := range []string{srcNode, node} {
		tn := &thinv1.ThinNode{}
		if err := r.client.Get(ctx, client.ObjectKey{Name: n}, tn); err != nil {
			return fmt.Errorf("node %s has no readable ThinNode (%v)", n, err)
		}
		if tn.Status.TransferAddress == "" {
			return fmt.Errorf("the csi-thin agent of node %s serves no transfers (transfers off there, or a %s pool, which cannot stream)", n, tn.Status.Backend)
		}
		backends = append(backends, tn.Status.Backend)
	}
	// A volume stream is of its pool's kind (btrfs send, or thin ranges).
	if backends[0] != backends[1] {
		return fmt.Errorf("node %s has a %s pool and node %s a %s pool: a copy cannot cross pool kinds", srcNode, backends[0], node, backends[1])
	}
	if src.Kind == backend.SourceSnapshot {
		ts := &thinv1.ThinSnapshot{}
		if err := r.getFresh(ctx, src.ID, ts); err == nil && !ts.Status.ReadyToUse {
			return fmt.Errorf("snapshot %s is not ready to use yet", src.ID)
		}
	}
	return nil
}

// copyInProgress words a wait that ended before a copy did: the caller
// (the provisioner) calls again, and sees how far the copy got.
func copyInProgress(tv *thinv1.ThinVolume, err error) error {
	src := tv.Spec.Source
	if src == nil || src.Node == "" || !(errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)) {
		return err
	}
	progress := "not started"
	if t := tv.Status.Transfer; t != nil {
		progress = fmt.Sprintf("%s, %d of %d bytes, attempt %d", t.Phase, t.BytesDone, t.BytesTotal, t.Attempts)
		if t.Message != "" {
			progress += ", last failure: " + t.Message
		}
	}
	return fmt.Errorf("volume %s: still copying snapshot %s from node %s to node %s (%s): %w", tv.Name, src.SnapshotID, src.Node, tv.Spec.Node, progress, err)
}

// Copies is the controller's side of cross-node copies (a reconciler of
// the ThinVolumes that are copies, and of the snapshots taken for them).
type Copies struct {
	Client client.Client // reads from the cache
	// API reads PersistentVolumeClaims (not cached).
	API      client.Reader
	Recorder events.EventRecorder
	// Tokens returns the token issuer; nil until the trust is loaded.
	Tokens func() *transfer.Issuer
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

// SetupWithManager registers Copies for ThinVolumes with a remote source,
// and for the snapshots taken for them (labelled with the volume's ID).
func (c *Copies) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("crossnode-copy").
		For(&thinv1.ThinVolume{}, builder.WithPredicates(predicate.NewPredicateFuncs(isCopy))).
		Watches(&thinv1.ThinSnapshot{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, obj client.Object) []reconcile.Request {
			if v := obj.GetLabels()[wellknown.LabelTransferFor]; v != "" {
				return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: v}}}
			}
			return nil
		})).
		Complete(c)
}

func isCopy(obj client.Object) bool {
	tv, ok := obj.(*thinv1.ThinVolume)
	return ok && tv.Spec.Source != nil && tv.Spec.Source.Node != ""
}

func (c *Copies) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// Reconcile implements reconcile.Reconciler.
func (c *Copies) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	logger := klog.FromContext(ctx).WithValues("volumeID", req.Name)
	ctx = klog.NewContext(ctx, logger)
	tv := &thinv1.ThinVolume{}
	if err := c.Client.Get(ctx, req.NamespacedName, tv); err != nil {
		if apierrors.IsNotFound(err) {
			return ctrl.Result{}, c.dropSnapshot(ctx, req.Name)
		}
		return ctrl.Result{}, err
	}
	if !isCopy(tv) {
		return ctrl.Result{}, nil
	}
	switch tv.Status.Phase {
	case thinv1.PhaseReady, thinv1.PhaseFailed, thinv1.PhaseLost:
		return ctrl.Result{}, c.dropSnapshot(ctx, tv.Name)
	}
	if !tv.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, c.dropSnapshot(ctx, tv.Name)
	}
	if gone, why, err := c.claimGone(ctx, tv); err != nil {
		return ctrl.Result{}, err
	} else if gone {
		logger.Info("claim gone: cancelling the copy", "reason", why)
		c.Recorder.Eventf(tv, nil, corev1.EventTypeNormal, "CopyCancelled", "CreateVolume", "%s: the copy is cancelled and the volume deleted", why)
		if err := c.Client.Delete(ctx, tv); err != nil && !apierrors.IsNotFound(err) {
			return ctrl.Result{}, fmt.Errorf("delete ThinVolume of a gone claim: %w", err)
		}
		return ctrl.Result{}, c.dropSnapshot(ctx, tv.Name)
	}
	if tv.Spec.Source.Kind == thinv1.VolumeSourceVolume {
		ready, err := c.snapshotForCopy(ctx, tv)
		if err != nil || !ready {
			return ctrl.Result{}, ignoreConflict(err)
		}
	}
	res, err := c.grant(ctx, tv)
	return res, ignoreConflict(err)
}

func ignoreConflict(err error) error {
	if apierrors.IsConflict(err) {
		return nil // the change brings another reconcile
	}
	return err
}

// claimGone reports whether the claim the volume is being made for was
// deleted (or replaced by another of the same name): nobody will take the
// volume, so its copy is cancelled. A volume not labelled with its claim
// (made without --extra-create-metadata) is never judged gone.
func (c *Copies) claimGone(ctx context.Context, tv *thinv1.ThinVolume) (bool, string, error) {
	ns, name := tv.Labels[wellknown.LabelPVCNamespace], tv.Labels[wellknown.LabelPVCName]
	if ns == "" || name == "" || c.API == nil {
		return false, "", nil
	}
	pvc := &corev1.PersistentVolumeClaim{}
	if err := c.API.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, pvc); err != nil {
		if apierrors.IsNotFound(err) {
			return true, fmt.Sprintf("PersistentVolumeClaim %s/%s is gone", ns, name), nil
		}
		return false, "", fmt.Errorf("get PersistentVolumeClaim %s/%s: %w", ns, name, err)
	}
	if !pvc.DeletionTimestamp.IsZero() {
		return true, fmt.Sprintf("PersistentVolumeClaim %s/%s is being deleted", ns, name), nil
	}
	// The provisioner names a claim's volume after the claim's UID.
	if strings.HasPrefix(tv.Spec.Name, "pvc-") && tv.Spec.Name != "pvc-"+string(pvc.UID) {
		return true, fmt.Sprintf("PersistentVolumeClaim %s/%s was replaced by another of that name", ns, name), nil
	}
	return false, "", nil
}

// snapshotForCopy makes sure the snapshot of a clone's source exists on
// the source's node (owned by the volume: the garbage collector removes
// it with the volume, whatever happens to the controller) and reports
// whether it is ready. A snapshot that failed fails the copy.
func (c *Copies) snapshotForCopy(ctx context.Context, tv *thinv1.ThinVolume) (bool, error) {
	src := tv.Spec.Source
	ts := &thinv1.ThinSnapshot{}
	err := c.Client.Get(ctx, client.ObjectKey{Name: src.SnapshotID}, ts)
	if apierrors.IsNotFound(err) {
		ts = &thinv1.ThinSnapshot{
			ObjectMeta: metav1.ObjectMeta{
				Name:            src.SnapshotID,
				Labels:          map[string]string{wellknown.LabelNode: src.Node, wellknown.LabelTransferFor: tv.Name},
				OwnerReferences: []metav1.OwnerReference{{APIVersion: thinv1.GroupVersion.String(), Kind: "ThinVolume", Name: tv.Name, UID: tv.UID}},
				Finalizers:      agentFinalizer(),
			},
			Spec: thinv1.ThinSnapshotSpec{Node: src.Node, Name: "copy-to-" + tv.Name, SourceVolumeID: src.ID},
		}
		if err := c.Client.Create(ctx, ts); err != nil && !apierrors.IsAlreadyExists(err) {
			return false, fmt.Errorf("create ThinSnapshot %s of volume %s for the copy: %w", src.SnapshotID, src.ID, err)
		}
		klog.FromContext(ctx).Info("snapshot of the source taken for the copy", "snapshotID", src.SnapshotID, "sourceVolumeID", src.ID, "sourceNode", src.Node)
		return false, nil // its status brings the next reconcile
	}
	if err != nil {
		return false, fmt.Errorf("get ThinSnapshot %s: %w", src.SnapshotID, err)
	}
	if ts.Labels[wellknown.LabelTransferFor] != tv.Name {
		return false, c.failCopy(ctx, tv, codeOf(backend.ErrExists), fmt.Sprintf("snapshot %s exists and is not the one taken for this copy", src.SnapshotID))
	}
	switch ts.Status.Phase {
	case thinv1.PhaseReady:
		return ts.Status.ReadyToUse, nil
	case thinv1.PhaseFailed, thinv1.PhaseLost:
		msg := ts.Status.Message
		if ts.Status.Phase == thinv1.PhaseLost {
			msg = "its node is lost"
		}
		code := ts.Status.Code
		if !failed(code) {
			code = codeOf(backend.ErrUnavailable)
		}
		return false, c.failCopy(ctx, tv, code, fmt.Sprintf("the snapshot of volume %s on node %s for the copy failed: %s", src.ID, src.Node, msg))
	}
	return false, nil
}

// failCopy gives the copy the verdict Failed (the router then deletes
// the volume, and the caller's retry starts afresh).
func (c *Copies) failCopy(ctx context.Context, tv *thinv1.ThinVolume, code, msg string) error {
	klog.FromContext(ctx).Info("copy failed before its transfer", "code", code, "reason", msg)
	c.Recorder.Eventf(tv, nil, corev1.EventTypeWarning, "CopyFailed", "CreateVolume", "%s: %s", code, msg)
	tv.Status.Phase = thinv1.PhaseFailed
	tv.Status.OperationStatus = thinv1.OperationStatus{Code: code, Message: msg}
	apimeta.SetStatusCondition(&tv.Status.Conditions, metav1.Condition{Type: thinv1.ConditionReady, Status: metav1.ConditionFalse,
		Reason: code, Message: msg, ObservedGeneration: tv.Generation})
	return c.Client.Status().Update(ctx, tv)
}

// grant gives the copy a token unless it holds one that is unspent and
// not about to expire.
func (c *Copies) grant(ctx context.Context, tv *thinv1.ThinVolume) (ctrl.Result, error) {
	src := tv.Spec.Source
	now := c.now()
	spent := ""
	if tv.Status.Transfer != nil {
		spent = tv.Status.Transfer.SpentTokenID
	}
	if tok := tv.Annotations[wellknown.AnnotationTransferToken]; tok != "" {
		cl, err := transfer.ParseUnverified(tok)
		if err == nil && cl.ID != spent && cl.Snapshot == src.SnapshotID && cl.Source == src.Node && cl.Target == tv.Spec.Node &&
			now.Add(tokenRenewBefore).Before(cl.ExpiresAt()) {
			return ctrl.Result{RequeueAfter: copyRecheck}, nil
		}
	}
	var issuer *transfer.Issuer
	if c.Tokens != nil {
		issuer = c.Tokens()
	}
	if issuer == nil {
		klog.FromContext(ctx).V(2).Info("copy waits for the transfer trust to be loaded")
		return ctrl.Result{RequeueAfter: copyWaitAgain}, nil
	}
	tn := &thinv1.ThinNode{}
	if err := c.Client.Get(ctx, client.ObjectKey{Name: src.Node}, tn); err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, fmt.Errorf("get ThinNode %s: %w", src.Node, err)
	}
	addr := tn.Status.TransferAddress
	if addr == "" {
		klog.FromContext(ctx).Info("copy waits: the source node's agent publishes no transfer address", "sourceNode", src.Node)
		return ctrl.Result{RequeueAfter: copyWaitAgain}, nil
	}
	tok, claims, err := issuer.Mint(transfer.Claims{Transfer: tv.Name, Snapshot: src.SnapshotID, Source: src.Node, Target: tv.Spec.Node}, now, TokenTTL)
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("mint transfer token: %w", err)
	}
	patch := client.MergeFromWithOptions(tv.DeepCopy(), client.MergeFromWithOptimisticLock{})
	if tv.Annotations == nil {
		tv.Annotations = map[string]string{}
	}
	tv.Annotations[wellknown.AnnotationTransferToken] = tok
	tv.Annotations[wellknown.AnnotationTransferSource] = addr
	if err := c.Client.Patch(ctx, tv, patch); err != nil {
		return ctrl.Result{}, fmt.Errorf("grant transfer token: %w", client.IgnoreNotFound(err))
	}
	klog.FromContext(ctx).Info("transfer token granted", "tokenID", claims.ID, "snapshotID", src.SnapshotID,
		"sourceNode", src.Node, "sourceAddress", addr, "targetNode", tv.Spec.Node, "expires", claims.ExpiresAt(), "spentTokenID", spent)
	return ctrl.Result{RequeueAfter: copyRecheck}, nil
}

// dropSnapshot deletes the snapshot taken for the copy into volumeID, if
// there is one (its node removes the storage).
func (c *Copies) dropSnapshot(ctx context.Context, volumeID string) error {
	ts := &thinv1.ThinSnapshot{}
	if err := c.Client.Get(ctx, client.ObjectKey{Name: CopySnapshotID(volumeID)}, ts); err != nil {
		return client.IgnoreNotFound(err)
	}
	if ts.Labels[wellknown.LabelTransferFor] != volumeID || !ts.DeletionTimestamp.IsZero() {
		return nil
	}
	if err := c.Client.Delete(ctx, ts); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete the snapshot %s taken for the copy: %w", ts.Name, err)
	}
	klog.FromContext(ctx).Info("copy over: its snapshot of the source deleted", "snapshotID", ts.Name, "sourceNode", ts.Spec.Node)
	return nil
}

// codeOf is the stored code name of a backend sentinel.
func codeOf(sentinel error) string { return rpcerr.Code(sentinel).String() }
