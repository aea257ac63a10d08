package node

import (
	"context"
	"errors"
	"os"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/rpcerr"
)

// NodeGetVolumeStats implements csi.NodeServer.
func (s *Server) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	id, path := req.GetVolumeId(), req.GetVolumePath()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if path == "" {
		return nil, status.Error(codes.InvalidArgument, "volume path is required")
	}
	if _, err := s.backend.GetVolume(ctx, id); err != nil {
		return nil, rpcerr.Status(err)
	}
	if err := checkVolumePath(path); err != nil {
		return nil, err
	}
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, status.Errorf(codes.NotFound, "volume path %s does not exist", path)
	}
	if err != nil {
		return nil, status.Errorf(codes.Internal, "stat %s: %v", path, err)
	}
	if fi.Mode()&os.ModeDevice != 0 {
		size, err := deviceSize(path)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "%v", err)
		}
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: size}}}, nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return nil, status.Errorf(codes.Internal, "statfs %s: %v", path, err)
	}
	bytes := &csi.VolumeUsage{
		Unit:      csi.VolumeUsage_BYTES,
		Total:     int64(st.Blocks) * st.Bsize,
		Available: int64(st.Bavail) * st.Bsize,
		Used:      int64(st.Blocks-st.Bfree) * st.Bsize,
	}
	// A subvolume shares statfs with its whole pool; the backend knows
	// the volume's own limit and usage.
	if u, err := s.backend.Usage(ctx, id); err == nil {
		bytes.Total, bytes.Used, bytes.Available = u.CapacityBytes, u.UsedBytes, u.AvailableBytes
	} else if !errors.Is(err, backend.ErrUnsupported) {
		klog.V(2).InfoS("volume usage from backend failed, reporting filesystem figures", "volumeID", id, "err", err)
	}
	inodes := &csi.VolumeUsage{
		Unit:      csi.VolumeUsage_INODES,
		Total:     int64(st.Files),
		Available: int64(st.Ffree),
		Used:      int64(st.Files - st.Ffree),
	}
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{bytes, inodes}}, nil
}

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
		if _, err := s.resizer.Resize(target.Path, mountPath); err != nil {
			return nil, status.Errorf(codes.Internal, "grow filesystem of %s at %s: %v", id, mountPath, err)
		}
		klog.InfoS("filesystem expanded", "volumeID", id, "sizeBytes", vol.SizeBytes)
	}
	return &csi.NodeExpandVolumeResponse{CapacityBytes: vol.SizeBytes}, nil
}

// checkVolumePath refuses, without touching it, a volume path that is not
// absolute and clean: no volume can be there, so CSI's answer is NotFound.
func checkVolumePath(p string) error {
	if err := checkPath(p); err != nil {
		return status.Errorf(codes.NotFound, "volume path %.256q: %s", p, status.Convert(err).Message())
	}
	return nil
}
