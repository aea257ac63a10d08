package node

import (
	"context"
	"errors"
	"fmt"
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
	if err := checkVolumePath(path); err != nil {
		return nil, err
	}
	cond, err := s.statsCondition(ctx, id, path)
	if err != nil {
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
		return withVolumeCondition(&csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: size}}}, cond), nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		if cond.Abnormal {
			// The condition is the answer the kubelet needs; a mount
			// that cannot be statted is part of the same trouble.
			klog.InfoS("statfs of an abnormal volume failed, reporting its condition only", "volumeID", id, "path", path, "err", err)
			return withVolumeCondition(&csi.NodeGetVolumeStatsResponse{}, cond), nil
		}
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
	return withVolumeCondition(&csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{bytes, inodes}}, cond), nil
}

// statsCondition is the volume's condition for the kubelet, which turns an
// abnormal one into a Warning event on the pods using the volume: the
// backend's view of the volume and its pool. A volume the backend no longer
// knows but whose path is still mounted here is reported as missing rather
// than NotFound, because an error carries no condition to the kubelet.
func (s *Server) statsCondition(ctx context.Context, id, path string) (backend.Condition, error) {
	vol, err := s.backend.GetVolume(ctx, id)
	if errors.Is(err, backend.ErrNotFound) && backend.IsVolumeID(id) {
		if mounted, merr := s.mounter.IsMountPoint(path); merr == nil && mounted {
			return backend.Condition{Abnormal: true, Reason: backend.ReasonMissing,
				Message: fmt.Sprintf("volume is mounted at %s but the pool no longer has it", path)}, nil
		}
	}
	if err != nil {
		return backend.Condition{}, rpcerr.Status(err)
	}
	if vol.Condition.Abnormal {
		klog.V(2).InfoS("volume condition abnormal", "volumeID", id, "reason", vol.Condition.Reason, "message", vol.Condition.Message)
	}
	return vol.Condition, nil
}
