package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	osexec "os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/datagen"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/btrfs"
)

// `csi-thin-bench stream` measures the volume stream (SendSnapshot →
// ReceiveVolume through a pipe, as a transfer would run) against the bare
// tool on the same data, between two fresh loop-file pools on this host:
// for btrfs `btrfs send | btrfs receive` (two processes and a pipe); for
// LVM thin, which has no send tool, a full-device `dd` of the snapshot
// into a new thin LV (bench_stream_lvm.go). The CSI API has no transfer
// call yet, so this drives the backend in-process; both sides read the
// same page-cached snapshot.

type streamResult struct {
	Backend          string    `json:"backend"`
	BareTool         string    `json:"bareTool"`
	Note             string    `json:"note,omitempty"`
	VolumeBytes      int64     `json:"volumeBytes"`
	WrittenBytes     int64     `json:"writtenBytes"`
	AllocatedBytes   int64     `json:"allocatedBytes"`
	StreamBytes      int64     `json:"streamBytes"`
	BareBytes        int64     `json:"bareBytes"`
	StreamSeconds    []float64 `json:"streamSeconds"`
	BareSeconds      []float64 `json:"bareSeconds"`
	IncrementalBytes int64     `json:"incrementalWrittenBytes"`
	IncStreamBytes   int64     `json:"incrementalStreamBytes"`
	IncBareBytes     int64     `json:"incrementalBareBytes"`
	IncStreamSeconds []float64 `json:"incrementalStreamSeconds"`
	IncBareSeconds   []float64 `json:"incrementalBareSeconds"`
}

