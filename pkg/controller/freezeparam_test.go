package controller

import (
	"context"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/backend/fake"
)

// recordingBackend keeps the last snapshot request.
type recordingBackend struct {
	*fake.Backend
	last backend.SnapshotRequest
}

func (b *recordingBackend) CreateSnapshot(ctx context.Context, req backend.SnapshotRequest) (*backend.Snapshot, error) {
	b.last = req
	return b.Backend.CreateSnapshot(ctx, req)
}

func TestCreateSnapshotFreezeParameter(t *testing.T) {
	for _, tc := range []struct {
		params   map[string]string
		wantCode codes.Code
		wantSkip bool
	}{
		{params: nil},
		{params: map[string]string{ParamFreeze: "true"}},
		{params: map[string]string{ParamFreeze: "false"}, wantSkip: true},
		{params: map[string]string{ParamFreeze: "no"}, wantCode: codes.InvalidArgument},
		{params: map[string]string{ParamFreeze: ""}, wantCode: codes.InvalidArgument},
	} {
		ctx := context.Background()
		b := &recordingBackend{Backend: fake.New("n1", 10*backend.GiB)}
		s := New(b)
		vol, err := s.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "src", VolumeCapabilities: []*csi.VolumeCapability{{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}}})
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: vol.GetVolume().GetVolumeId(), Parameters: tc.params})
		if status.Code(err) != tc.wantCode {
			t.Errorf("%v: CreateSnapshot %v, want %s", tc.params, err, tc.wantCode)
			continue
		}
		if err == nil && b.last.SkipFreeze != tc.wantSkip {
			t.Errorf("%v: SkipFreeze %v, want %v", tc.params, b.last.SkipFreeze, tc.wantSkip)
		}
		if err != nil && b.last.ID != "" {
			t.Errorf("%v: refused, yet the backend was asked for a snapshot", tc.params)
		}
	}
}
