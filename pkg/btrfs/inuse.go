package btrfs

import (
	"path"
	"path/filepath"
	"strings"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// checkNotMounted refuses to delete a subvolume that is mounted: the node
// stages a volume by bind-mounting its subvolume and publishes by
// bind-mounting that again, and each such mount shows in the mount table
// with the pool filesystem's device number and the subvolume's path as
// its root. A mount of a directory or nested subvolume under it counts
// too. Deleting under a live mount would leave the pod writing into a
// subvolume that is being destroyed.
func (p *Pool) checkNotMounted(id, subvolume string) error {
	mounts, err := backend.ReadMounts()
	if err != nil {
		return err
	}
	var users []string
	for _, m := range mountsOfSubvolume(mounts, subvolume) {
		users = append(users, m.MountPoint)
	}
	if len(users) > 0 {
		return &backend.MountedError{Volume: id, Node: p.cfg.NodeName, MountPoints: users}
	}
	return nil
}

// mountsOfSubvolume returns the mounts of the directory at dir, or of
// anything below it, on the filesystem that holds dir.
func mountsOfSubvolume(mounts []backend.Mount, dir string) []backend.Mount {
	if real, err := filepath.EvalSymlinks(filepath.Dir(dir)); err == nil {
		dir = filepath.Join(real, filepath.Base(dir))
	}
	holder := containingMount(mounts, dir)
	if holder == nil {
		return nil
	}
	rel, err := filepath.Rel(holder.MountPoint, dir)
	if err != nil {
		return nil
	}
	root := path.Join(holder.Root, rel)
	var out []backend.Mount
	for _, m := range mounts {
		if m.Major == holder.Major && m.Minor == holder.Minor && (m.Root == root || strings.HasPrefix(m.Root, root+"/")) {
			out = append(out, m)
		}
	}
	return out
}

// containingMount is the mount that dir lives on: the one with the
// longest mount point above dir, the last listed (the top of a stack).
func containingMount(mounts []backend.Mount, dir string) *backend.Mount {
	var best *backend.Mount
	for i := range mounts {
		mp := mounts[i].MountPoint
		if dir != mp && !strings.HasPrefix(dir, strings.TrimSuffix(mp, "/")+"/") {
			continue
		}
		if best == nil || len(mp) >= len(best.MountPoint) {
			best = &mounts[i]
		}
	}
	return best
}
