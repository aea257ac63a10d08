package nodeagent

import (
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"google.golang.org/grpc/codes"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/rpcerr"
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
