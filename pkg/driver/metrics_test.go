package driver

import (
	"context"
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestCallsAreCountedByCode(t *testing.T) {
	info := &grpc.UnaryServerInfo{FullMethod: "/csi.v1.Controller/TestMethod"}
	fail := func(context.Context, any) (any, error) { return nil, status.Error(codes.NotFound, "gone") }
	ok := func(context.Context, any) (any, error) { return "ok", nil }
	for i := 0; i < 3; i++ {
		logCalls(context.Background(), struct{}{}, info, fail)
	}
	logCalls(context.Background(), struct{}{}, info, ok)
	if n := testutil.CollectAndCount(rpcDuration, "csi_thin_csi_rpc_duration_seconds"); n < 2 {
		t.Fatalf("want series for both codes, got %d", n)
	}
}

func TestPanicBecomesInternal(t *testing.T) {
	info := &grpc.UnaryServerInfo{FullMethod: "/csi.v1.Node/Boom"}
	_, err := recoverPanics(context.Background(), nil, info, func(context.Context, any) (any, error) { panic(errors.New("boom")) })
	if status.Code(err) != codes.Internal {
		t.Fatalf("want Internal, got %v", err)
	}
}

func TestSocketPath(t *testing.T) {
	cases := map[string]string{"unix:///run/csi/csi.sock": "/run/csi/csi.sock", "unix://rel/csi.sock": "rel/csi.sock"}
	for in, want := range cases {
		if got, err := SocketPath(in); err != nil || got != want {
			t.Errorf("SocketPath(%q) = %q, %v", in, got, err)
		}
	}
	for _, bad := range []string{"tcp://127.0.0.1:1", "unix://", "/no/scheme"} {
		if _, err := SocketPath(bad); err == nil {
			t.Errorf("SocketPath(%q) accepted", bad)
		}
	}
}
