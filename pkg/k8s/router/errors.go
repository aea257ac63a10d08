package router

import (
	"errors"

	"google.golang.org/grpc/codes"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"

	"github.com/csi-thin/csi-thin/pkg/rpcerr"
)

// nodeError is a failure the node agent reported in a resource's status.
// It unwraps to the backend sentinel for the stored gRPC code, so the CSI
// boundary (rpcerr) returns exactly the code the node's backend produced,
// with the node's own message.
type nodeError struct {
	node     string
	message  string
	sentinel error
}

func (e *nodeError) Error() string { return "node " + e.node + ": " + e.message }
func (e *nodeError) Unwrap() error { return e.sentinel }

// errInternal stands for a node-side failure with no better sentinel; it
// maps to codes.Internal.
var errInternal = errors.New("internal error on the node")

// sentinelFor is rpcerr's mapping read backwards. InvalidArgument maps to
// ErrInvalid (ErrUnsupported shares its code, so the distinction is lost,
// but not the code).
func sentinelFor(code codes.Code) error {
	if err, ok := rpcerr.Sentinel(code); ok {
		return err
	}
	return errInternal
}

// parseCode reads a code name as written by codes.Code.String().
func parseCode(name string) codes.Code {
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		if c.String() == name {
			return c
		}
	}
	return codes.Unknown
}

// failed reports whether a stored code name is a failure.
func failed(code string) bool { return code != "" && code != codes.OK.String() }

// statusError turns a stored code and message into an error, nil for OK.
func statusError(node, code, message string) error {
	if !failed(code) {
		return nil
	}
	if message == "" {
		message = code
	}
	return &nodeError{node: node, message: message, sentinel: sentinelFor(parseCode(code))}
}

// lostError is the answer for a resource whose node the controller judged
// lost: Unavailable, with the controller's reason.
func lostError(node string, conds []metav1.Condition) error {
	msg := "node lost"
	if c := apimeta.FindStatusCondition(conds, thinv1.ConditionReady); c != nil && c.Message != "" {
		msg = "node lost: " + c.Message
	}
	return &nodeError{node: node, message: msg, sentinel: backend.ErrUnavailable}
}
