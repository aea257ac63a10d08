package rpcerr

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

func TestCode(t *testing.T) {
	cases := []struct {
		err  error
		want codes.Code
	}{
		{nil, codes.OK},
		{fmt.Errorf("lookup: %w", backend.ErrNotFound), codes.NotFound},
		{fmt.Errorf("x: %w", backend.ErrExists), codes.AlreadyExists},
		{fmt.Errorf("x: %w", backend.ErrNoSpace), codes.ResourceExhausted},
		{fmt.Errorf("x: %w", backend.ErrOutOfRange), codes.OutOfRange},
		{fmt.Errorf("x: %w", backend.ErrInvalid), codes.InvalidArgument},
		{fmt.Errorf("x: %w", backend.ErrUnsupported), codes.InvalidArgument},
		{fmt.Errorf("x: %w", backend.ErrBusy), codes.Aborted},
		{fmt.Errorf("x: %w", backend.ErrPrecondition), codes.FailedPrecondition},
		{fmt.Errorf("x: %w", backend.ErrInUse), codes.FailedPrecondition},
		{fmt.Errorf("x: %w", backend.ErrUnavailable), codes.Unavailable},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{errors.New("mystery"), codes.Internal},
		{status.Error(codes.Aborted, "already a status"), codes.Aborted},
	}
	for _, tc := range cases {
		if got := Code(tc.err); got != tc.want {
			t.Errorf("Code(%v) = %v, want %v", tc.err, got, tc.want)
		}
		if tc.err != nil {
			if got := status.Code(Status(tc.err)); got != tc.want {
				t.Errorf("Status(%v) has code %v, want %v", tc.err, got, tc.want)
			}
		}
	}
}

// TestSentinelInvertsCode: a code that travelled without its error (a CR
// status) turns back into an error with the same code.
func TestSentinelInvertsCode(t *testing.T) {
	for _, c := range []codes.Code{codes.NotFound, codes.AlreadyExists, codes.ResourceExhausted, codes.OutOfRange,
		codes.InvalidArgument, codes.Aborted, codes.FailedPrecondition, codes.Unavailable, codes.DeadlineExceeded, codes.Canceled} {
		err, ok := Sentinel(c)
		if !ok || Code(err) != c {
			t.Errorf("Sentinel(%v) = %v, %v; its code is %v", c, err, ok, Code(err))
		}
	}
	if _, ok := Sentinel(codes.Internal); ok {
		t.Error("Internal has no sentinel")
	}
}
