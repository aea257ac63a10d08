package node

import (
	"context"
	"os"
	"path/filepath"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/rpcerr"
)

// NodePublishVolume implements csi.NodeServer: a bind mount of the staged
// filesystem (or of the device node, for raw block) into the pod's path.
func (s *Server) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	id, target, staging, vc := req.GetVolumeId(), req.GetTargetPath(), req.GetStagingTargetPath(), req.GetVolumeCapability()
	switch {
	case id == "":
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	case target == "":
		return nil, status.Error(codes.InvalidArgument, "target path is required")
	case vc == nil:
		return nil, status.Error(codes.InvalidArgument, "volume capability is required")
	case vc.GetBlock() == nil && vc.GetMount() == nil:
		return nil, status.Error(codes.InvalidArgument, "access type (mount or block) is required")
	case vc.GetMount() != nil && staging == "":
		return nil, status.Error(codes.FailedPrecondition, "staging target path is required: stage the volume first")
	}
	_, unlock, err := s.lockVolume(ctx, id, target, target, vc)
	if err != nil {
		return nil, err
	}
	defer unlock()
	// The target lock alone lets two publishes of one volume at two
	// targets run side by side: both would pass the single-writer check
	// before either mounted. Publishes of one volume therefore queue too.
	unlockVolume, err := s.lock(ctx, publishKey(id))
	if err != nil {
		return nil, err
	}
	defer unlockVolume()
	readOnly := req.GetReadonly() || vc.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
	opts := []string{"bind"}
	if readOnly {
		opts = append(opts, "ro")
	}

	mounted, err := s.mounter.IsMountPoint(target)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "check target %s: %v", target, err)
	}
	if mounted {
		// finishBind passes on only the per-mount flags it knows by name,
		// so the capability's flags need no allow-list check here.
		flags := vc.GetMount().GetMountFlags()
		if vc.GetMount() != nil {
			flags = tenantSafe(flags)
		}
		if err := s.finishBind(id, target, append(opts, flags...)); err != nil {
			return nil, err
		}
		return &csi.NodePublishVolumeResponse{}, nil
	}

	singleWriter := vc.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER
	if vc.GetBlock() != nil {
		err = s.publishBlock(ctx, id, target, singleWriter, opts)
	} else {
		err = s.publishFilesystem(id, staging, target, singleWriter, vc.GetMount().GetMountFlags(), opts)
	}
	if err != nil {
		return nil, err
	}
	klog.InfoS("volume published", "volumeID", id, "targetPath", target, "readOnly", readOnly)
	return &csi.NodePublishVolumeResponse{}, nil
}

// publishBlock bind-mounts the volume's device node onto a file at target.
func (s *Server) publishBlock(ctx context.Context, id, target string, singleWriter bool, opts []string) error {
	t, err := s.backend.Target(ctx, id)
	if err != nil {
		return rpcerr.Status(err)
	}
	if !t.IsDevice {
		return status.Errorf(codes.InvalidArgument, "volume %s is not a block device", id)
	}
	if singleWriter {
		if err := s.checkDeviceSingleWriter(id, t.Path, target); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		return status.Errorf(codes.Internal, "create target dir: %v", err)
	}
	f, err := os.OpenFile(target, os.O_CREATE, 0o640)
	if err != nil {
		return status.Errorf(codes.Internal, "create block target %s: %v", target, err)
	}
	f.Close()
	return s.bindMount(t.Path, target, opts)
}

// publishFilesystem bind-mounts the filesystem staged at staging onto the
// directory target, with the capability's per-mount flags.
func (s *Server) publishFilesystem(id, staging, target string, singleWriter bool, flags, opts []string) error {
	if err := checkPath(staging); err != nil {
		return err
	}
	staged, err := s.mounter.IsMountPoint(staging)
	if err != nil {
		return status.Errorf(codes.Internal, "check staging path %s: %v", staging, err)
	}
	if !staged {
		return status.Errorf(codes.FailedPrecondition, "volume %s is not staged at %s", id, staging)
	}
	if singleWriter {
		if err := s.checkSingleWriter(id, staging, target); err != nil {
			return err
		}
	}
	if err := checkMountFlags(flags); err != nil {
		return rpcerr.Status(err)
	}
	if err := os.MkdirAll(target, 0o750); err != nil {
		return status.Errorf(codes.Internal, "create target %s: %v", target, err)
	}
	return s.bindMount(staging, target, append(opts, withoutDiscardFlags(tenantSafe(flags))...))
}

