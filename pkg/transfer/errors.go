package transfer

import (
	"errors"

	"google.golang.org/grpc/codes"

	"github.com/csi-thin/csi-thin/pkg/rpcerr"
)

// Refusals of a transfer. The source decides all but ErrUnauthenticated
// on the client's side (the source is not the node the token names, or
// refused this node's certificate); the client gets them back typed,
// wrapped with the source's message.
var (
	// ErrUnauthenticated: a peer without a certificate of the transfer CA
	// naming one node, or not the node the token names.
	ErrUnauthenticated = errors.New("peer not authenticated")
	// ErrBadToken: a token that is malformed or not signed by the
	// controller's key.
	ErrBadToken = errors.New("token not valid")
	// ErrExpired: a token past its expiry.
	ErrExpired = errors.New("token expired")
	// ErrWrongSource: a token for a transfer from another node.
	ErrWrongSource = errors.New("token is for another source node")
	// ErrWrongTarget: a token presented by a node that is not its target.
	ErrWrongTarget = errors.New("token is for another target node")
	// ErrReplayed: a token used before (tokens are good for one transfer).
	ErrReplayed = errors.New("token used already")
)

// wireErrors names each refusal on the wire (the header errorHeader of a
// refused request) and gives its gRPC code.
var wireErrors = []struct {
	name string
	err  error
	code codes.Code
}{
	{"unauthenticated", ErrUnauthenticated, codes.Unauthenticated},
	{"bad-token", ErrBadToken, codes.Unauthenticated},
	{"expired", ErrExpired, codes.Unauthenticated},
	{"wrong-source", ErrWrongSource, codes.PermissionDenied},
	{"wrong-target", ErrWrongTarget, codes.PermissionDenied},
	{"replayed", ErrReplayed, codes.PermissionDenied},
}

// Code is the gRPC code of a transfer error: Unauthenticated for a peer or
// token that cannot be trusted, PermissionDenied for a valid token used
// where or when it is not good, and the backend's codes (rpcerr) for the
// rest (an unknown snapshot is NotFound).
func Code(err error) codes.Code {
	for _, w := range wireErrors {
		if errors.Is(err, w.err) {
			return w.code
		}
	}
	return rpcerr.Code(err)
}
