package nodeagent

import (
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/rpcerr"
	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

// operation records the outcome of a backend call: the gRPC code the CSI
// boundary would have returned for err (so the controller can return the
// very same code) and the node's message.
func operation(err error) thinv1.OperationStatus {
	if err == nil {
		return thinv1.OperationStatus{Code: codes.OK.String()}
	}
	return thinv1.OperationStatus{Code: rpcerr.Code(err).String(), Message: err.Error()}
}

// setReady sets the Ready condition from an outcome.
func setReady(conds *[]metav1.Condition, generation int64, err error, reasonOK string) {
	c := metav1.Condition{Type: thinv1.ConditionReady, Status: metav1.ConditionTrue, Reason: reasonOK, ObservedGeneration: generation}
	if err != nil {
		c.Status, c.Reason, c.Message = metav1.ConditionFalse, rpcerr.Code(err).String(), err.Error()
	}
	apimeta.SetStatusCondition(conds, c)
}

// setDeleteFailed marks a resource whose storage the node could not remove.
func setDeleteFailed(conds *[]metav1.Condition, generation int64, err error) {
	apimeta.SetStatusCondition(conds, metav1.Condition{
		Type: thinv1.ConditionReady, Status: metav1.ConditionFalse, Reason: thinv1.ReasonDeleteFailed,
		Message: err.Error(), ObservedGeneration: generation,
	})
}

// tracked is what the reconcilers share of a resource's status: whose it
// is, what to call it in logs and Events, and where its outcome goes.
type tracked struct {
	obj        client.Object
	node, what string // what: "volume", "snapshot", "group snapshot"
	phase      *thinv1.Phase
	op         *thinv1.OperationStatus
	conditions *[]metav1.Condition
}

// recovered writes the outcome of a node back after the controller judged
// it lost: holding the storage (found), the resource is Ready again;
// without it (a replaced disk), it stays Lost with the reason, once, and
// nothing is recreated: an empty volume in place of the data would be a
// silent loss. A resource that is resumable (never made: no data to lose,
// and the CreateVolume or CreateSnapshot that asked for it is still being
// retried by its sidecar) goes back to Pending and the node makes it now.
// Left Lost, its claim would never bind.
func recovered(ctx context.Context, c client.Client, rec events.EventRecorder, t tracked, found, resumable bool) error {
	logger := klog.FromContext(ctx)
	gen := t.obj.GetGeneration()
	if !found && resumable {
		msg := "node " + t.node + " is back; it had not made the " + t.what + " yet and makes it now"
		logger.Info("node back, making the "+t.what+" it had not made yet", "node", t.node)
		*t.phase = thinv1.PhasePending
		*t.op = operation(nil)
		apimeta.SetStatusCondition(t.conditions, metav1.Condition{Type: thinv1.ConditionReady, Status: metav1.ConditionFalse,
			Reason: thinv1.ReasonResumed, Message: msg, ObservedGeneration: gen})
		rec.Eventf(t.obj, nil, corev1.EventTypeNormal, thinv1.ReasonResumed, "Recover", "%s", msg)
		return c.Status().Update(ctx, t.obj)
	}
	if !found {
		if cond := apimeta.FindStatusCondition(*t.conditions, thinv1.ConditionReady); cond != nil && cond.Reason == thinv1.ReasonStorageMissing {
			return nil
		}
		msg := "node " + t.node + " is back but does not hold the " + t.what
		logger.Info("node back, but the "+t.what+" is not on it", "node", t.node)
		rec.Eventf(t.obj, nil, corev1.EventTypeWarning, thinv1.ReasonStorageMissing, "Recover", "%s", msg)
		apimeta.SetStatusCondition(t.conditions, metav1.Condition{Type: thinv1.ConditionReady, Status: metav1.ConditionFalse,
			Reason: thinv1.ReasonStorageMissing, Message: msg, ObservedGeneration: gen})
		return c.Status().Update(ctx, t.obj)
	}
	msg := "node " + t.node + " is back with the " + t.what
	*t.phase = thinv1.PhaseReady
	*t.op = operation(nil)
	apimeta.SetStatusCondition(t.conditions, metav1.Condition{Type: thinv1.ConditionReady, Status: metav1.ConditionTrue,
		Reason: thinv1.ReasonRecovered, Message: msg, ObservedGeneration: gen})
	logger.Info("lost "+t.what+" recovered", "node", t.node)
	rec.Eventf(t.obj, nil, corev1.EventTypeNormal, thinv1.ReasonRecovered, "Recover", "%s", msg)
	return c.Status().Update(ctx, t.obj)
}

// released removes the storage of a deleted resource (remove) and then
// the agent's finalizer; a failure is reported (Event, status) and
// returned, so the deletion is retried with backoff.
func released(ctx context.Context, c client.Client, rec events.EventRecorder, t tracked, action string, remove func() error, changed func()) error {
	if !controllerutil.ContainsFinalizer(t.obj, wellknown.FinalizerNodeCleanup) {
		return nil
	}
	logger := klog.FromContext(ctx)
	if err := remove(); err != nil {
		logger.Error(err, "delete "+t.what+" failed; will retry")
		rec.Eventf(t.obj, nil, corev1.EventTypeWarning, "DeleteFailed", action, "%s", err.Error())
		*t.op = operation(err)
		setDeleteFailed(t.conditions, t.obj.GetGeneration(), err)
		if uerr := c.Status().Update(ctx, t.obj); uerr != nil && !apierrors.IsNotFound(uerr) {
			logger.Error(uerr, "write status")
		}
		return err
	}
	controllerutil.RemoveFinalizer(t.obj, wellknown.FinalizerNodeCleanup)
	if err := c.Update(ctx, t.obj); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("remove finalizer: %w", err)
	}
	logger.Info(t.what + " deleted")
	if changed != nil {
		changed()
	}
	return nil
}
