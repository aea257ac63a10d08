// Package trim returns the space that filesystems freed to the thin pool
// under them, on an interval, for filesystems that do not discard online:
// a btrfs pool mounted without discard, or an ext4/xfs volume on LVM thin
// staged with the StorageClass mount option nodiscard. It issues FITRIM
// (what fstrim(8) does) itself, one filesystem at a time per node.
package trim

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
)

// ioctlFITRIM is _IOWR('X', 121, struct fstrim_range) of linux/fs.h;
// golang.org/x/sys/unix does not define it.
const ioctlFITRIM = 0xC0185879

// fstrimRange is struct fstrim_range: the kernel reads start, len and
// minlen, and writes back in len how many bytes it discarded.
type fstrimRange struct {
	start, len, minLen uint64
}

// FITRIM trims all free space of the filesystem mounted at path and
// returns the bytes the filesystem discarded.
func FITRIM(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	r := fstrimRange{len: math.MaxUint64}
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), ioctlFITRIM, uintptr(unsafe.Pointer(&r)))
		switch errno {
		case 0:
			return r.len, nil
		case unix.EINTR:
			continue
		case unix.EOPNOTSUPP, unix.ENOTTY:
			return 0, fmt.Errorf("FITRIM %s: %w (%w)", path, ErrUnsupported, errno)
		default:
			return 0, fmt.Errorf("FITRIM %s: %w", path, errno)
		}
	}
}

// ErrUnsupported: the filesystem or its device cannot discard.
var ErrUnsupported = errors.New("the filesystem or its device does not support discard")

// Target is one filesystem to trim.
type Target struct {
	// VolumeID is the volume whose filesystem this is; empty for a whole
	// pool filesystem (btrfs), which holds every volume of the node.
	VolumeID string
	// Path is a mount point of the filesystem; the trim opens it.
	Path string
}

// Result is the outcome of one target's trim.
type Result struct {
	Target
	// Bytes is what the filesystem discarded: free space it had not
	// discarded before (ext4 remembers trimmed groups until the next
	// mount; btrfs discards all its free space each time). The pool gets
	// back those bytes of it that it had mapped.
	Bytes    uint64
	Duration time.Duration
	// Skipped: the volume was being staged, unstaged, expanded or
	// unpublished, so it was left for the next round.
	Skipped bool
	Err     error
}

// Trimmer trims, every Interval (plus up to a tenth of it, at random, so
// that nodes started together do not all trim at once), each filesystem
// Find lists, one after the other.
type Trimmer struct {
	Interval time.Duration
	// Find lists the filesystems of a round (Pool, BlockVolumes).
	Find func(ctx context.Context) ([]Target, error)
	// Lock takes a volume's locks without waiting, so that no unstage or
	// unpublish unmounts the path while the trim holds it open; ok false
	// means busy. Nil locks nothing.
	Lock func(volumeID, path string) (unlock func(), ok bool)
	// Report receives each result after the log line and the metrics
	// (cluster mode: an Event). May be nil.
	Report func(ctx context.Context, r Result)

	// Seams for tests.
	Clock  clock.Clock
	Trim   func(path string) (uint64, error)
	Jitter func() float64 // in [0, 1)
}

// Run trims every interval until ctx ends.
func (t *Trimmer) Run(ctx context.Context) error {
	if t.Interval <= 0 {
		return nil
	}
	clk := t.Clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	jitter := t.Jitter
	if jitter == nil {
		jitter = rand.Float64
	}
	klog.InfoS("scheduled trim on", "interval", t.Interval)
	for {
		wait := t.Interval + time.Duration(jitter()*float64(t.Interval)/10)
		timer := clk.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C():
		}
		if _, err := t.RunOnce(ctx); err != nil {
			klog.ErrorS(err, "scheduled trim: cannot list the filesystems")
		}
	}
}

// RunOnce trims each filesystem Find lists, in turn, and returns the
// results; an error is Find's.
func (t *Trimmer) RunOnce(ctx context.Context) ([]Result, error) {
	targets, err := t.Find(ctx)
	if err != nil {
		return nil, err
	}
	trim := t.Trim
	if trim == nil {
		trim = FITRIM
	}
	clk := t.Clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	results := make([]Result, 0, len(targets))
	for _, tg := range targets {
		if ctx.Err() != nil {
			break
		}
		r := Result{Target: tg}
		unlock := func() {}
		if t.Lock != nil && tg.VolumeID != "" {
			var ok bool
			if unlock, ok = t.Lock(tg.VolumeID, tg.Path); !ok {
				r.Skipped = true
			}
		}
		if !r.Skipped {
			start := clk.Now()
			r.Bytes, r.Err = trim(tg.Path)
			r.Duration = clk.Since(start)
			unlock()
		}
		record(r)
		if t.Report != nil {
			t.Report(ctx, r)
		}
		results = append(results, r)
	}
	return results, nil
}

// record logs a result and counts it in the metrics.
func record(r Result) {
	kv := []any{"pool", r.Path}
	if r.VolumeID != "" {
		kv = []any{"volumeID", r.VolumeID, "path", r.Path}
	}
	switch {
	case r.Skipped:
		trims.WithLabelValues(kind(r.Target), "skipped").Inc()
		klog.V(2).InfoS("trim skipped: the volume is busy, next round", kv...)
	case r.Err != nil:
		trims.WithLabelValues(kind(r.Target), "failed").Inc()
		klog.ErrorS(r.Err, "trim failed", kv...)
	default:
		trims.WithLabelValues(kind(r.Target), "trimmed").Inc()
		trimmedBytes.WithLabelValues(kind(r.Target)).Add(float64(r.Bytes))
		klog.InfoS("filesystem trimmed", append(kv, "bytes", r.Bytes, "duration", r.Duration)...)
	}
}

func kind(t Target) string {
	if t.VolumeID == "" {
		return "pool"
	}
	return "volume"
}
