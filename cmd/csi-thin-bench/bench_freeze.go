package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/datagen"
	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/results"
	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/stats"
	"github.com/csi-thin/csi-thin/pkg/freeze"
)

// freezePhase is measurement 8: how long pkg/freeze holds a filesystem
// frozen (FIFREEZE to FITHAW, as its histogram csi_thin_snapshot_frozen_seconds
// counts it) under three loads, 50 ms apart, with an empty snapshot step, so the
// figure is the cost of freezing itself: what --snapshot-freeze adds to
// a snapshot's own time while tenants' writes wait. The filesystem is
// ext4 on a loop device made for the phase: neither backend's snapshot
// can run frozen here (btrfs volumes are never frozen; LVM's lvcreate
// fails busy on a frozen origin on the VM's kernel 6.1,
// docs/consistency.md).
func (b *bench) freezePhase(ctx context.Context) error {
	dir := filepath.Join(b.s.dir, "freeze")
	mnt, release, err := loopExt4(ctx, dir, 256<<20)
	if err != nil {
		return err
	}
	defer release()
	var windows []time.Duration
	f, err := freeze.New(filepath.Join(dir, "markers"), 0, func(d time.Duration) { windows = append(windows, d) })
	if err != nil {
		return err
	}
	n, dirty := b.cfg.freezeRuns, b.cfg.freezeDirtyBytes
	loads := []struct {
		name   string
		writer bool
		before func(i int) error
	}{
		{name: "idle"},
		{name: "a writer appending 4 KiB + fdatasync in a loop", writer: true},
		{name: humanBytes(dirty) + " written (not synced) just before each freeze", before: func(i int) error {
			return writeDirty(ctx, filepath.Join(mnt, fmt.Sprintf("dirty-%d", i%2)), dirty, uint64(i))
		}},
	}
	for _, l := range loads {
		b.progress("freeze: %d freezes, %s", n, l.name)
		windows = windows[:0]
		var stop func() (stats.Summary, error)
		if l.writer {
			stop = startSyncWriter(filepath.Join(mnt, "wal"))
		}
		for i := 0; i < n; i++ {
			if l.before != nil {
				if err := l.before(i); err != nil {
					return err
				}
			}
			if err := f.Frozen(ctx, fmt.Sprintf("bench-%d", i), []string{mnt}, func(context.Context) error { return nil }); err != nil {
				return fmt.Errorf("freeze %d (%s): %w", i, l.name, err)
			}
			// Snapshots are rare: the writer runs between two freezes.
			time.Sleep(freezeGap)
		}
		fr := results.Freeze{Load: l.name, Filesystem: "ext4 (256 MiB) on a loop device over a file in the work dir", Window: stats.Summarize(windows)}
		if stop != nil {
			ops, err := stop()
			if err != nil {
				return fmt.Errorf("writer: %w", err)
			}
			fr.WriterOps = &ops
		}
		b.run.Freeze = append(b.run.Freeze, fr)
	}
	return nil
}

// writeDirty leaves size bytes of new data in the page cache, unsynced:
// the next freeze has to write them out.
func writeDirty(ctx context.Context, path string, size int64, seed uint64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := datagen.Write(ctx, f, size, seed); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

// freezeGap separates two freezes of the phase.
const freezeGap = 50 * time.Millisecond

// startSyncWriter appends 4 KiB and fdatasyncs in a loop until stopped,
// like a database's log; stop returns the latency of each append+sync.
func startSyncWriter(path string) (stop func() (stats.Summary, error)) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	var ops []time.Duration
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		fh, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			werr = err
			return
		}
		defer fh.Close()
		buf := make([]byte, 4096)
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			if i%4096 == 0 { // keep the file at 16 MiB at most
				if _, err := fh.Seek(0, 0); err != nil {
					werr = err
					return
				}
			}
			start := time.Now()
			if _, err := fh.Write(buf); err != nil {
				werr = err
				return
			}
			if err := unix.Fdatasync(int(fh.Fd())); err != nil {
				werr = err
				return
			}
			ops = append(ops, time.Since(start))
		}
	}()
	return func() (stats.Summary, error) {
		close(done)
		wg.Wait()
		return stats.Summarize(ops), werr
	}
}

// loopExt4 makes a sparse file of size bytes in dir, attaches it to a loop
// device, formats it ext4 and mounts it; release undoes all of it.
func loopExt4(ctx context.Context, dir string, size int64) (mnt string, release func(), err error) {
	run := func(name string, args ...string) (string, error) {
		out, err := osexec.CommandContext(ctx, name, args...).Output()
		if ee := (*osexec.ExitError)(nil); errors.As(err, &ee) {
			err = fmt.Errorf("%s: %w: %s", name, err, ee.Stderr)
		}
		return strings.TrimSpace(string(out)), err
	}
	var undo []func()
	release = func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	defer func() {
		if err != nil {
			release()
		}
	}()
	mnt = filepath.Join(dir, "mnt")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return "", nil, err
	}
	undo = append(undo, func() { os.RemoveAll(dir) })
	img := filepath.Join(dir, "ext4.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		return "", nil, err
	}
	if err := os.Truncate(img, size); err != nil {
		return "", nil, err
	}
	dev, err := run("losetup", "--find", "--show", img)
	if err != nil {
		return "", nil, fmt.Errorf("loop device for the freeze phase: %w", err)
	}
	undo = append(undo, func() { _, _ = run("losetup", "-d", dev) })
	if _, err := run("mkfs.ext4", "-q", "-F", dev); err != nil {
		return "", nil, err
	}
	if err := unix.Mount(dev, mnt, "ext4", 0, ""); err != nil {
		return "", nil, fmt.Errorf("mount %s: %w", dev, err)
	}
	undo = append(undo, func() {
		if err := unix.Unmount(mnt, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			fmt.Fprintf(os.Stderr, "freeze phase: umount %s: %v\n", mnt, err)
		}
	})
	return mnt, release, nil
}
