// Package node is the CSI Node service: it stages (formats and mounts, or
// bind-mounts) local volumes, publishes them into pods, reports their usage
// and health, and grows their filesystems. The storage itself is reached
// only through backend.Local.
package node

import (
	"context"
	"fmt"
	"os"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/controller"
	"github.com/csi-thin/csi-thin/pkg/keylock"
	"github.com/csi-thin/csi-thin/pkg/rpcerr"
	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

// DefaultFsType is what a block-backed volume is formatted with when
// neither the StorageClass nor the volume says otherwise.
const DefaultFsType = "ext4"

// Server is the CSI Node service.
type Server struct {
	csi.UnimplementedNodeServer
	backend    backend.Local
	mounter    Mounter
	nodeID     string
	maxVolumes int64
	// locks serialise stage/unstage/expand per volume and publish/unpublish
	// per target path; there is deliberately no node-wide lock, so one hung
	// mount cannot block every other volume.
	locks *keylock.Locks
}

// Options tune the node service.
type Options struct {
	NodeID string
	// MaxVolumes is reported to the scheduler; 0 means no limit.
	MaxVolumes int64
	// Mounter replaces the host's mount table and filesystem tools
	// (tests); nil is NewMounter(nil, nil).
	Mounter Mounter
}

// New returns a node service over a local pool.
func New(b backend.Local, opts Options) *Server {
	m := opts.Mounter
	if m == nil {
		m = NewMounter(nil, nil)
	}
	id := opts.NodeID
	if id == "" {
		id = b.NodeName()
	}
	return &Server{backend: b, mounter: m, nodeID: id, maxVolumes: opts.MaxVolumes, locks: keylock.New()}
}

func (s *Server) lock(ctx context.Context, key string) (func(), error) {
	unlock, err := s.locks.Lock(ctx, key)
	if err != nil {
		return nil, status.Errorf(codes.Aborted, "operation on %s still in progress: %v", key, err)
	}
	return unlock, nil
}

// NodeGetInfo implements csi.NodeServer.
func (s *Server) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{
		NodeId:             s.nodeID,
		MaxVolumesPerNode:  s.maxVolumes,
		AccessibleTopology: &csi.Topology{Segments: map[string]string{wellknown.TopologyKey: s.backend.NodeName()}},
	}, nil
}

var nodeCaps = []csi.NodeServiceCapability_RPC_Type{
	csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
	csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
	csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
	csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
	csi.NodeServiceCapability_RPC_GET_STORAGE_HEALTH,
	volumeConditionCapability,
}

// NodeGetCapabilities implements csi.NodeServer.
func (s *Server) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	out := make([]*csi.NodeServiceCapability, 0, len(nodeCaps))
	for _, c := range nodeCaps {
		out = append(out, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: c}}})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: out}, nil
}

// NodeGetVolumeHealth implements csi.NodeServer: the backend's view plus
// whether the given paths are still mounted.
func (s *Server) NodeGetVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	vol, err := s.backend.GetVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, rpcerr.Status(err)
	}
	cond := vol.Condition
	for _, p := range []string{req.GetVolumePublishPath(), req.GetStagingTargetPath()} {
		if p == "" || cond.Abnormal {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			cond = backend.Condition{Abnormal: true, Reason: backend.ReasonMissing, Message: fmt.Sprintf("%s: %v", p, err)}
		}
	}
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: controller.VolumeHealth(vol.ID, cond)}, nil
}

// NodeGetStorageHealth implements csi.NodeServer: the pool's health.
func (s *Server) NodeGetStorageHealth(ctx context.Context, _ *csi.NodeGetStorageHealthRequest) (*csi.NodeGetStorageHealthResponse, error) {
	h := s.backend.Health(ctx)
	if h.Healthy {
		return &csi.NodeGetStorageHealthResponse{}, nil
	}
	return &csi.NodeGetStorageHealthResponse{BackendHealth: []*csi.NodeGetStorageHealthResponse_StorageBackendHealth{{
		Status: csi.StorageHealthErrorType_STORAGE_UNREACHABLE, Reason: "PoolUnhealthy", Message: h.Message,
	}}}, nil
}
