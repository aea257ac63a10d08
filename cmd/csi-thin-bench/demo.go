package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/datagen"
	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/pools"
	"github.com/csi-thin/csi-thin/internal/csiclient"
	"github.com/csi-thin/csi-thin/pkg/command"
)

type demoFlags struct {
	driver, workDir, dataSize, poolSize string
}

func parseDemoFlags(args []string) (*demoFlags, error) {
	f := &demoFlags{}
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	klog.InitFlags(fs)
	fs.StringVar(&f.driver, "driver", "bin/csi-thin", "the csi-thin binary to run")
	fs.StringVar(&f.workDir, "work-dir", "/var/tmp", "parent of the demo's temporary dir (pool file, mounts); must not be tmpfs-backed RAM you need")
	fs.StringVar(&f.dataSize, "data-size", "1Gi", "data written into the volume")
	fs.StringVar(&f.poolSize, "pool-size", "8Gi", "size of the sparse pool file (needs about 2x data-size plus slack)")
	return f, fs.Parse(args)
}

func parseQuantity(name, s string) (int64, error) {
	q, err := resource.ParseQuantity(s)
	if err != nil {
		return 0, fmt.Errorf("--%s %q: %w", name, s, err)
	}
	return q.Value(), nil
}

// demoRow is one line of the demo's table.
type demoRow struct {
	op      string
	latency time.Duration
	space   string
}

// runDemo is `make demo`: the whole volume lifecycle a user would try
// first, on a fresh embedded pool, with a full copy beside it.
func runDemo(ctx context.Context, args []string) (err error) {
	f, err := parseDemoFlags(args)
	if err != nil {
		return err
	}
	dataSize, err := parseQuantity("data-size", f.dataSize)
	if err != nil {
		return err
	}
	poolSize, err := parseQuantity("pool-size", f.poolSize)
	if err != nil {
		return err
	}
	begin := time.Now()
	fmt.Printf("csi-thin demo: starting %s --mode=local on a fresh sparse loop-file btrfs pool (%s)\n", f.driver, pools.HumanBytes(poolSize))
	s, err := startSession(ctx, sessionConfig{
		driverBinary: f.driver, parentDir: f.workDir, prefix: "csi-thin-demo-",
		tools:   []string{"btrfs", "mkfs.btrfs", "losetup", "blkid", "cp"},
		newPool: func(dir string) (pools.Pool, error) { return pools.NewBtrfsLoop(dir, poolSize), nil },
	})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("cleaning up (volumes, mounts, driver, loop device, files)...")
		if cerr := s.close(ctx); cerr != nil {
			err = errors.Join(err, cerr)
		} else {
			fmt.Println("cleaned up")
		}
	}()
	d := &demo{s: s, dataSize: dataSize}
	if err := d.run(ctx); err != nil {
		return fmt.Errorf("%w\n%s", err, s.logTail(15))
	}
	d.print(s.pool.Describe(), time.Since(begin))
	return nil
}

type demo struct {
	s        *session
	dataSize int64
	rows     []demoRow
	sums     []string // sha256 of source, restore, clone, copy
	snapAdd  int64
	cloneAdd int64
	copyAdd  int64
	cloneLat time.Duration
	copyLat  time.Duration
}

func (d *demo) add(op string, lat time.Duration, space string) {
	d.rows = append(d.rows, demoRow{op, lat, space})
	klog.V(1).InfoS("demo step", "op", op, "latency", lat, "space", space)
}

// usageDelta runs fn between two pool usage readings and returns the
// physical space it added.
func (d *demo) usageDelta(ctx context.Context, fn func() error) (int64, error) {
	before, err := d.s.pool.Usage(ctx)
	if err != nil {
		return 0, err
	}
	if err := fn(); err != nil {
		return 0, err
	}
	after, err := d.s.pool.Usage(ctx)
	if err != nil {
		return 0, err
	}
	return after.PoolBytes - before.PoolBytes, nil
}

