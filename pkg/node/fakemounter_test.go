package node

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"sync"

	mount "k8s.io/mount-utils"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/backend/fake"
)

// fakeMounter is a mount table in memory: the node RPCs run against it
// without root. It records each change as one line ("mount SOURCE TARGET
// OPTS", "format-and-mount DEVICE TARGET FSTYPE OPTS FORMATOPTS",
// "remount TARGET OPTS", "cleanup PATH", "resize DEVICE PATH"), the
// lines a table test compares.
type fakeMounter struct {
	mu      sync.Mutex
	mounts  map[string]fakeMount // by mount point
	calls   []string
	failing error // returned by every Mount and FormatAndMount
}

type fakeMount struct {
	source string
	opts   []string
}

var _ Mounter = (*fakeMounter)(nil)

func newFakeMounter() *fakeMounter { return &fakeMounter{mounts: map[string]fakeMount{}} }

// mounted puts a mount into the table without recording a call: the state
// a test starts from.
func (f *fakeMounter) mounted(source, target string, opts ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mounts[target] = fakeMount{source: source, opts: opts}
}

func (f *fakeMounter) record(words ...string) {
	f.calls = append(f.calls, strings.Join(words, " "))
}

func (f *fakeMounter) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeMounter) Mount(source, target, fsType string, opts []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("mount", source, target, strings.Join(opts, ","))
	if f.failing != nil {
		return f.failing
	}
	f.mounts[target] = fakeMount{source: source, opts: slices.Clone(opts)}
	return nil
}

func (f *fakeMounter) FormatAndMount(device, target, fsType string, opts, formatOpts []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("format-and-mount", device, target, fsType, strings.Join(opts, ","), strings.Join(formatOpts, ","))
	if f.failing != nil {
		return f.failing
	}
	f.mounts[target] = fakeMount{source: device, opts: slices.Clone(opts)}
	return nil
}

func (f *fakeMounter) IsMountPoint(path string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.mounts[path]
	return ok, nil
}

// MountRefs lists the mount points sharing path's source, as mount-utils
// does for a bind-mounted filesystem.
func (f *fakeMounter) MountRefs(path string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var refs []string
	for target, m := range f.mounts {
		if target != path && (m.source == path || m.source == f.mounts[path].source) {
			refs = append(refs, target)
		}
	}
	return refs, nil
}

func (f *fakeMounter) MountPoints() ([]mount.MountPoint, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []mount.MountPoint
	for target, m := range f.mounts {
		out = append(out, mount.MountPoint{Device: m.source, Path: target, Opts: slices.Clone(m.opts)})
	}
	return out, nil
}

// MountInfo shows a device node bind-mounted onto a file the way the
// kernel does: devtmpfs, rooted at the node's path below /dev.
func (f *fakeMounter) MountInfo() ([]mount.MountInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []mount.MountInfo
	for target, m := range f.mounts {
		if root, ok := strings.CutPrefix(m.source, "/dev"); ok {
			out = append(out, mount.MountInfo{FsType: "devtmpfs", Root: root, MountPoint: target})
		}
	}
	return out, nil
}

func (f *fakeMounter) Remount(target string, opts []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("remount", target, strings.Join(opts, ","))
	m := f.mounts[target]
	for _, o := range opts {
		if o != "bind" && o != "remount" && !slices.Contains(m.opts, o) {
			m.opts = append(m.opts, o)
		}
	}
	f.mounts[target] = m
	return nil
}

// Cleanup unmounts and removes path, as mount.CleanupMountPoint does.
func (f *fakeMounter) Cleanup(path string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("cleanup", path)
	delete(f.mounts, path)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func (f *fakeMounter) Resize(device, mountPath string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("resize", device, mountPath)
	return nil
}

// devicePool is the fake backend with block-device targets, as on LVM
// thin: each volume is a device node. The nodes are real (/dev/null,
// /dev/zero) because the single-writer check resolves them.
type devicePool struct {
	*fake.Backend
	devices map[string]string // volume ID → device node
}

func (p *devicePool) Target(ctx context.Context, id string) (backend.Target, error) {
	if _, err := p.GetVolume(ctx, id); err != nil {
		return backend.Target{}, err
	}
	return backend.Target{Path: p.devices[id], IsDevice: true}, nil
}
