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

// Code returns the gRPC code for a backend error.
func Code(err error) codes.Code {
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
		return s.Code()
	}
	switch {
	case err == nil:
		return codes.OK
	case errors.Is(err, backend.ErrNotFound):
		return codes.NotFound
	case errors.Is(err, backend.ErrExists):
		return codes.AlreadyExists
	case errors.Is(err, backend.ErrNoSpace):
		return codes.ResourceExhausted
	case errors.Is(err, backend.ErrOutOfRange):
		return codes.OutOfRange
	case errors.Is(err, backend.ErrInvalid), errors.Is(err, backend.ErrUnsupported):
		return codes.InvalidArgument
	case errors.Is(err, backend.ErrBusy):
		return codes.Aborted
	case errors.Is(err, backend.ErrPrecondition):
		return codes.FailedPrecondition
	case errors.Is(err, backend.ErrUnavailable):
		return codes.Unavailable
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	}
	return codes.Internal
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
