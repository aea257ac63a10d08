package node

import (
	"context"
	"errors"
	"os"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/rpcerr"
)

// NodeExpandVolume implements csi.NodeServer: the backend has grown the
// device already (ControllerExpandVolume); here the filesystem follows.
func (s *Server) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	id, path := req.GetVolumeId(), req.GetVolumePath()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if path == "" {
		return nil, status.Error(codes.InvalidArgument, "volume path is required")
	}
	unlock, err := s.lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	vol, err := s.backend.GetVolume(ctx, id)
	if err != nil {
		return nil, rpcerr.Status(err)
	}
	for _, p := range []string{path, req.GetStagingTargetPath()} {
		if err := checkVolumePath(p); p != "" && err != nil {
			return nil, err
		}
	}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil, status.Errorf(codes.NotFound, "volume path %s does not exist", path)
	}
	if limit := req.GetCapacityRange().GetLimitBytes(); limit > 0 && vol.SizeBytes > limit {
		return nil, status.Errorf(codes.OutOfRange, "volume is %d bytes, above the limit %d", vol.SizeBytes, limit)
	}
	target, err := s.backend.Target(ctx, id)
	if err != nil {
		return nil, rpcerr.Status(err)
	}
	if target.IsDevice && vol.AccessType == backend.AccessMount && req.GetVolumeCapability().GetBlock() == nil {
		mountPath := req.GetStagingTargetPath()
		if mountPath == "" {
			mountPath = path
		}
		if err := s.mounter.Resize(target.Path, mountPath); err != nil {
			return nil, status.Errorf(codes.Internal, "grow filesystem of %s at %s: %v", id, mountPath, err)
		}
		klog.InfoS("filesystem expanded", "volumeID", id, "sizeBytes", vol.SizeBytes)
	}
	return &csi.NodeExpandVolumeResponse{CapacityBytes: vol.SizeBytes}, nil
}
