package node

import (
	"path/filepath"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// perMountFlags are the options a bind mount carries per mount point.
// mount-utils makes a bind mount in two mount(8) calls, the bind and then
// "bind,remount,<options>", so a crash between them leaves a mount that
// exists without them: a retry that only asked "is it mounted?" would
// report success for a read-write publish of a read-only volume, or a
// staging mount without the StorageClass's nosuid/noexec.
var perMountFlags = map[string]bool{"ro": true, "nosuid": true, "nodev": true, "noexec": true, "noatime": true, "nodiratime": true}

// finishBind completes the bind mount at target when it lacks a
// per-mount flag of opts, by running the remount step that was cut off.
// It only adds what was asked for and never unmounts, so a pod already
// using the mount keeps it.
func (s *Server) finishBind(id, target string, opts []string) error {
	mps, err := s.mounter.MountPoints()
	if err != nil {
		return status.Errorf(codes.Internal, "read mount table for %s: %v", target, err)
	}
	path := target
	if real, err := filepath.EvalSymlinks(target); err == nil {
		path = real // the mount table names the resolved path
	}
	var have []string
	found := false
	for _, mp := range mps {
		if mp.Path == path {
			have, found = mp.Opts, true // the last entry is the mount on top
		}
	}
	if !found {
		return nil
	}
	has := map[string]bool{}
	for _, o := range have {
		has[o] = true
	}
	remount := []string{"bind", "remount"}
	for _, o := range have {
		if perMountFlags[o] {
			remount = append(remount, o) // keep what the mount has
		}
	}
	var missing []string
	for _, o := range opts {
		if perMountFlags[o] && !has[o] {
			missing = append(missing, o)
			has[o] = true
		}
	}
	if len(missing) == 0 {
		return nil
	}
	klog.InfoS("completing a bind mount that was interrupted before its options were applied", "volumeID", id, "path", target, "missing", missing)
	remount = append(remount, missing...)
	if err := s.mounter.Remount(target, remount); err != nil {
		return status.Errorf(codes.Internal, "remount %s with %v: %v", target, missing, err)
	}
	return nil
}
