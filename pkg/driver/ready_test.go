package driver

import (
	"context"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// Before Ready, the socket answers: Probe says not ready, capabilities
// are answered (sidecars exit when that fails), calls about volumes fail
// Unavailable; once Ready, the calls go through.
func TestCallsWaitForReady(t *testing.T) {
	var ready atomic.Bool
	sock := filepath.Join(t.TempDir(), "csi.sock")
	health := func(context.Context) backend.Health { return backend.Health{Healthy: ready.Load()} }
	d, err := New(Config{
		Endpoint:   "unix://" + sock,
		Identity:   NewIdentity(health, WithController),
		Controller: &csi.UnimplementedControllerServer{},
		Ready:      ready.Load,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	id, ctrl := csi.NewIdentityClient(conn), csi.NewControllerClient(conn)

	for _, want := range []bool{false, true} {
		ready.Store(want)
		probe, err := id.Probe(ctx, &csi.ProbeRequest{})
		if err != nil || probe.GetReady().GetValue() != want {
			t.Fatalf("ready %v: Probe = %v, %v", want, probe, err)
		}
		// Both reach the (unimplemented) server, or are stopped before it.
		if _, err := ctrl.ControllerGetCapabilities(ctx, &csi.ControllerGetCapabilitiesRequest{}); status.Code(err) != codes.Unimplemented {
			t.Errorf("ready %v: ControllerGetCapabilities: %v, want it answered", want, err)
		}
		_, err = ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "v"})
		wantCode := codes.Unavailable
		if want {
			wantCode = codes.Unimplemented
		}
		if status.Code(err) != wantCode {
			t.Errorf("ready %v: CreateVolume: %v, want %s", want, err, wantCode)
		}
	}
}