func (d *demo) run(ctx context.Context) error {
	c := d.s.client
	volSize := 2 * d.dataSize
	var lat time.Duration

	// The source volume, with the data a pod would write.
	var srcID string
	lat, err := timed(func() error {
		v, err := c.CreateVolume(ctx, "demo-source", volSize)
		if err == nil {
			srcID = v.GetVolumeId()
			d.s.undo.Push("delete source volume", func(ctx context.Context) error { return c.DeleteVolume(ctx, srcID) })
		}
		return err
	})
	if err != nil {
		return err
	}
	d.add(fmt.Sprintf("CreateVolume (empty, %s)", pools.HumanBytes(volSize)), lat, "")
	var src *attachment
	if lat, err = timed(func() error { src, err = d.attach(ctx, srcID, "source"); return err }); err != nil {
		return err
	}
	d.add("NodeStageVolume + NodePublishVolume", lat, "")
	var sum string
	added, err := d.usageDelta(ctx, func() error {
		lat, err = timed(func() error {
			sum, err = datagen.WriteFile(ctx, src.file(), d.dataSize, 1)
			return err
		})
		return err
	})
	if err != nil {
		return err
	}
	d.sums = append(d.sums, sum)
	d.add(fmt.Sprintf("write %s (random, fsync) — %.0f MiB/s", pools.HumanBytes(d.dataSize), float64(d.dataSize)/(1<<20)/lat.Seconds()), lat, pools.HumanBytes(added))

	// Snapshot, restore and clone: each a thin copy, measured for time
	// and for the pool space it takes.
	var snapID string
	d.snapAdd, err = d.usageDelta(ctx, func() error {
		lat, err = timed(func() error {
			sn, err := c.CreateSnapshot(ctx, "demo-snapshot", srcID)
			if err == nil {
				snapID = sn.GetSnapshotId()
				d.s.undo.Push("delete snapshot", func(ctx context.Context) error { return c.DeleteSnapshot(ctx, snapID) })
			}
			return err
		})
		return err
	})
	if err != nil {
		return err
	}
	d.add("CreateSnapshot", lat, pools.HumanBytes(d.snapAdd))
	restoreID, restoreAdd, lat, err := d.thinCopy(ctx, "demo-restore", func() (string, error) {
		v, err := c.RestoreSnapshot(ctx, "demo-restore", snapID, volSize)
		return v.GetVolumeId(), err
	})
	if err != nil {
		return err
	}
	d.add("CreateVolume from the snapshot (restore)", lat, pools.HumanBytes(restoreAdd))
	cloneID, cloneAdd, lat, err := d.thinCopy(ctx, "demo-clone", func() (string, error) {
		v, err := c.CloneVolume(ctx, "demo-clone", srcID, volSize)
		return v.GetVolumeId(), err
	})
	if err != nil {
		return err
	}
	d.cloneAdd, d.cloneLat = cloneAdd, lat
	d.add("CreateVolume from the volume (clone)", lat, pools.HumanBytes(cloneAdd))

	// What a copy-based driver does instead: a new empty volume and a
	// byte-for-byte copy of the data into it.
	copyID, _, _, err := d.thinCopy(ctx, "demo-copy", func() (string, error) {
		v, err := c.CreateVolume(ctx, "demo-copy", volSize)
		return v.GetVolumeId(), err
	})
	if err != nil {
		return err
	}
	cp, err := d.attach(ctx, copyID, "copy")
	if err != nil {
		return err
	}
	d.copyAdd, err = d.usageDelta(ctx, func() error {
		d.copyLat, err = timed(func() error { return copyFile(ctx, src.file(), cp.file()) })
		return err
	})
	if err != nil {
		return err
	}
	d.add("baseline: cp --reflink=never + fsync (copy-based drivers)", d.copyLat, pools.HumanBytes(d.copyAdd))

	// Read every copy back through its own mount.
	restore, err := d.attach(ctx, restoreID, "restore")
	if err != nil {
		return err
	}
	clone, err := d.attach(ctx, cloneID, "clone")
	if err != nil {
		return err
	}
	for _, a := range []*attachment{restore, clone, cp} {
		got, err := datagen.HashFile(ctx, a.file())
		if err != nil {
			return err
		}
		d.sums = append(d.sums, got)
	}
	for i, name := range []string{"restore", "clone", "copy"} {
		if d.sums[i+1] != d.sums[0] {
			return fmt.Errorf("data check failed: %s has sha256 %s, source %s", name, d.sums[i+1], d.sums[0])
		}
	}

	// Tear down through the API too, timing the delete path. The clone
	// is unpublished first: a CO never deletes a published volume.
	if lat, err = timed(func() error { return src.Detach(ctx) }); err != nil {
		return err
	}
	d.add("NodeUnpublishVolume + NodeUnstageVolume", lat, "")
	if err := clone.Detach(ctx); err != nil {
		return err
	}
	if lat, err = timed(func() error { return c.DeleteVolume(ctx, cloneID) }); err != nil {
		return err
	}
	d.add("DeleteVolume (the clone)", lat, "")
	if lat, err = timed(func() error { return c.DeleteSnapshot(ctx, snapID) }); err != nil {
		return err
	}
	d.add("DeleteSnapshot", lat, "")
	return nil
}

