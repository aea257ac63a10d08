package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/pools"
	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/report"
	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/results"
)

// benchConfig is `csi-thin-bench run`'s flags.
type benchConfig struct {
	backend, driver, workDir, out string
	lvmDevice                     string
	poolBytes                     int64
	runs, copyRuns, throughputN   int
	scaleRuns                     int
	sizes                         []int64
	concurrency, scale            []int
	discardBytes, cloneWriteBytes int64
	smallVolumeBytes              int64
	freezeRuns                    int
	freezeDirtyBytes              int64
	phases                        map[string]bool
	smoke                         bool
	driverFlags                   []string
	keepLog, printLog             bool
	note                          string
}

const allPhases = "latency,space,discard,throughput,scaling,freeze"

func parseBenchFlags(args []string) (*benchConfig, error) {
	c := &benchConfig{}
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	klog.InitFlags(fs)
	fs.StringVar(&c.backend, "backend", "btrfs", "btrfs (a fresh loop-file pool) or lvmthin (a thin pool on --lvm-device)")
	fs.StringVar(&c.driver, "driver", "bin/csi-thin", "the csi-thin binary to run")
	fs.StringVar(&c.workDir, "work-dir", "/var/tmp", "parent of the run's temporary dir (pool file, mounts)")
	fs.StringVar(&c.out, "out", "", "write the raw results as JSON here; \"-\" prints them between markers (for the VM's console)")
	fs.StringVar(&c.lvmDevice, "lvm-device", "/dev/vda", "lvmthin: a blank disk for the pool (its contents are destroyed)")
	pool := fs.String("pool-size", "24Gi", "btrfs: size of the sparse pool file (must hold the largest source twice)")
	fs.IntVar(&c.runs, "runs", 20, "repetitions of each latency measurement")
	fs.IntVar(&c.scaleRuns, "scale-runs", 0, "repetitions at each pool population (0: as --runs)")
	fs.IntVar(&c.copyRuns, "copy-runs", 3, "repetitions of each full-copy baseline (slow)")
	sizes := fs.String("sizes", "0,256Mi,1Gi,4Gi", "source data sizes for the latency phase")
	fs.IntVar(&c.throughputN, "throughput-n", 100, "volumes created and deleted per concurrency level")
	conc := fs.String("concurrency", "1,8,32", "throughput concurrency levels")
	scale := fs.String("scale", "0,100,500", "existing volumes+snapshots in the pool for the scaling phase")
	discard := fs.String("discard-size", "1Gi", "data written then deleted in the discard phase")
	cloneWrite := fs.String("clone-write", "64Mi", "data overwritten in a clone in the space phase")
	fs.IntVar(&c.freezeRuns, "freeze-runs", 50, "freezes per load in the freeze phase")
	freezeDirty := fs.String("freeze-dirty", "16Mi", "freeze phase: unsynced data written before each freeze of the dirty load")
	phases := fs.String("phases", allPhases, "phases to run")
	fs.StringVar(&c.note, "note", "", "a caveat to record in the report (e.g. what the disk really is)")
	driverFlags := fs.String("driver-flags", "", "extra flags for the driver, space-separated (e.g. -v=4 to log every command's duration)")
	fs.BoolVar(&c.keepLog, "keep-driver-log", false, "keep the driver's log (next to the work dir) even when the run succeeds")
	fs.BoolVar(&c.printLog, "print-driver-log", false, "copy the driver's log to stderr at the end (the only way out of the VM)")
	fs.BoolVar(&c.smoke, "smoke", false, "tiny sizes and one iteration: checks that every phase still works, measures nothing")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if c.smoke {
		// Only flags the caller did not set take the smoke values.
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		smoke := map[string]string{"pool-size": "3Gi", "runs": "1", "copy-runs": "1", "sizes": "0,4Mi",
			"throughput-n": "4", "concurrency": "1,4", "scale": "0,4", "discard-size": "8Mi", "clone-write": "1Mi",
			"freeze-runs": "3", "freeze-dirty": "1Mi"}
		for name, v := range smoke {
			if !set[name] {
				fs.Set(name, v)
			}
		}
	}
	var err error
	var errs []error
	c.poolBytes, err = parseQuantity("pool-size", *pool)
	errs = append(errs, err)
	c.discardBytes, err = parseQuantity("discard-size", *discard)
	errs = append(errs, err)
	c.cloneWriteBytes, err = parseQuantity("clone-write", *cloneWrite)
	errs = append(errs, err)
	c.freezeDirtyBytes, err = parseQuantity("freeze-dirty", *freezeDirty)
	errs = append(errs, err)
	for _, s := range strings.Split(*sizes, ",") {
		n, err := parseQuantity("sizes", strings.TrimSpace(s))
		errs = append(errs, err)
		c.sizes = append(c.sizes, n)
	}
	c.concurrency, err = parseInts("concurrency", *conc)
	errs = append(errs, err)
	c.scale, err = parseInts("scale", *scale)
	errs = append(errs, err)
	c.phases = map[string]bool{}
	for _, p := range strings.Split(*phases, ",") {
		if !strings.Contains(allPhases, strings.TrimSpace(p)) {
			errs = append(errs, fmt.Errorf("--phases: unknown phase %q (%s)", p, allPhases))
		}
		c.phases[strings.TrimSpace(p)] = true
	}
	c.smallVolumeBytes = 64 << 20
	if c.scaleRuns == 0 {
		c.scaleRuns = c.runs
	}
	c.driverFlags = strings.Fields(*driverFlags)
	return c, errors.Join(errs...)
}

func parseInts(name, s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 {
			return nil, fmt.Errorf("--%s %q: want non-negative integers", name, s)
		}
		out = append(out, n)
	}
	return out, nil
}

