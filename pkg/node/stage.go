package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/rpcerr"
)

// NodeStageVolume implements csi.NodeServer. A block-device volume with
// mount access is formatted on first use and mounted at the staging path;
// a directory volume (btrfs subvolume) is bind-mounted there; raw block
// volumes need no staging.
func (s *Server) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	id, staging, vc := req.GetVolumeId(), req.GetStagingTargetPath(), req.GetVolumeCapability()
	switch {
	case id == "":
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	case staging == "":
		return nil, status.Error(codes.InvalidArgument, "staging target path is required")
	case vc == nil:
		return nil, status.Error(codes.InvalidArgument, "volume capability is required")
	case vc.GetBlock() == nil && vc.GetMount() == nil:
		return nil, status.Error(codes.InvalidArgument, "access type (mount or block) is required")
	}
	vol, unlock, err := s.lockVolume(ctx, id, staging, id, vc)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if vc.GetBlock() != nil {
		return &csi.NodeStageVolumeResponse{}, nil
	}
	flags := vc.GetMount().GetMountFlags()
	if err := checkMountFlags(flags); err != nil {
		return nil, rpcerr.Status(err)
	}
	flags = tenantSafe(flags)
	target, err := s.backend.Target(ctx, id)
	if err != nil {
		return nil, rpcerr.Status(err)
	}
	mounted, err := s.mounter.IsMountPoint(staging)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "check staging path %s: %v", staging, err)
	}
	if mounted {
		if !target.IsDevice {
			if err := s.finishBind(id, staging, flags); err != nil {
				return nil, err
			}
		}
		return &csi.NodeStageVolumeResponse{}, nil
	}
	if err := os.MkdirAll(staging, 0o750); err != nil {
		return nil, status.Errorf(codes.Internal, "create staging path: %v", err)
	}
	if !target.IsDevice {
		opts := append([]string{"bind"}, flags...)
		if err := s.mounter.Mount(target.Path, staging, "", opts); err != nil {
			return nil, status.Errorf(codes.Internal, "bind-mount volume %s at %s: %v", id, staging, err)
		}
		klog.InfoS("volume staged", "volumeID", id, "stagingPath", staging)
		return &csi.NodeStageVolumeResponse{}, nil
	}
	fsType := vc.GetMount().GetFsType()
	if fsType == "" {
		fsType = vol.FsType
	}
	if fsType == "" {
		fsType = DefaultFsType
	}
	opts := stageOptions(fsType, flags)
	if err := s.mounter.FormatAndMount(target.Path, staging, fsType, opts, formatOptions(fsType)); err != nil {
		return nil, status.Errorf(codes.Internal, "format and mount volume %s (%s) at %s: %v", id, fsType, staging, err)
	}
	klog.InfoS("volume staged", "volumeID", id, "stagingPath", staging, "fsType", fsType, "options", opts)
	return &csi.NodeStageVolumeResponse{}, nil
}

// lockVolume checks path, takes the lock for key, and returns the volume
// once it is known to exist with an access type matching vc.
func (s *Server) lockVolume(ctx context.Context, id, path, key string, vc *csi.VolumeCapability) (*backend.Volume, func(), error) {
	if err := checkPath(path); err != nil {
		return nil, nil, err
	}
	unlock, err := s.lock(ctx, key)
	if err != nil {
		return nil, nil, err
	}
	vol, err := s.backend.GetVolume(ctx, id)
	if err == nil {
		err = checkAccess(vol, vc)
	}
	if err != nil {
		unlock()
		return nil, nil, rpcerr.Status(err)
	}
	return vol, unlock, nil
}

// checkAccess refuses to stage or publish a volume with an access type it
// was not created for: a raw block volume mounted as a filesystem would be
// formatted, destroying whatever the pod wrote to it.
func checkAccess(vol *backend.Volume, vc *csi.VolumeCapability) error {
	want := backend.AccessMount
	if vc.GetBlock() != nil {
		want = backend.AccessBlock
	}
	if vol.AccessType != "" && vol.AccessType != want {
		return status.Errorf(codes.InvalidArgument, "volume %s was created for %s access, not %s", vol.ID, vol.AccessType, want)
	}
	return nil
}

// NodeUnstageVolume implements csi.NodeServer.
func (s *Server) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	if err := s.cleanup(ctx, req.GetVolumeId(), req.GetStagingTargetPath(), req.GetVolumeId(), "staging target path"); err != nil {
		return nil, err
	}
	return &csi.NodeUnstageVolumeResponse{}, nil
}

// maxPathBytes is the kernel's PATH_MAX less the terminating NUL.
const maxPathBytes = 4095

// checkPath insists on clean absolute paths the kernel can take: the CO
// hands them to us, and they go to mount(8), stat and os.Remove.
func checkPath(p string) error {
	if len(p) > maxPathBytes {
		return status.Errorf(codes.InvalidArgument, "path of %d bytes is longer than PATH_MAX", len(p))
	}
	if !filepath.IsAbs(p) || filepath.Clean(p) != p && filepath.Clean(p)+"/" != p || strings.ContainsRune(p, 0) {
		return status.Errorf(codes.InvalidArgument, "path %q must be absolute and clean", p)
	}
	return nil
}

// checkVolumePath refuses, without touching it, a volume path that is not
// absolute and clean: no volume can be there, so CSI's answer is NotFound.
func checkVolumePath(p string) error {
	if err := checkPath(p); err != nil {
		return status.Errorf(codes.NotFound, "volume path %.256q: %s", p, status.Convert(err).Message())
	}
	return nil
}

// deviceSize returns the size of a block device.
func deviceSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n, err := f.Seek(0, 2)
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", path, err)
	}
	return n, nil
}
