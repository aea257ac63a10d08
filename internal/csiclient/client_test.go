package csiclient

import (
	"context"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// fakeDriver records what a client sends; it stores no volumes.
type fakeDriver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer
	mu     sync.Mutex
	probes int
	create []*csi.CreateVolumeRequest
	calls  []string
}

func (f *fakeDriver) record(call string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
}

// Probe is not ready the first time, as a driver still bootstrapping.
func (f *fakeDriver) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.probes++
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(f.probes > 1)}, nil
}

func (f *fakeDriver) CreateVolume(_ context.Context, r *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	f.mu.Lock()
	f.create = append(f.create, r)
	f.mu.Unlock()
	return &csi.CreateVolumeResponse{Volume: &csi.Volume{VolumeId: "v-" + r.GetName(), CapacityBytes: r.GetCapacityRange().GetRequiredBytes()}}, nil
}

func (f *fakeDriver) NodeStageVolume(_ context.Context, r *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	f.record("stage " + r.GetVolumeId() + " " + filepath.Base(r.GetStagingTargetPath()))
	return &csi.NodeStageVolumeResponse{}, nil
}

func (f *fakeDriver) NodePublishVolume(_ context.Context, r *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	f.record("publish " + r.GetVolumeId() + " " + filepath.Base(r.GetStagingTargetPath()) + " " + filepath.Base(r.GetTargetPath()))
	return &csi.NodePublishVolumeResponse{}, nil
}

func (f *fakeDriver) NodeUnpublishVolume(_ context.Context, r *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	f.record("unpublish " + r.GetVolumeId() + " " + filepath.Base(r.GetTargetPath()))
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

func (f *fakeDriver) NodeUnstageVolume(_ context.Context, r *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	f.record("unstage " + r.GetVolumeId() + " " + filepath.Base(r.GetStagingTargetPath()))
	return &csi.NodeUnstageVolumeResponse{}, nil
}

func startFake(t *testing.T) (*fakeDriver, *Client) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "csi.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeDriver{}
	srv := grpc.NewServer()
	csi.RegisterIdentityServer(srv, f)
	csi.RegisterControllerServer(srv, f)
	csi.RegisterNodeServer(srv, f)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	c, err := Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return f, c
}

func TestWaitReadyRetriesUntilReady(t *testing.T) {
	f, c := startFake(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if f.probes < 2 {
		t.Errorf("probes = %d, want at least 2 (first answer was not ready)", f.probes)
	}
}

func TestCreateRequestsCarrySourceAndCapability(t *testing.T) {
	f, c := startFake(t)
	c.FsType = "ext4"
	ctx := context.Background()
	if _, err := c.CreateVolume(ctx, "a", 1<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CloneVolume(ctx, "b", "v-a", 2<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RestoreSnapshot(ctx, "c", "s-x", 0); err != nil {
		t.Fatal(err)
	}
	if len(f.create) != 3 {
		t.Fatalf("got %d CreateVolume calls, want 3", len(f.create))
	}
	if f.create[0].GetVolumeContentSource() != nil {
		t.Errorf("empty volume sent a content source: %v", f.create[0].GetVolumeContentSource())
	}
	if got := f.create[1].GetVolumeContentSource().GetVolume().GetVolumeId(); got != "v-a" {
		t.Errorf("clone source = %q, want v-a", got)
	}
	if got := f.create[2].GetVolumeContentSource().GetSnapshot().GetSnapshotId(); got != "s-x" {
		t.Errorf("restore source = %q, want s-x", got)
	}
	for i, r := range f.create {
		caps := r.GetVolumeCapabilities()
		if len(caps) != 1 || caps[0].GetMount().GetFsType() != "ext4" ||
			caps[0].GetAccessMode().GetMode() != csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER {
			t.Errorf("request %d: capabilities %v, want one ext4 single-node-writer mount", i, caps)
		}
	}
	if got := f.create[1].GetCapacityRange().GetRequiredBytes(); got != 2<<20 {
		t.Errorf("clone required bytes = %d, want %d", got, 2<<20)
	}
}

func TestAttachDetachOrder(t *testing.T) {
	f, c := startFake(t)
	ctx := context.Background()
	a, err := c.Attach(ctx, "v-1", filepath.Join(t.TempDir(), "pod"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Detach(ctx); err != nil {
		t.Fatal(err)
	}
	want := []string{"stage v-1 globalmount", "publish v-1 globalmount mount", "unpublish v-1 mount", "unstage v-1 globalmount"}
	if len(f.calls) != len(want) {
		t.Fatalf("calls = %q, want %q", f.calls, want)
	}
	for i := range want {
		if f.calls[i] != want[i] {
			t.Errorf("call %d = %q, want %q", i, f.calls[i], want[i])
		}
	}
}