// thinCopy creates a volume with create, registers its deletion, and
// returns its ID, the pool space it added and its latency.
func (d *demo) thinCopy(ctx context.Context, name string, create func() (string, error)) (string, int64, time.Duration, error) {
	var id string
	var lat time.Duration
	added, err := d.usageDelta(ctx, func() error {
		var err error
		lat, err = timed(func() error {
			id, err = create()
			return err
		})
		if err == nil {
			d.s.undo.Push("delete "+name, func(ctx context.Context) error { return d.s.client.DeleteVolume(ctx, id) })
		}
		return err
	})
	return id, added, lat, err
}

// attachment is a published volume and the demo's data file in it.
type attachment struct {
	*csiclient.Attachment
}

func (a *attachment) file() string { return filepath.Join(a.TargetPath, "data.bin") }

func (d *demo) attach(ctx context.Context, id, name string) (*attachment, error) {
	a, err := d.s.attach(ctx, id, name, nil)
	if err != nil {
		return nil, err
	}
	return &attachment{a}, nil
}

// copyFile is the copy-based drivers' way: cp without reflinks (a real
// copy of every byte), then fsync so the copy is as durable as a clone.
func copyFile(ctx context.Context, src, dst string) error {
	if _, err := (&command.Host{Timeout: time.Hour}).Run(ctx, "cp", "--reflink=never", "--sparse=auto", src, dst); err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	f, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open copy: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync copy: %w", err)
	}
	return nil
}

func (d *demo) print(pool string, total time.Duration) {
	fmt.Printf("\ncsi-thin demo — %s, driven through the CSI gRPC API\n\n", pool)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "operation\tlatency\tpool space added")
	fmt.Fprintln(w, "---------\t-------\t----------------")
	for _, r := range d.rows {
		fmt.Fprintf(w, "%s\t%s\t%s\n", r.op, fmtDuration(r.latency), r.space)
	}
	w.Flush()
	fmt.Println()
	fmt.Printf("clone vs full copy of %s: %.0fx faster (%s vs %s), %s vs %s of pool space\n",
		pools.HumanBytes(d.dataSize), d.copyLat.Seconds()/d.cloneLat.Seconds(), fmtDuration(d.cloneLat), fmtDuration(d.copyLat),
		pools.HumanBytes(d.cloneAdd), pools.HumanBytes(d.copyAdd))
	fmt.Printf("data check: sha256 of source = restore = clone = copy = %s…\n", d.sums[0][:16])
	fmt.Printf("pool space is btrfs \"Used\" (data + both metadata copies) after a sync, before and after each step\n")
	fmt.Printf("demo took %s\n\n", total.Round(100*time.Millisecond))
}

func fmtDuration(d time.Duration) string {
	switch {
	case d == 0:
		return ""
	case d < time.Millisecond:
		return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
	case d < time.Second:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}