func runStreamBench(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("stream", flag.ContinueOnError)
	klog.InitFlags(fs)
	workDir := fs.String("work-dir", "/var/tmp", "parent of the run's temporary dir (pool files, mounts)")
	out := fs.String("out", "", "write the results as JSON here")
	volume := fs.String("volume-size", "4Gi", "the volume's size")
	data := fs.String("data", "256Mi", "data written into the volume before the full stream")
	changes := fs.String("changes", "16Mi", "data written between the two snapshots of the incremental")
	runs := fs.Int("runs", 3, "repetitions of each transfer (the stream and the bare tool alternate)")
	smoke := fs.Bool("smoke", false, "tiny sizes and one run: checks that it still works, measures nothing")
	backendName := fs.String("backend", "btrfs", "btrfs or lvmthin (two loop-file thin pools; needs device-mapper)")
	note := fs.String("note", "", "a note printed with the table (where it was measured)")
	cpuProfile := fs.String("cpuprofile", "", "write this process's CPU profile here (go tool pprof): where the stream's own time goes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if *smoke {
		*volume, *data, *changes, *runs = "256Mi", "8Mi", "1Mi", 1
	}
	r := streamResult{Backend: *backendName, Note: *note}
	var err error
	for _, f := range []struct {
		s string
		p *int64
	}{{*volume, &r.VolumeBytes}, {*data, &r.WrittenBytes}, {*changes, &r.IncrementalBytes}} {
		if *f.p, err = parseQuantity("size", f.s); err != nil {
			return err
		}
	}
	dir, err := os.MkdirTemp(*workDir, "csi-thin-stream-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	poolBytes := max(2*backend.GiB, 3*(r.WrittenBytes+r.IncrementalBytes))
	switch r.Backend {
	case "btrfs":
		r.BareTool = "`btrfs send \\| btrfs receive`"
		err = btrfsStream(ctx, dir, poolBytes, &r, *runs)
	case "lvmthin":
		r.BareTool = "`dd conv=sparse` of the device"
		err = lvmStream(ctx, dir, poolBytes, &r, *runs)
	default:
		err = fmt.Errorf("--backend %q: btrfs or lvmthin", r.Backend)
	}
	if err != nil {
		return err
	}
	printStreamResult(os.Stdout, &r)
	if *out != "" {
		b, _ := json.MarshalIndent(&r, "", "  ")
		if err := os.WriteFile(*out, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func btrfsStream(ctx context.Context, dir string, poolBytes int64, r *streamResult, runs int) error {
	open := func(name string) (*btrfs.Pool, error) {
		return btrfs.Open(ctx, btrfs.Config{PoolPath: filepath.Join(dir, name), LoopFile: filepath.Join(dir, name+".img"),
			LoopSizeBytes: poolBytes, NodeName: name})
	}
	src, err := open("node-a")
	if err != nil {
		return err
	}
	defer src.Teardown(context.WithoutCancel(ctx), true)
	dst, err := open("node-b")
	if err != nil {
		return err
	}
	defer dst.Teardown(context.WithoutCancel(ctx), true)
	defer dst.Settle()
	return streamBench(ctx, src, dst, r, runs)
}

func streamBench(ctx context.Context, src, dst *btrfs.Pool, r *streamResult, runs int) error {
	v, err := src.CreateVolume(ctx, backend.VolumeRequest{ID: backend.VolumeIDFor("bench"), Name: "bench", RequiredBytes: r.VolumeBytes})
	if err != nil {
		return err
	}
	want, err := datagen.WriteFile(ctx, filepath.Join(src.VolumePath(v.ID), "data"), r.WrittenBytes, 1)
	if err != nil {
		return err
	}
	s1, err := src.CreateSnapshot(ctx, backend.SnapshotRequest{ID: backend.SnapshotIDFor("s1"), Name: "s1", SourceVolumeID: v.ID})
	if err != nil {
		return err
	}
	snapDir := filepath.Join(src.MountPath(), "csi-thin", "snapshots")
	bareDir := filepath.Join(dst.MountPath(), "bare")
	if err := os.MkdirAll(bareDir, 0o700); err != nil {
		return err
	}
	for i := range runs {
		id := backend.VolumeIDFor(fmt.Sprintf("full-%d", i))
		quiesce(ctx, src, dst)
		st, secs, err := transfer(ctx, src, dst, s1.ID, "", backend.VolumeRequest{ID: id, Name: id})
		if err != nil {
			return err
		}
		r.AllocatedBytes, r.StreamBytes = st.AllocatedBytes, st.StreamBytes
		r.StreamSeconds = append(r.StreamSeconds, secs)
		if got, err := datagen.HashFile(ctx, filepath.Join(dst.VolumePath(id), "data")); err != nil || got != want {
			return fmt.Errorf("received data: sha256 %s, want %s (%v)", got, want, err)
		}
		if err := dst.DeleteVolume(ctx, id); err != nil {
			return err
		}
		quiesce(ctx, src, dst)
		n, secs, err := bareTransfer(ctx, filepath.Join(snapDir, s1.ID), "", bareDir)
		if err != nil {
			return err
		}
		r.BareBytes = n
		r.BareSeconds = append(r.BareSeconds, secs)
		if err := deleteSubvolume(ctx, filepath.Join(bareDir, s1.ID)); err != nil {
			return err
		}
	}

	// Incremental: the receiver holds s1 as a snapshot.
	if _, err := datagen.WriteFile(ctx, filepath.Join(src.VolumePath(v.ID), "changes"), r.IncrementalBytes, 2); err != nil {
		return err
	}
	s2, err := src.CreateSnapshot(ctx, backend.SnapshotRequest{ID: backend.SnapshotIDFor("s2"), Name: "s2", SourceVolumeID: v.ID})
	if err != nil {
		return err
	}
	if err := receiveParent(ctx, src, dst, s1.ID, "s1"); err != nil {
		return err
	}
	for i := range runs {
		id := backend.VolumeIDFor(fmt.Sprintf("inc-%d", i))
		quiesce(ctx, src, dst)
		st, secs, err := transfer(ctx, src, dst, s2.ID, s1.ID, backend.VolumeRequest{ID: id, Name: id})
		if err != nil {
			return err
		}
		r.IncStreamBytes = st.StreamBytes
		r.IncStreamSeconds = append(r.IncStreamSeconds, secs)
		if err := dst.DeleteVolume(ctx, id); err != nil {
			return err
		}
		quiesce(ctx, src, dst)
		n, secs, err := bareTransfer(ctx, filepath.Join(snapDir, s2.ID), filepath.Join(snapDir, s1.ID), bareDir)
		if err != nil {
			return err
		}
		r.IncBareBytes = n
		r.IncBareSeconds = append(r.IncBareSeconds, secs)
		if err := deleteSubvolume(ctx, filepath.Join(bareDir, s2.ID)); err != nil {
			return err
		}
	}
	return nil
}

// quiesce lets the previous run's deletes and background clean-ups finish
// (commit, cleaner) so that neither contender pays for the other's.
func quiesce(ctx context.Context, pools ...*btrfs.Pool) {
	for _, p := range pools {
		p.Settle()
		for _, args := range [][]string{{"filesystem", "sync", p.MountPath()}, {"subvolume", "sync", p.MountPath()}, {"filesystem", "sync", p.MountPath()}} {
			if out, err := osexec.CommandContext(ctx, "btrfs", args...).CombinedOutput(); err != nil {
				klog.ErrorS(err, "quiesce", "output", string(out))
			}
		}
	}
}

// receiveParent gives the receiver snapshot id (a full stream of it), as
// a first transfer leaves it, so that the incremental has its parent.
func receiveParent(ctx context.Context, src, dst backend.Streamer, id, name string) error {
	pr, pw := io.Pipe()
	go func() { _, err := src.SendSnapshot(ctx, id, "", pw); pw.CloseWithError(err) }()
	_, err := dst.ReceiveSnapshot(ctx, id, name, pr)
	pr.CloseWithError(errors.New("receiver done"))
	return err
}

// transfer runs SendSnapshot into ReceiveVolume through a pipe, timed.
func transfer(ctx context.Context, src, dst backend.Streamer, snap, parent string, req backend.VolumeRequest) (backend.SendStats, float64, error) {
	pr, pw := io.Pipe()
	var st backend.SendStats
	sent := make(chan error, 1)
	start := time.Now()
	go func() {
		var err error
		st, err = src.SendSnapshot(ctx, snap, parent, pw)
		pw.CloseWithError(err)
		sent <- err
	}()
	_, rerr := dst.ReceiveVolume(ctx, req, pr)
	pr.CloseWithError(errors.New("receiver done"))
	serr := <-sent
	secs := time.Since(start).Seconds()
	if err := errors.Join(serr, rerr); err != nil {
		return st, 0, err
	}
	return st, secs, nil
}

// bareTransfer runs `btrfs send [-p parent] snap | btrfs receive dir`:
// two processes joined by a pipe, as a shell would, without a shell.
func bareTransfer(ctx context.Context, snap, parent, dir string) (int64, float64, error) {
	args := []string{"send", "-q"}
	if parent != "" {
		args = append(args, "-p", parent)
	}
	send := osexec.CommandContext(ctx, "btrfs", append(args, snap)...)
	recv := osexec.CommandContext(ctx, "btrfs", "receive", "-e", dir)
	pr, pw, err := os.Pipe()
	if err != nil {
		return 0, 0, err
	}
	counter := &countingReader{r: pr}
	send.Stdout, recv.Stdin = pw, counter
	var sendErr, recvErr strings.Builder
	send.Stderr, recv.Stderr = &sendErr, &recvErr
	start := time.Now()
	if err := recv.Start(); err != nil {
		return 0, 0, err
	}
	if err := send.Start(); err != nil {
		return 0, 0, err
	}
	pw.Close()
	serr := send.Wait()
	rerr := recv.Wait()
	pr.Close()
	secs := time.Since(start).Seconds()
	if serr != nil || rerr != nil {
		return 0, 0, fmt.Errorf("btrfs send | btrfs receive: %v %s / %v %s", serr, sendErr.String(), rerr, recvErr.String())
	}
	return counter.n, secs, nil
}

// countingReader counts what the bare receive read: the bare stream's size.
// (It makes os/exec copy through a pipe of its own, as the driver's
// stream does through its reader.)
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func deleteSubvolume(ctx context.Context, path string) error {
	if out, err := osexec.CommandContext(ctx, "btrfs", "subvolume", "delete", path).CombinedOutput(); err != nil {
		return fmt.Errorf("btrfs subvolume delete %s: %v: %s", path, err, out)
	}
	return nil
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func printStreamResult(w io.Writer, r *streamResult) {
	mib := func(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/float64(backend.MiB)) }
	fs, fb := median(r.StreamSeconds), median(r.BareSeconds)
	is, ib := median(r.IncStreamSeconds), median(r.IncBareSeconds)
	fmt.Fprintf(w, "STREAM: %s volume stream, %s volume holding %s (%d runs each, medians)\n", r.Backend, mib(r.VolumeBytes), mib(r.WrittenBytes), len(r.StreamSeconds))
	if r.Note != "" {
		fmt.Fprintf(w, "STREAM: %s\n", r.Note)
	}
	fmt.Fprintf(w, "| | csi-thin stream | bare %s | ratio |\n| --- | --- | --- | --- |\n", r.BareTool)
	fmt.Fprintf(w, "| full: bytes sent (allocated %s) | %s | %s | %.3f |\n", mib(r.AllocatedBytes), mib(r.StreamBytes), mib(r.BareBytes), float64(r.StreamBytes)/float64(max(1, r.BareBytes)))
	fmt.Fprintf(w, "| full: seconds | %.2f | %.2f | %.2fx |\n", fs, fb, fs/max(fb, 1e-9))
	fmt.Fprintf(w, "| incremental of %s: bytes sent | %s | %s | %.3f |\n", mib(r.IncrementalBytes), mib(r.IncStreamBytes), mib(r.IncBareBytes), float64(r.IncStreamBytes)/float64(max(1, r.IncBareBytes)))
	fmt.Fprintf(w, "| incremental: seconds | %.2f | %.2f | %.2fx |\n", is, ib, is/max(ib, 1e-9))
	fmt.Fprintf(w, "STREAM: bytes sent ÷ allocated %.4f; incremental bytes ÷ changes %.4f; time ÷ bare tool %.2fx (goal 1.3x)\n",
		float64(r.StreamBytes)/float64(max(1, r.AllocatedBytes)), float64(r.IncStreamBytes)/float64(max(1, r.IncrementalBytes)), fs/max(fb, 1e-9))
}
