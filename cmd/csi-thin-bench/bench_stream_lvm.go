package main

import (
	"context"
	"fmt"
	"io"
	"os"
	osexec "os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/datagen"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/lvmthin"
	"github.com/csi-thin/csi-thin/pkg/lvmthin/lvmtest"
)

// The LVM thin stream measured against what a user does without the
// driver: LVM has no send tool, so the reference is a full-device copy of
// the snapshot LV into a new thin LV (`dd bs=1M conv=sparse`, which skips
// writing zero blocks so the copy stays thin, but reads every byte). The
// incremental has no bare counterpart either: the user copies the newer
// snapshot whole again.

// extentCount is how many extents the written data is split into, spread
// over the volume with holes between them.
const extentCount = 4

// extent is a byte range of a volume.
type extent struct{ off, n int64 }

// spreadExtents splits size bytes into n MiB-aligned extents spread
// evenly over a volume of volBytes; phase 1 puts them halfway between
// those of phase 0, into the holes, so that changes map new chunks.
func spreadExtents(volBytes, size int64, n int, phase int64) []extent {
	stride := volBytes / int64(n) / backend.MiB * backend.MiB
	var out []extent
	for i := range int64(n) {
		per := size / int64(n)
		if i == int64(n)-1 {
			per = size - per*(int64(n)-1)
		}
		if per > 0 {
			out = append(out, extent{off: i*stride + phase*(stride/2/backend.MiB*backend.MiB), n: per})
		}
	}
	return out
}

