// Package rpcerr is the one place where backend errors become gRPC status
// codes. Every CSI handler returns through Status, so a client always gets
// a precise code and the backend's message, never Unknown.
package rpcerr

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// mapping is the one table between backend errors and gRPC codes, read
// in both directions. Where two errors share a code, the first is the one
// Sentinel returns.
var mapping = []struct {
	err  error
	code codes.Code
}{
	{backend.ErrNotFound, codes.NotFound},
	{backend.ErrExists, codes.AlreadyExists},
	{backend.ErrNoSpace, codes.ResourceExhausted},
	{backend.ErrOutOfRange, codes.OutOfRange},
	{backend.ErrInvalid, codes.InvalidArgument},
	{backend.ErrUnsupported, codes.InvalidArgument},
	{backend.ErrBusy, codes.Aborted},
	{backend.ErrPrecondition, codes.FailedPrecondition},
	{backend.ErrInUse, codes.FailedPrecondition},
	{backend.ErrUnavailable, codes.Unavailable},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
	{context.Canceled, codes.Canceled},
}

// Code returns the gRPC code for a backend error.
func Code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
		return s.Code()
	}
	for _, m := range mapping {
		if errors.Is(err, m.err) {
			return m.code
		}
	}
	return codes.Internal
}

// Sentinel is the inverse of Code: the backend error a code stands for
// (used where a code travelled without its error, e.g. in a CR status).
// ok is false for codes no backend error maps to.
func Sentinel(code codes.Code) (err error, ok bool) {
	for _, m := range mapping {
		if m.code == code {
			return m.err, true
		}
	}
	return nil, false
}

// Status wraps err into a gRPC status error with its mapped code; an error
// that already is a status passes through unchanged.
func Status(err error) error {
	if err == nil {
		return nil
	}
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
		return err
	}
	return status.Error(Code(err), err.Error())
}
