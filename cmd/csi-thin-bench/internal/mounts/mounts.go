// Package mounts is the safety net of cleanup: whatever the driver did not
// unmount (a crashed run, a failed unstage) under the work directory is
// unmounted here, deepest first, before the directory is removed.
package mounts

import (
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"
)

// Under lists the mount points at or below dir, deepest first.
func Under(dir string) ([]string, error) {
	mps, err := mount.New("").List()
	if err != nil {
		return nil, fmt.Errorf("list mounts: %w", err)
	}
	dir = filepath.Clean(dir)
	var out []string
	for _, mp := range mps {
		if mp.Path == dir || strings.HasPrefix(mp.Path, dir+"/") {
			out = append(out, mp.Path)
		}
	}
	// Deepest first; a path mounted twice appears twice and is unmounted
	// twice, which is what stacked mounts need.
	sort.SliceStable(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out, nil
}

// UnmountUnder unmounts everything at or below dir. A busy mount is
// detached lazily rather than left behind.
func UnmountUnder(dir string) error {
	mps, err := Under(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range mps {
		err := unix.Unmount(p, 0)
		if errors.Is(err, unix.EBUSY) {
			err = unix.Unmount(p, unix.MNT_DETACH)
		}
		if err != nil && !errors.Is(err, unix.EINVAL) { // EINVAL: no longer mounted
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}
