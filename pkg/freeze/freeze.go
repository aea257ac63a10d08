// Package freeze holds a mounted filesystem still (FIFREEZE) for the
// moment a block-level snapshot of its device is taken, and makes sure it
// is thawed again: when the snapshot returns, when it errs, when it takes
// longer than the timeout, and, through a marker file written before the
// freeze, after the process was killed while the filesystem was frozen.
package freeze

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// The ioctls of linux/fs.h: _IOWR('X', 119, int) and _IOWR('X', 120, int).
// golang.org/x/sys/unix does not define them.
const (
	ioctlFIFREEZE = 0xC0045877
	ioctlFITHAW   = 0xC0045878
)

// DefaultTimeout is the longest a filesystem stays frozen: well under the
// kernel's hung-task warning (120 s) and the sidecars' 10 s RPC timeout, so
// a stuck snapshot cannot stall a tenant's writers for long.
const DefaultTimeout = 5 * time.Second

// Freezer freezes filesystems, one marker file per freeze in its state
// directory.
type Freezer struct {
	dir     string
	timeout time.Duration
	// observe receives each frozen window (freeze to thaw).
	observe func(time.Duration)
	// freeze is FIFREEZE (replaced in tests to make one slow).
	freeze func(path string) error
}

// New returns a Freezer keeping its markers in stateDir (created 0700).
// timeout 0 means DefaultTimeout; observe may be nil.
func New(stateDir string, timeout time.Duration, observe func(time.Duration)) (*Freezer, error) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("freeze state dir: %w", err)
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	if observe == nil {
		observe = func(time.Duration) {}
	}
	return &Freezer{dir: stateDir, timeout: timeout, observe: observe, freeze: freeze}, nil
}

// marker is what a freeze leaves on disk until the thaw.
type marker struct {
	Paths []string `json:"paths"`
}

func (f *Freezer) markerPath(id string) string { return filepath.Join(f.dir, id+".frozen") }

// Recover thaws every filesystem a marker names: a process killed while
// frozen left them. It returns the paths thawed. Run it at start-up,
// before anything else touches the volumes.
func (f *Freezer) Recover() ([]string, error) {
	markers, err := filepath.Glob(filepath.Join(f.dir, "*.frozen"))
	if err != nil {
		return nil, err
	}
	var thawed []string
	var errs []error
	for _, m := range markers {
		b, err := os.ReadFile(m)
		var mk marker
		if err == nil {
			err = json.Unmarshal(b, &mk)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("marker %s: %w", m, err))
			continue
		}
		ok := true
		for _, p := range mk.Paths {
			was, err := thaw(p)
			if err != nil {
				errs = append(errs, err)
				ok = false
				continue
			}
			if was {
				thawed = append(thawed, p)
				klog.InfoS("thawed a filesystem left frozen by a previous run", "path", p, "marker", m)
			}
		}
		if ok {
			if err := os.Remove(m); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return thawed, errors.Join(errs...)
}

// Frozen runs snapshot with the filesystems mounted at paths (one path per
// filesystem) frozen. They are thawed when snapshot returns or, if it runs
// longer, after the Freezer's timeout, whichever is first; snapshot's
// result is returned either way (a snapshot finished after the thaw is
// crash-consistent, as without freezing). id names the marker.
func (f *Freezer) Frozen(ctx context.Context, id string, paths []string, snapshot func(context.Context) error) error {
	_, err := f.FrozenHeld(ctx, id, paths, snapshot)
	return err
}

// FrozenHeld is Frozen, and also reports whether the filesystems stayed
// frozen until snapshot returned (false when the timeout thawed them
// first, or when nothing was frozen).
func (f *Freezer) FrozenHeld(ctx context.Context, id string, paths []string, snapshot func(context.Context) error) (held bool, _ error) {
	if len(paths) == 0 {
		return false, snapshot(ctx)
	}
	if err := f.writeMarker(id, paths); err != nil {
		return false, err
	}
	start := time.Now()
	var (
		// mu orders the freezes and the thaw: the watchdog waits for a
		// FIFREEZE in progress (it cannot be cut short), and nothing is
		// frozen after the thaw.
		mu      sync.Mutex
		frozen  []string
		thawed  bool
		thawErr error
	)
	thawAll := func() {
		mu.Lock()
		defer mu.Unlock()
		if thawed {
			return
		}
		thawed = true
		var errs []error
		for _, p := range frozen {
			if _, err := thaw(p); err != nil {
				errs = append(errs, err)
			}
		}
		f.observe(time.Since(start))
		if thawErr = errors.Join(errs...); thawErr == nil {
			if err := os.Remove(f.markerPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
				klog.ErrorS(err, "remove freeze marker", "snapshotID", id)
			}
		}
	}
	// The timeout runs from the first freeze: freezing a filesystem
	// writes its dirty data first, and those frozen before it wait
	// through that too.
	watchdog := time.AfterFunc(f.timeout, func() {
		klog.InfoS("snapshot still running at the freeze timeout; thawing", "snapshotID", id, "timeout", f.timeout, "paths", paths)
		thawAll()
	})
	for _, p := range paths {
		mu.Lock()
		if thawed {
			mu.Unlock()
			break // the timeout came first: the snapshot runs unfrozen
		}
		err := f.freeze(p)
		if err == nil {
			frozen = append(frozen, p)
		}
		mu.Unlock()
		if err != nil {
			watchdog.Stop()
			thawAll()
			return false, errors.Join(err, thawErr)
		}
	}
	err := snapshot(ctx)
	held = watchdog.Stop() // false: the watchdog has thawed already
	thawAll()
	if thawErr != nil {
		return held, errors.Join(err, fmt.Errorf("thaw after snapshot %s (the marker stays; a restart retries): %w", id, thawErr))
	}
	return held, err
}

// writeMarker records paths durably before anything is frozen.
func (f *Freezer) writeMarker(id string, paths []string) error {
	b, err := json.Marshal(marker{Paths: paths})
	if err != nil {
		return err
	}
	tmp := f.markerPath(id) + ".tmp"
	fh, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("freeze marker: %w", err)
	}
	_, err = fh.Write(b)
	if err == nil {
		err = fh.Sync()
	}
	if cerr := fh.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, f.markerPath(id))
	}
	if err == nil {
		err = syncDir(f.dir)
	}
	if err != nil {
		return fmt.Errorf("freeze marker %s: %w", id, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// fsIoctl opens path (a directory or file on the filesystem) and issues op.
func fsIoctl(path string, op uint) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.IoctlSetInt(fd, op, 0)
}

func freeze(path string) error {
	err := fsIoctl(path, ioctlFIFREEZE)
	if errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("freeze filesystem at %s: already frozen (another snapshot of the volume, or an operator): %w", path, backend.ErrBusy)
	}
	if err != nil {
		return fmt.Errorf("freeze filesystem at %s: %w", path, err)
	}
	return nil
}

// thaw thaws the filesystem at path; it reports false when there was
// nothing to thaw (not frozen: EINVAL; or the mount is gone).
func thaw(path string) (bool, error) {
	err := fsIoctl(path, ioctlFITHAW)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
		return false, nil
	}
	return false, fmt.Errorf("thaw filesystem at %s: %w", path, err)
}
