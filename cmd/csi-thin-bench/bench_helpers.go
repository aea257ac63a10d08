package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/datagen"
	"github.com/csi-thin/csi-thin/internal/csiclient"
	"github.com/csi-thin/csi-thin/pkg/command"
)

// source is a published volume holding dataBytes of random data in one
// file, the thing snapshots and clones are taken of.
type source struct {
	id        string
	sizeBytes int64
	dataBytes int64
	att       *csiclient.Attachment
}

func (s *source) file() string { return filepath.Join(s.att.TargetPath, "data.bin") }

// volumeSizeFor leaves room for filesystem overhead around the data (an
// ext4 on LVM spends a few percent on metadata and journal).
func volumeSizeFor(dataBytes int64) int64 {
	size := dataBytes + dataBytes/8 + 256<<20
	return (size + 1<<20 - 1) &^ (1<<20 - 1)
}

// newSource creates, publishes and fills a volume.
func (b *bench) newSource(ctx context.Context, dataBytes int64, seed uint64) (*source, error) {
	src := &source{sizeBytes: volumeSizeFor(dataBytes), dataBytes: dataBytes}
	name := b.name("source")
	v, err := b.s.client.CreateVolume(ctx, name, src.sizeBytes)
	if err != nil {
		return nil, err
	}
	src.id = v.GetVolumeId()
	// A clone asks for the source's real capacity, as a PVC sized from
	// the source PV would: backends round sizes up (LVM to its 4 MiB
	// extents) and lvmthin refuses a clone smaller than its source.
	src.sizeBytes = v.GetCapacityBytes()
	if src.att, err = b.s.attach(ctx, src.id, name, nil); err != nil {
		return nil, err
	}
	if dataBytes > 0 {
		start := time.Now()
		if _, err := datagen.WriteFile(ctx, src.file(), dataBytes, seed); err != nil {
			return nil, err
		}
		b.progress("wrote %s into the source in %s", humanBytes(dataBytes), time.Since(start).Round(100*time.Millisecond))
	}
	return src, nil
}

// drop unpublishes and deletes a volume made by newSource.
func (b *bench) drop(ctx context.Context, src *source) error {
	if err := src.att.Detach(ctx); err != nil {
		return err
	}
	return b.s.client.DeleteVolume(ctx, src.id)
}

// copyTree is what a copy-based driver does for a clone: a byte-for-byte
// copy of the files (no reflinks, holes kept), then a filesystem sync so
// the copy is as durable as a committed snapshot.
func copyTree(ctx context.Context, from, to string) error {
	run := &command.Host{Timeout: time.Hour}
	if _, err := run.Run(ctx, "cp", "-a", "--reflink=never", "--sparse=always", from+"/.", to+"/"); err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	return syncFS(to)
}

// syncFS flushes the filesystem holding path.
func syncFS(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", path, err)
	}
	return nil
}

// parallel runs fn(0..n-1) on conc workers and returns each call's
// latency, the wall time, and the number of failures with the first one.
func parallel(ctx context.Context, conc, n int, fn func(ctx context.Context, i int) error) ([]time.Duration, time.Duration, int, error) {
	lat := make([]time.Duration, n)
	errs := make([]error, n)
	next := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < max(1, conc); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				t := time.Now()
				errs[i] = fn(ctx, i)
				lat[i] = time.Since(t)
			}
		}()
	}
	for i := 0; i < n && ctx.Err() == nil; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	wall := time.Since(start)
	failed, first := 0, error(nil)
	for _, err := range errs {
		if err != nil {
			if first == nil {
				first = err
			}
			failed++
		}
	}
	if ctx.Err() != nil && first == nil {
		first = ctx.Err()
	}
	return lat, wall, failed, first
}