// writeExtents writes datagen data of seed into dev at the extents.
func writeExtents(ctx context.Context, dev string, ext []extent, seed uint64) error {
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	for i, e := range ext {
		if _, err := datagen.Write(ctx, io.NewOffsetWriter(f, e.off), e.n, seed+uint64(i)); err != nil {
			return fmt.Errorf("write %s at %d: %w", dev, e.off, err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dev, err)
	}
	return f.Close()
}

var ddCopied = regexp.MustCompile(`(?m)^(\d+) bytes .*copied`)

// parseDDBytes reads the byte count from dd's closing report on stderr.
func parseDDBytes(stderr string) (int64, error) {
	m := ddCopied.FindAllStringSubmatch(stderr, -1)
	if len(m) == 0 {
		return 0, fmt.Errorf("no byte count in dd's report %q", stderr)
	}
	return strconv.ParseInt(m[len(m)-1][1], 10, 64)
}

func lvmStream(ctx context.Context, dir string, poolBytes int64, r *streamResult, runs int) error {
	// A thin pool refuses a volume larger than its data (whatever the
	// overprovisioning); the loop files are sparse, so this costs nothing.
	poolBytes = max(poolBytes, r.VolumeBytes+512*backend.MiB)
	open := func(vg string) (*lvmthin.Backend, error) {
		return lvmthin.New(ctx, lvmthin.Config{VG: vg, ThinPool: "pool", NodeName: vg, LoopFile: filepath.Join(dir, vg+".img"),
			LoopSizeBytes: poolBytes, LVMConfig: lvmtest.Config()})
	}
	const srcVG = "csithin_bench_a"
	src, err := open(srcVG)
	if err != nil {
		return err
	}
	defer teardownLVM(ctx, src)
	dst, err := open("csithin_bench_b")
	if err != nil {
		return err
	}
	defer teardownLVM(ctx, dst)

	block := backend.VolumeRequest{ID: backend.VolumeIDFor("bench"), Name: "bench", RequiredBytes: r.VolumeBytes, AccessType: backend.AccessBlock}
	v, err := src.CreateVolume(ctx, block)
	if err != nil {
		return err
	}
	dev, err := devicePath(ctx, src, v.ID)
	if err != nil {
		return err
	}
	// state writes ext, snapshots the volume and hashes it: the snapshot's
	// content, which every received copy must hash to.
	state := func(ext []extent, seed uint64, name string) (string, string, error) {
		if err := writeExtents(ctx, dev, ext, seed); err != nil {
			return "", "", err
		}
		s, err := src.CreateSnapshot(ctx, backend.SnapshotRequest{ID: backend.SnapshotIDFor(name), Name: name, SourceVolumeID: v.ID})
		if err != nil {
			return "", "", err
		}
		h, err := datagen.HashFile(ctx, dev)
		return s.ID, h, err
	}
	s1, want1, err := state(spreadExtents(r.VolumeBytes, r.WrittenBytes, extentCount, 0), 1, "s1")
	if err != nil {
		return err
	}
	full := lvmRound{src: src, dst: dst, srcVG: srcVG, snap: s1, name: "full", want: want1}
	if err := full.run(ctx, runs, &r.StreamSeconds, &r.BareSeconds); err != nil {
		return err
	}
	r.AllocatedBytes, r.StreamBytes, r.BareBytes = full.st.AllocatedBytes, full.st.StreamBytes, full.bareBytes

	s2, want2, err := state(spreadExtents(r.VolumeBytes, r.IncrementalBytes, extentCount, 1), 100, "s2")
	if err != nil {
		return err
	}
	if err := receiveParent(ctx, src, dst, s1, "s1"); err != nil {
		return err
	}
	inc := lvmRound{src: src, dst: dst, srcVG: srcVG, snap: s2, parent: s1, name: "inc", want: want2}
	if err := inc.run(ctx, runs, &r.IncStreamSeconds, &r.IncBareSeconds); err != nil {
		return err
	}
	r.IncStreamBytes, r.IncBareBytes = inc.st.StreamBytes, inc.bareBytes
	return nil
}

// lvmRound is one kind of transfer (full or incremental) repeated: the
// stream into a new volume, verified against the source's sha256, then
// the bare full-device copy of the same snapshot.
type lvmRound struct {
	src, dst           *lvmthin.Backend
	srcVG              string
	snap, parent, name string
	want               string

	st        backend.SendStats
	bareBytes int64
}

func (l *lvmRound) run(ctx context.Context, runs int, streamSecs, bareSecs *[]float64) error {
	for i := range runs {
		id := backend.VolumeIDFor(fmt.Sprintf("%s-%d", l.name, i))
		syncAll()
		st, secs, err := transfer(ctx, l.src, l.dst, l.snap, l.parent, backend.VolumeRequest{ID: id, Name: id, AccessType: backend.AccessBlock})
		if err != nil {
			return err
		}
		l.st = st
		*streamSecs = append(*streamSecs, secs)
		got, err := devicePath(ctx, l.dst, id)
		if err != nil {
			return err
		}
		if h, err := datagen.HashFile(ctx, got); err != nil || h != l.want {
			return fmt.Errorf("received %s: sha256 %s, want %s (%v)", l.name, h, l.want, err)
		}
		if err := l.dst.DeleteVolume(ctx, id); err != nil {
			return err
		}
		syncAll()
		n, secs, err := l.bare(ctx, backend.VolumeIDFor(fmt.Sprintf("%s-dd-%d", l.name, i)))
		if err != nil {
			return err
		}
		l.bareBytes = n
		*bareSecs = append(*bareSecs, secs)
	}
	return nil
}

// bare copies the snapshot LV with dd into a new thin LV id of the
// receiving pool, timed from the LV's creation (the stream's receive
// creates its LV too) to the end of the copy, and removes it.
func (l *lvmRound) bare(ctx context.Context, id string) (int64, float64, error) {
	snapDev := "/dev/mapper/" + lvmthin.DMName(l.srcVG, l.snap, "")
	start := time.Now()
	if out, err := osexec.CommandContext(ctx, "lvm", lvmtest.Args("lvchange", "--activate", "y", "--ignoreactivationskip", l.srcVG+"/"+l.snap)...).CombinedOutput(); err != nil {
		return 0, 0, fmt.Errorf("activate %s: %w: %s", l.snap, err, out)
	}
	defer func() {
		if out, err := osexec.CommandContext(context.WithoutCancel(ctx), "lvm", lvmtest.Args("lvchange", "--activate", "n", l.srcVG+"/"+l.snap)...).CombinedOutput(); err != nil {
			klog.ErrorS(err, "deactivate snapshot", "snapshot", l.snap, "output", string(out))
		}
	}()
	size, err := deviceSize(snapDev)
	if err != nil {
		return 0, 0, err
	}
	if _, err := l.dst.CreateVolume(ctx, backend.VolumeRequest{ID: id, Name: id, RequiredBytes: size, AccessType: backend.AccessBlock}); err != nil {
		return 0, 0, err
	}
	defer func() {
		if err := l.dst.DeleteVolume(context.WithoutCancel(ctx), id); err != nil {
			klog.ErrorS(err, "delete the dd copy", "volumeID", id)
		}
	}()
	to, err := devicePath(ctx, l.dst, id)
	if err != nil {
		return 0, 0, err
	}
	dd := osexec.CommandContext(ctx, "dd", "if="+snapDev, "of="+to, "bs=1M", "conv=sparse,fsync")
	var stderr strings.Builder
	dd.Stderr = &stderr
	if err := dd.Run(); err != nil {
		return 0, 0, fmt.Errorf("dd %s → %s: %w: %s", snapDev, to, err, stderr.String())
	}
	secs := time.Since(start).Seconds()
	n, err := parseDDBytes(stderr.String())
	return n, secs, err
}

func devicePath(ctx context.Context, b *lvmthin.Backend, id string) (string, error) {
	tg, err := b.Target(ctx, id)
	if err != nil {
		return "", err
	}
	if !tg.IsDevice {
		return "", fmt.Errorf("volume %s: target %s is not a device", id, tg.Path)
	}
	return tg.Path, nil
}

func deviceSize(dev string) (int64, error) {
	f, err := os.Open(dev)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	n, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", dev, err)
	}
	return n, nil
}

// syncAll flushes dirty pages so that neither contender pays for the
// other's writes.
func syncAll() {
	if out, err := osexec.Command("sync").CombinedOutput(); err != nil {
		klog.ErrorS(err, "sync", "output", string(out))
	}
}

func teardownLVM(ctx context.Context, b *lvmthin.Backend) {
	if err := b.Teardown(context.WithoutCancel(ctx)); err != nil {
		klog.ErrorS(err, "teardown of a bench pool")
	}
}