// bench is one benchmark run: a session and what it measured so far.
type bench struct {
	s   *session
	cfg *benchConfig
	run *results.Run
	seq atomic.Int64
}

// name returns a fresh CSI object name: every create in the run is new,
// so no call is an idempotent replay of an earlier one. Safe for
// concurrent use.
func (b *bench) name(kind string) string {
	return fmt.Sprintf("bench-%s-%d", kind, b.seq.Add(1))
}

func humanBytes(n int64) string { return pools.HumanBytes(n) }

func (b *bench) note(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	b.run.Notes = append(b.run.Notes, msg)
	klog.InfoS("note", "msg", msg)
}

func (b *bench) progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// runBench is `csi-thin-bench run`.
func runBench(ctx context.Context, args []string) (err error) {
	cfg, err := parseBenchFlags(args)
	if err != nil {
		return err
	}
	begin := time.Now()
	sc := sessionConfig{driverBinary: cfg.driver, parentDir: cfg.workDir, prefix: "csi-thin-bench-", extraArgs: cfg.driverFlags, keepLog: cfg.keepLog}
	switch cfg.backend {
	case "btrfs":
		sc.tools = []string{"btrfs", "mkfs.btrfs", "losetup", "blkid", "cp", "fstrim"}
		sc.newPool = func(dir string) (pools.Pool, error) { return pools.NewBtrfsLoop(dir, cfg.poolBytes), nil }
	case "lvmthin":
		sc.tools = []string{"lvm", "lvcreate", "dmsetup", "mkfs.ext4", "cp", "fstrim"}
		sc.newPool = func(dir string) (pools.Pool, error) {
			return pools.NewLVMDevice(dir, cfg.lvmDevice, "csi-thin-bench", "pool"), nil
		}
	default:
		return fmt.Errorf("--backend %q: btrfs or lvmthin", cfg.backend)
	}
	if cfg.phases["freeze"] {
		sc.tools = append(sc.tools, "losetup", "mkfs.ext4")
	}
	s, err := startSession(ctx, sc)
	if err != nil {
		return err
	}
	defer func() {
		if cfg.printLog {
			s.printLog(os.Stderr)
		}
		if cerr := s.close(ctx); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	b := &bench{s: s, cfg: cfg, run: &results.Run{
		Backend: cfg.backend, Pool: s.pool.Describe(), Emulated: inEmulatedVM(),
		Machine: describeMachine(ctx, cfg.backend, cfg.workDir), Started: begin.UTC(),
		Config: results.Config{
			Runs: cfg.runs, CopyRuns: cfg.copyRuns, ScaleRuns: cfg.scaleRuns, SizesBytes: cfg.sizes, ThroughputN: cfg.throughputN,
			Concurrency: cfg.concurrency, ScaleCounts: cfg.scale, DiscardBytes: cfg.discardBytes, Smoke: cfg.smoke,
			FreezeRuns: cfg.freezeRuns,
		},
	}}
	b.run.Memory.Services = "controller+node (--mode=local, one process)"
	if cfg.note != "" {
		b.note("%s", cfg.note)
	}
	if b.run.Memory.IdleRSSBytes, err = s.driver.RSS(); err != nil {
		return err
	}
	if b.run.Memory.IdleAnonBytes, err = s.driver.AnonRSS(); err != nil {
		return err
	}
	sampleCtx, stopSampling := context.WithCancel(ctx)
	peakAnon := s.driver.SamplePeakAnon(sampleCtx, 100*time.Millisecond)
	err = b.phases(ctx)
	stopSampling()
	b.run.Memory.PeakAnonBytes = <-peakAnon
	if err != nil {
		return fmt.Errorf("%w\n%s", err, s.logTail(15))
	}
	if b.run.Memory.PeakBytes, err = s.driver.PeakRSS(); err != nil {
		return err
	}
	b.run.Seconds = time.Since(begin).Seconds()
	if err := b.write(); err != nil {
		return err
	}
	fmt.Println()
	fmt.Print(report.Text([]*results.Run{b.run}))
	return nil
}

func (b *bench) phases(ctx context.Context) error {
	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"latency", b.latencyPhase}, // includes space (on the ~1 GiB source)
		{"discard", b.discardPhase},
		{"throughput", b.throughputPhase},
		{"scaling", b.scalingPhase},
		{"freeze", b.freezePhase},
	}
	for _, st := range steps {
		if !b.cfg.phases[st.name] && !(st.name == "latency" && b.cfg.phases["space"]) {
			continue
		}
		start := time.Now()
		b.progress("phase %s", st.name)
		if err := st.fn(ctx); err != nil {
			return fmt.Errorf("phase %s: %w", st.name, err)
		}
		b.progress("phase %s done in %s", st.name, time.Since(start).Round(time.Second))
	}
	return nil
}

// Markers around the JSON on stdout: the VM's console is the only way out
// of the VM, and the driver's or kernel's lines may surround it.
const (
	jsonBegin = "=== csi-thin-bench results begin ==="
	jsonEnd   = "=== csi-thin-bench results end ==="
)

func (b *bench) write() error {
	if b.cfg.out == "" {
		return nil
	}
	data, err := json.MarshalIndent(b.run, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	if b.cfg.out == "-" {
		fmt.Printf("%s\n%s\n%s\n", jsonBegin, data, jsonEnd)
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(b.cfg.out), 0o755); err != nil {
		return fmt.Errorf("results dir: %w", err)
	}
	if err := os.WriteFile(b.cfg.out, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	fmt.Fprintf(os.Stderr, "raw results: %s\n", b.cfg.out)
	return nil
}