// bindMount bind-mounts source at target; mount-utils applies the
// per-mount flags of opts by a second, remount step (see finishBind).
func (s *Server) bindMount(source, target string, opts []string) error {
	if err := s.mounter.Mount(source, target, "", opts); err != nil {
		return status.Errorf(codes.Internal, "bind-mount %s at %s: %v", source, target, err)
	}
	return nil
}

// publishKey is the lock key serialising the publishes of one volume; it
// differs from the volume ID (the stage lock) so that a publish does not
// wait for a stage or expand of the same volume, and from every target
// path, which are absolute.
func publishKey(id string) string { return "publish:" + id }

// checkSingleWriter refuses a second publish of a single-writer volume:
// source (the staging mount, or the device node for raw block) must not be
// mounted anywhere but target. The mount table is the record of where a
// volume is published, so the answer survives a restart of the driver.
func (s *Server) checkSingleWriter(id, source, target string) error {
	refs, err := s.mounter.MountRefs(source)
	if err != nil {
		return status.Errorf(codes.Internal, "find mounts of %s: %v", source, err)
	}
	for _, r := range refs {
		if r != target && r != source {
			return status.Errorf(codes.FailedPrecondition, "volume %s has single-writer access and is already published at %s", id, r)
		}
	}
	return nil
}

// checkDeviceSingleWriter is checkSingleWriter for raw block: a device
// node bind-mounted onto another file is a publish too. Such a mount shows
// in mountinfo as devtmpfs with the node's path below /dev as its root
// (mount-utils' GetMountRefs misses it where "/" is listed after /dev).
func (s *Server) checkDeviceSingleWriter(id, device, target string) error {
	real, err := filepath.EvalSymlinks(device)
	if err != nil {
		return status.Errorf(codes.Internal, "resolve %s: %v", device, err)
	}
	root, ok := strings.CutPrefix(real, "/dev")
	if !ok {
		return nil
	}
	mis, err := s.mounter.MountInfo()
	if err != nil {
		return status.Errorf(codes.Internal, "read mount table: %v", err)
	}
	for _, mi := range mis {
		if mi.FsType == "devtmpfs" && mi.Root == root && mi.MountPoint != target {
			return status.Errorf(codes.FailedPrecondition, "volume %s has single-writer access and is already published at %s", id, mi.MountPoint)
		}
	}
	return nil
}

// withoutDiscardFlags drops filesystem-level flags that a bind remount
// cannot take; they were applied at stage time.
func withoutDiscardFlags(flags []string) []string {
	var out []string
	for _, f := range flags {
		switch f {
		case "discard", "nodiscard", "nouuid":
			continue
		}
		out = append(out, f)
	}
	return out
}

// NodeUnpublishVolume implements csi.NodeServer; an absent target is success.
func (s *Server) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	if err := s.cleanup(ctx, req.GetVolumeId(), req.GetTargetPath(), req.GetTargetPath(), "target path"); err != nil {
		return nil, err
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// cleanup unmounts and removes path (a staging or target path) under the
// lock key; what names the path in errors. Absent or unmounted is success.
func (s *Server) cleanup(ctx context.Context, id, path, lockKey, what string) error {
	if id == "" {
		return status.Error(codes.InvalidArgument, "volume id is required")
	}
	if path == "" {
		return status.Errorf(codes.InvalidArgument, "%s is required", what)
	}
	if err := checkPath(path); err != nil {
		return err
	}
	unlock, err := s.lock(ctx, lockKey)
	if err != nil {
		return err
	}
	defer unlock()
	if err := s.mounter.Cleanup(path); err != nil {
		return status.Errorf(codes.Internal, "unmount %s: %v", path, err)
	}
	klog.V(2).InfoS("volume unmounted", "volumeID", id, "path", path)
	return nil
}
