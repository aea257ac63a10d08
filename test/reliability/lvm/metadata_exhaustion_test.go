package lvm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/lvmthin"
	"github.com/csi-thin/csi-thin/pkg/lvmthin/lvmtest"
	"github.com/csi-thin/csi-thin/test/reliability/harness"
)

const (
	kiB = 1 << 10
	// mdPoolFile is the sparse backing file of the pool: far more data
	// area than 2 MiB of metadata can map at 64 KiB chunks, so that the
	// metadata runs out first. Only the 4 KiB written per chunk is real.
	mdPoolFile = 16 * backend.GiB
	// mdMetadata is LVM's minimum thin pool metadata size.
	mdMetadata = 2 * backend.MiB
	// mdChunk is the driver's default chunk size; mdWrite is what is
	// written per chunk: one write, one new mapping.
	mdChunk = 64 * kiB
	mdWrite = 4 * kiB
	// mdDeadline is what each CSI call gets on the full pool: the
	// sidecars' default --timeout.
	mdDeadline = 10 * time.Second
	// Four raw block volumes of a quarter of the pool each, each filled
	// by two writers: together they could map 16 GiB, far more than the
	// metadata describes, and eight writes in flight keep dm-thin busy.
	mdFillers, mdFillerBytes, mdWritersPerVolume = 4, 4 * backend.GiB, 2
)

// mdPool is a thin pool with 2 MiB of metadata in a VG of 1 MiB extents
// (with the default 4 MiB extents LVM would round the metadata up to 4
// MiB and the fill would take twice as long).
type mdPool struct {
	cfg lvmthin.Config
	// extraFile and extraDev are the PV an operator adds to grow the
	// metadata: the driver's pool takes the whole VG.
	extraFile, extraDev string
}

func newMetadataPool(t *testing.T, vg string) *mdPool {
	t.Helper()
	requireDMThin(t)
	dir := t.TempDir()
	if os.Getenv("CSI_THIN_VM") != "" {
		// tmpfs: the 9p work dir is far too slow for a loop file.
		d, err := os.MkdirTemp("/run", "csi-thin-md-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		dir = d
	}
	p := &mdPool{}
	// Registered before the Teardown below, so it runs after it: the
	// extra PV can only be wiped once its VG is gone.
	t.Cleanup(func() {
		if p.extraDev != "" {
			host.Run(context.Background(), "lvm", lvmtest.Args("pvremove", "--yes", p.extraDev)...)
			host.Run(context.Background(), "losetup", "--detach", p.extraDev)
		}
	})
	file := filepath.Join(dir, vg+".img")
	dev := attachSparse(t, file, mdPoolFile)
	lvm(t, "pvcreate", dev)
	lvm(t, "vgcreate", "--physicalextentsize", "1m", "--addtag", "csi-thin.io/owned", vg, dev)
	// The driver finds the VG and creates the pool in it as it does on a
	// node (chunk 64k, passdown, --errorwhenfull y); the metadata size is
	// the test's, and so is --zero n (SkipZeroing): the harsher case,
	// Fail mode, and the only one whose fill fits the VM's tmpfs (a
	// zeroing pool writes 64 KiB per 4 KiB first write, ~7 GiB to run 2 MiB
	// of metadata out; docs/lvm-metadata.md has that run's figures).
	p.cfg = lvmthin.Config{VG: vg, ThinPool: "pool", NodeName: "rel-node", LoopFile: file,
		MetadataSizeBytes: mdMetadata, LVMConfig: lvmtest.Config(), SkipZeroing: true}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	b, err := lvmthin.New(ctx, p.cfg)
	if err != nil {
		t.Fatalf("pool %s: %v", vg, err)
	}
	t.Cleanup(func() {
		if err := b.Teardown(context.Background()); err != nil {
			t.Errorf("teardown %s: %v", vg, err)
		}
	})
	return p
}

// attachSparse creates a sparse file and attaches it to a loop device.
func attachSparse(t *testing.T, file string, size int64) string {
	t.Helper()
	f, err := os.OpenFile(file, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("size %s: %v", file, err)
	}
	res, err := host.Run(context.Background(), "losetup", "--find", "--show", file)
	if err != nil {
		t.Fatalf("attach %s: %v", file, err)
	}
	return strings.TrimSpace(string(res.Stdout))
}

// thinPoolStatus is the kernel's view of the pool (`dmsetup status` of
// its thin-pool target), which LVM's report only summarises.
type thinPoolStatus struct {
	raw                 string
	transaction         int64
	metaUsed, metaTotal int64 // 4 KiB blocks; used includes the kernel's reserve
	dataUsed, dataTotal int64 // chunks
	// mode is rw, ro (read-only, or out of metadata space), out_of_data_space,
	// Fail (all I/O fails), or inactive when the pool has no table.
	mode                  string
	needsCheck, errorFull bool
}

func poolStatus(t *testing.T, p *mdPool) thinPoolStatus {
	t.Helper()
	res, err := host.Run(context.Background(), "dmsetup", "status", "--target", "thin-pool")
	if err != nil {
		t.Fatalf("dmsetup status: %v", err)
	}
	// LVM names the pool's thin-pool target vg-pool-tpool while thin LVs
	// use it, vg-pool otherwise.
	for _, line := range strings.Split(string(res.Stdout), "\n") {
		name, rest, ok := strings.Cut(line, ": ")
		if !ok || (name != lvmthin.DMName(p.cfg.VG, p.cfg.ThinPool, "") && name != lvmthin.DMName(p.cfg.VG, p.cfg.ThinPool, "tpool")) {
			continue
		}
		k, err := lvmthin.ParseThinPoolStatus([]byte(rest))
		if err != nil {
			t.Fatalf("unexpected thin-pool status %q: %v", line, err)
		}
		return thinPoolStatus{raw: strings.TrimSpace(rest), transaction: k.Transaction,
			metaUsed: k.UsedMetadataBlocks, metaTotal: k.TotalMetadataBlocks,
			dataUsed: k.UsedDataBlocks, dataTotal: k.TotalDataBlocks,
			mode: k.Mode, needsCheck: k.NeedsCheck, errorFull: k.ErrorIfNoSpace}
	}
	return thinPoolStatus{raw: "no thin-pool target", mode: "inactive"}
}

// kernelLog returns the device-mapper lines of the kernel log after the
// first skip lines of it, and the number of lines now.
func kernelLog(t *testing.T, skip int) ([]string, int) {
	t.Helper()
	res, err := host.Run(context.Background(), "dmesg")
	if err != nil {
		t.Fatalf("dmesg: %v", err)
	}
	lines := strings.Split(strings.TrimRight(string(res.Stdout), "\n"), "\n")
	var dm []string
	for _, l := range lines[min(skip, len(lines)):] {
		if strings.Contains(l, "device-mapper") {
			dm = append(dm, l)
		}
	}
	return dm, len(lines)
}

func blockCapability() *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

func createBlock(ctx context.Context, c *harness.Child, name string, size int64, src *csi.VolumeContentSource) (*csi.Volume, error) {
	resp, err := c.Controller.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{blockCapability()}, VolumeContentSource: src,
	})
	if err != nil {
		return nil, fmt.Errorf("CreateVolume %s: %w", name, err)
	}
	return resp.GetVolume(), nil
}

func volumeSource(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
}

// blockAttachment is a raw block volume staged and published the way
// kubelet does it for a pod: the device node bind-mounted onto a file.
type blockAttachment struct {
	id, staging, target string
}

func attachBlock(t *testing.T, c *harness.Child, id, dir string) *blockAttachment {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a := &blockAttachment{id: id, staging: filepath.Join(dir, id, "staging"), target: filepath.Join(dir, id, "pod", "dev")}
	if _, err := c.Node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: a.staging, VolumeCapability: blockCapability()}); err != nil {
		t.Fatalf("NodeStageVolume %s: %v", id, err)
	}
	if _, err := c.Node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: a.staging, TargetPath: a.target, VolumeCapability: blockCapability()}); err != nil {
		t.Fatalf("NodePublishVolume %s: %v", id, err)
	}
	return a
}

func (a *blockAttachment) detach(ctx context.Context, c *harness.Child) error {
	if _, err := c.Node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: a.id, TargetPath: a.target}); err != nil {
		return fmt.Errorf("NodeUnpublishVolume %s: %w", a.id, err)
	}
	if _, err := c.Node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: a.id, StagingTargetPath: a.staging}); err != nil {
		return fmt.Errorf("NodeUnstageVolume %s: %w", a.id, err)
	}
	return nil
}

// mountsUnder lists the mount points below dir.
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	for s := bufio.NewScanner(f); s.Scan(); {
		if fields := strings.Fields(s.Text()); len(fields) > 4 && strings.HasPrefix(fields[4], dir+"/") {
			out = append(out, fields[4])
		}
	}
	return out
}

// alignedBlock is a mdWrite-byte buffer aligned for O_DIRECT.
func alignedBlock(fill byte) []byte {
	buf := make([]byte, 2*mdWrite)
	off := int(mdWrite-uintptr(unsafe.Pointer(&buf[0]))%mdWrite) % mdWrite
	b := buf[off : off+mdWrite]
	for i := range b {
		b[i] = fill + byte(i)
	}
	return b
}

// directIO reads or writes one aligned block at off with O_DIRECT, so
// the answer comes from dm-thin and not from the page cache.
func directIO(dev string, write bool, off int64) error {
	flag := os.O_RDONLY
	if write {
		flag = os.O_WRONLY
	}
	f, err := os.OpenFile(dev, flag|unix.O_DIRECT, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := alignedBlock(3)
	if write {
		_, err = f.WriteAt(buf, off)
	} else {
		_, err = f.ReadAt(buf, off)
	}
	return err
}

// fillOutcome is how a metadata fill ended.
type fillOutcome struct {
	writes   int64         // writes that succeeded: one new mapping each
	firstErr error         // the first failing write's error
	failTook time.Duration // how long the slowest failing write took
	elapsed  time.Duration
}

// fillMappings writes mdWrite bytes at every chunk of every device with
// O_DIRECT (no page cache: each write reaches dm-thin at once and maps
// one chunk) until a write fails. perDevice writers share each device,
// interleaved, so that dm-thin always has bios queued.
func fillMappings(t *testing.T, devices []string, sizeBytes int64, perDevice int, progress func(writes int64)) fillOutcome {
	var (
		writes atomic.Int64
		stop   atomic.Bool
		mu     sync.Mutex
		out    fillOutcome
		wg     sync.WaitGroup
		chunks = sizeBytes / mdChunk
		start  = time.Now()
	)
	failed := func(err error, took time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		if out.firstErr == nil {
			out.firstErr = err
		}
		out.failTook = max(out.failTook, took)
		stop.Store(true)
	}
	for d, dev := range devices {
		f, err := os.OpenFile(dev, os.O_WRONLY|unix.O_DIRECT, 0)
		if err != nil {
			t.Fatalf("open %s: %v", dev, err)
		}
		defer f.Close()
		for w := range perDevice {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := alignedBlock(byte(d*perDevice + w))
				for i := int64(w); i < chunks && !stop.Load(); i += int64(perDevice) {
					s := time.Now()
					if _, err := f.WriteAt(buf, i*mdChunk); err != nil {
						failed(fmt.Errorf("write chunk %d of %s: %w", i, dev, err), time.Since(s))
						return
					}
					writes.Add(1)
				}
			}()
		}
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-done:
			out.writes, out.elapsed = writes.Load(), time.Since(start)
			if out.firstErr == nil {
				out.firstErr = errors.New("every chunk was written: the metadata never ran out")
			}
			return out
		case <-tick.C:
			progress(writes.Load())
		}
	}
}

// stuckProcesses lists user processes in uninterruptible sleep (D): a
// task blocked on a queued thin write looks like that, and neither kill
// nor unmount can end it.
func stuckProcesses() []string {
	var stuck []string
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		stat, err := os.ReadFile(filepath.Join(d, "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ...: comm may contain spaces and parentheses.
		i := strings.LastIndexByte(string(stat), ')')
		if i < 0 || i+2 >= len(stat) || stat[i+2] != 'D' {
			continue
		}
		if cmd, _ := os.ReadFile(filepath.Join(d, "cmdline")); len(cmd) == 0 {
			continue // a kernel thread
		}
		stuck = append(stuck, string(stat[:i+1]))
	}
	return stuck
}

// rpcResult is one CSI call on the full pool, for the report.
type rpcResult struct {
	name string
	code codes.Code
	msg  string
	took time.Duration
}

// TestMetadataExhaustionLVM runs a thin pool's metadata out for real:
// 2 MiB of metadata, 64 KiB chunks, and 4 KiB O_DIRECT writes at every
// chunk of four overprovisioned raw block volumes, published through the
// driver, until writes fail. Writes into existing volumes allocate
// mappings whatever the driver's guards refuse, so any node can get
// there. It checks what dm-thin does (the failing write is bounded, the
// pool stops writing, no process hangs), that every CSI call answers
// within its deadline with a code a client can act on and that volume
// health says what happened, and that the operator's procedure
// (docs/lvm-metadata.md: deactivate, grow the metadata, activate) gives
// back a pool where deleting data frees metadata and creating and
// snapshotting volumes work again.
//
// With the driver's --zero n the kernel (6.1 in the VM) does not stop in
// its recoverable out-of-metadata-space mode: the write that finds the
// metadata full inserts its mapping after the pool went read-only, the
// insert fails and the pool goes to Fail mode, where every read and
// write of every volume fails. The test accepts either mode and checks
// each one's consequences.
func TestMetadataExhaustionLVM(t *testing.T) {
	testStart := time.Now()
	p := newMetadataPool(t, "csithin_mdfull")
	fresh := poolStatus(t, p)
	t.Logf("fresh pool (dmsetup): %s", fresh.raw)
	if fresh.metaTotal*4*kiB != mdMetadata || !fresh.errorFull || fresh.mode != "rw" {
		t.Fatalf("pool: %d metadata blocks, error_if_no_space=%v, mode %s; want %d, true, rw", fresh.metaTotal, fresh.errorFull, fresh.mode, mdMetadata/(4*kiB))
	}
	dir := t.TempDir()
	c := harness.Start(t, harness.Options{Dir: dir, Config: childConfig(t, p.cfg), Verbosity: 2})
	defer c.Stop(t)
	ctx := context.Background()

	var ids, devices []string
	var attachments []*blockAttachment
	detachAll := func() {
		for _, a := range attachments {
			if err := a.detach(context.Background(), c); err != nil {
				t.Errorf("detach: %v", err)
			}
		}
		attachments = nil
	}
	defer detachAll()
	for i := range mdFillers {
		v, err := createBlock(ctx, c, fmt.Sprintf("filler-%d", i), mdFillerBytes, nil)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, v.GetVolumeId())
		a := attachBlock(t, c, v.GetVolumeId(), dir)
		attachments = append(attachments, a)
		devices = append(devices, a.target)
	}
	// A small volume and its snapshot, to delete on the full pool.
	victim, err := createBlock(ctx, c, "victim", 16*backend.MiB, nil)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := c.CreateSnapshot(ctx, "victim-snap", victim.GetVolumeId())
	if err != nil {
		t.Fatal(err)
	}
	setupTook := time.Since(testStart)

	_, logStart := kernelLog(t, 0)
	out := fillMappings(t, devices, mdFillerBytes, mdWritersPerVolume, func(n int64) {
		s := poolStatus(t, p)
		t.Logf("fill: %d writes, metadata %d/%d blocks, data %d/%d chunks, %s", n, s.metaUsed, s.metaTotal, s.dataUsed, s.dataTotal, s.mode)
	})
	full := poolStatus(t, p)
	t.Logf("metadata full after %d mapping writes (%d MiB of chunks) in %s (%.0f writes/s); first failure: %v; slowest failing write %s",
		out.writes, out.writes*mdChunk>>20, out.elapsed.Round(time.Millisecond), float64(out.writes)/out.elapsed.Seconds(),
		out.firstErr, out.failTook.Round(time.Microsecond))
	t.Logf("full pool (dmsetup): %s", full.raw)
	kernel, _ := kernelLog(t, logStart)
	for _, l := range kernel {
		t.Logf("kernel: %s", l)
	}
	for _, lv := range listLVs(t, p.cfg.VG) {
		if lv.Name == p.cfg.ThinPool {
			t.Logf("full pool (lvs): attr %s, data %q%%, metadata %q%%", lv.Attr, lv.Data, lv.Meta)
		}
	}
	if !errors.Is(out.firstErr, unix.EIO) {
		t.Fatalf("the write that found the metadata full failed with %v, want EIO", out.firstErr)
	}
	if out.failTook > 5*time.Second {
		t.Errorf("the failing write took %s: it was queued, not failed", out.failTook)
	}
	if !strings.Contains(strings.Join(kernel, "\n"), "No free metadata blocks") {
		t.Errorf("the kernel did not report the metadata full")
	}
	if out.writes >= fresh.dataTotal/2 {
		t.Errorf("%d of %d chunks were mapped: the data area, not the metadata, was the limit", out.writes, fresh.dataTotal)
	}
	if full.mode != "ro" && full.mode != "Fail" {
		t.Fatalf("pool mode after the metadata ran out is %q, want ro (out of metadata space) or Fail", full.mode)
	}
	if s := stuckProcesses(); len(s) > 0 {
		t.Errorf("processes stuck in D state on the full pool: %v", s)
	}
	// What running pods see. A mapped chunk needs no new metadata: in
	// read-only mode it stays readable and writable; in Fail mode every
	// I/O of every volume fails.
	for _, io := range []struct {
		name  string
		write bool
	}{{"read", false}, {"overwrite", true}} {
		err := directIO(devices[0], io.write, 0)
		t.Logf("%s of a mapped chunk in %s mode: %v", io.name, full.mode, err)
		if full.mode == "Fail" && !errors.Is(err, unix.EIO) || full.mode == "ro" && err != nil {
			t.Errorf("%s of a mapped chunk in %s mode: %v", io.name, full.mode, err)
		}
	}

	// Every CSI call, each with the sidecars' deadline. LVM reports no
	// fill levels for a failed pool, but the driver names metadata as the
	// usual cause in both modes and points at the recovery procedure.
	names := func(msg string) bool {
		return strings.Contains(msg, "metadata") && strings.Contains(msg, "docs/lvm-metadata.md")
	}
	const problem = `"metadata" and docs/lvm-metadata.md`
	var results []rpcResult
	call := func(name string, f func(ctx context.Context) error) error {
		ctx, cancel := context.WithTimeout(context.Background(), mdDeadline)
		defer cancel()
		s := time.Now()
		err := f(ctx)
		r := rpcResult{name: name, code: status.Code(err), msg: status.Convert(err).Message(), took: time.Since(s)}
		results = append(results, r)
		if r.took >= mdDeadline || r.code == codes.DeadlineExceeded || r.code == codes.Unknown {
			t.Errorf("%s on the full pool: %v after %s: want a clear answer within %s", name, err, r.took, mdDeadline)
		}
		return err
	}
	refused := func(name string, err error) {
		if status.Code(err) != codes.ResourceExhausted || !names(status.Convert(err).Message()) {
			t.Errorf("%s on the full pool: %v, want ResourceExhausted naming %s", name, err, problem)
		}
	}
	ok := func(name string, err error) {
		if err != nil {
			t.Errorf("%s on the full pool: %v", name, err)
		}
	}
	refused("CreateVolume", call("CreateVolume", func(ctx context.Context) error {
		_, err := createBlock(ctx, c, "one-too-many", 16*backend.MiB, nil)
		return err
	}))
	refused("CreateSnapshot", call("CreateSnapshot", func(ctx context.Context) error {
		_, err := c.CreateSnapshot(ctx, "snap-of-full", ids[0])
		return err
	}))
	refused("CreateVolume (clone)", call("CreateVolume (clone)", func(ctx context.Context) error {
		_, err := createBlock(ctx, c, "clone-of-full", 16*backend.MiB, volumeSource(victim.GetVolumeId()))
		return err
	}))
	refused("ControllerExpandVolume", call("ControllerExpandVolume", func(ctx context.Context) error {
		_, err := c.Controller.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: victim.GetVolumeId(),
			CapacityRange: &csi.CapacityRange{RequiredBytes: 32 * backend.MiB}, VolumeCapability: blockCapability()})
		return err
	}))
	ok("ControllerListVolumeHealth", call("ControllerListVolumeHealth", func(ctx context.Context) error {
		h, err := c.Controller.ControllerListVolumeHealth(ctx, &csi.ControllerListVolumeHealthRequest{})
		if n := len(h.GetEntries()); err == nil && n != mdFillers+1 {
			t.Errorf("ControllerListVolumeHealth listed %d volumes, want %d", n, mdFillers+1)
		}
		for _, e := range h.GetEntries() {
			if hs := e.GetHealthStatuses(); len(hs) == 0 || !names(hs[0].GetMessage()) || hs[0].GetReason() == "" {
				t.Errorf("volume %s on the full pool: health %v, want abnormal with a reason, naming %s", e.GetVolumeId(), hs, problem)
			} else if e.GetVolumeId() == ids[0] {
				t.Logf("volume health on the full pool: %s reason=%q: %s", hs[0].GetStatus(), hs[0].GetReason(), hs[0].GetMessage())
			}
		}
		return err
	}))
	ok("ControllerGetVolumeHealth", call("ControllerGetVolumeHealth", func(ctx context.Context) error {
		h, err := c.Controller.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: ids[1]})
		if err == nil && len(h.GetVolumeHealth().GetHealthStatuses()) == 0 {
			t.Errorf("ControllerGetVolumeHealth: a volume on the full pool reports healthy")
		}
		return err
	}))
	ok("NodeGetVolumeHealth", call("NodeGetVolumeHealth", func(ctx context.Context) error {
		h, err := c.Node.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: ids[0], VolumePublishPath: attachments[0].target})
		if err == nil && len(h.GetVolumeHealth().GetHealthStatuses()) == 0 {
			t.Errorf("NodeGetVolumeHealth: a volume on the full pool reports healthy")
		}
		return err
	}))
	ok("NodeGetStorageHealth", call("NodeGetStorageHealth", func(ctx context.Context) error {
		h, err := c.Node.NodeGetStorageHealth(ctx, &csi.NodeGetStorageHealthRequest{})
		if bh := h.GetBackendHealth(); err == nil && (len(bh) == 0 || !names(bh[0].GetMessage())) {
			t.Errorf("NodeGetStorageHealth on the full pool: %v, want unhealthy naming %s", bh, problem)
		}
		return err
	}))
	ok("Probe", call("Probe", func(ctx context.Context) error {
		pr, err := c.Identity.Probe(ctx, &csi.ProbeRequest{})
		t.Logf("Probe on the full pool: ready=%v", pr.GetReady().GetValue())
		return err
	}))
	ok("GetCapacity", call("GetCapacity", func(ctx context.Context) error {
		cp, err := c.Controller.GetCapacity(ctx, &csi.GetCapacityRequest{})
		if err == nil && cp.GetAvailableCapacity() != 0 {
			t.Errorf("GetCapacity on the full pool: %d bytes available, want 0", cp.GetAvailableCapacity())
		}
		return err
	}))
	ok("ListVolumes", call("ListVolumes", func(ctx context.Context) error {
		l, err := c.Controller.ListVolumes(ctx, &csi.ListVolumesRequest{})
		if n := len(l.GetEntries()); err == nil && n != mdFillers+1 {
			t.Errorf("ListVolumes listed %d volumes, want %d", n, mdFillers+1)
		}
		return err
	}))
	ok("ListSnapshots", call("ListSnapshots", func(ctx context.Context) error {
		l, err := c.Controller.ListSnapshots(ctx, &csi.ListSnapshotsRequest{})
		if n := len(l.GetEntries()); err == nil && n != 1 {
			t.Errorf("ListSnapshots listed %d snapshots, want 1", n)
		}
		return err
	}))
	ok("NodeGetVolumeStats", call("NodeGetVolumeStats", func(ctx context.Context) error {
		s, err := c.Node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: ids[0], VolumePath: attachments[0].target})
		if err == nil && (len(s.GetUsage()) == 0 || s.GetUsage()[0].GetTotal() != mdFillerBytes) {
			t.Errorf("NodeGetVolumeStats on the full pool: %v, want a total of %d bytes", s.GetUsage(), int64(mdFillerBytes))
		}
		return err
	}))
	// A delete is a message to the pool, which a pool in ro or Fail mode
	// refuses. LVM has by then dropped the LV from its own metadata and
	// queued the message for the pool's next activation, so a retry finds
	// nothing to delete; after recovery the device must be gone too.
	for _, d := range []struct {
		name string
		f    func(ctx context.Context) error
	}{
		{"DeleteSnapshot", func(ctx context.Context) error { return c.DeleteSnapshot(ctx, snap.GetSnapshotId()) }},
		{"DeleteVolume", func(ctx context.Context) error { return c.DeleteVolume(ctx, victim.GetVolumeId()) }},
		{"DeleteVolume (retry)", func(ctx context.Context) error { return c.DeleteVolume(ctx, victim.GetVolumeId()) }},
	} {
		// LVM's refusal on a ro or failed pool is Unavailable: the
		// provisioner retries, and the retry finds the LV gone.
		if err := call(d.name, d.f); err != nil && status.Code(err) != codes.Unavailable {
			t.Errorf("%s on the %s pool: %v, want success or Unavailable", d.name, full.mode, err)
		}
	}
	var slowest time.Duration
	for _, r := range results {
		msg, _, _ := strings.Cut(r.msg, "\n")
		t.Logf("full pool: %-26s %-17s %6s  %.300s", r.name, r.code, r.took.Round(time.Millisecond), msg)
		slowest = max(slowest, r.took)
	}
	t.Logf("full pool: slowest call %s", slowest.Round(time.Millisecond))

	// Unpublishing from the full pool must not hang either, and must
	// leave no mount behind.
	s := time.Now()
	detachAll()
	t.Logf("unpublish and unstage of %d volumes on the full pool: %s", mdFillers, time.Since(s).Round(time.Millisecond))
	if m := mountsUnder(t, dir); len(m) > 0 {
		t.Errorf("mounts left after unpublish and unstage: %v", m)
	}
	if s := stuckProcesses(); len(s) > 0 {
		t.Errorf("processes stuck in D state after the calls: %v", s)
	}

	// The operator's recovery (docs/lvm-metadata.md). The driver's pool
	// takes the whole VG, so the metadata (and LVM's spare copy of it,
	// which grows along) first needs a new PV. LVM refuses to touch an
	// active pool in Fail mode, so everything is deactivated, the
	// metadata grown, and the pool activated again (LVM runs thin_check
	// on the way).
	recStart := time.Now()
	pool := p.cfg.VG + "/" + p.cfg.ThinPool
	p.extraFile = filepath.Join(filepath.Dir(p.cfg.LoopFile), p.cfg.VG+"-extra.img")
	p.extraDev = attachSparse(t, p.extraFile, 64*backend.MiB)
	lvm(t, "pvcreate", p.extraDev)
	lvm(t, "vgextend", p.cfg.VG, p.extraDev)
	lvm(t, "vgchange", "--activate", "n", p.cfg.VG)
	lvm(t, "lvextend", "--poolmetadatasize", "+8m", pool)
	lvm(t, "lvchange", "--activate", "y", pool)
	grown := poolStatus(t, p)
	t.Logf("after vgextend, vgchange -an, lvextend --poolmetadatasize +8m, lvchange -ay (%s): %s", time.Since(recStart).Round(time.Millisecond), grown.raw)
	if grown.mode != "rw" || grown.needsCheck || grown.metaTotal*4*kiB != mdMetadata+8*backend.MiB {
		t.Fatalf("pool after recovery: mode %s, needs_check %v, %d metadata blocks; want rw, false, %d", grown.mode, grown.needsCheck, grown.metaTotal, (mdMetadata+8*backend.MiB)/(4*kiB))
	}
	// The deletes LVM queued on the full pool reached the kernel when the
	// pool was activated: both count the same transactions.
	if lvmTx := strings.TrimSpace(string(lvm(t, "lvs", "--noheadings", "-o", "transaction_id", pool))); lvmTx != strconv.FormatInt(grown.transaction, 10) {
		t.Errorf("LVM's transaction_id %s, the kernel's %d: the queued deletes were lost", lvmTx, grown.transaction)
	}
	if err := c.DeleteVolume(ctx, victim.GetVolumeId()); err != nil {
		t.Errorf("after recovery: %v", err)
	}
	if err := c.DeleteSnapshot(ctx, snap.GetSnapshotId()); err != nil {
		t.Errorf("after recovery: %v", err)
	}
	for _, id := range ids {
		if err := c.DeleteVolume(ctx, id); err != nil {
			t.Errorf("after recovery: %v", err)
		}
	}
	cleaned := poolStatus(t, p)
	t.Logf("after deleting the fillers: %s", cleaned.raw)
	if cleaned.dataUsed*100 > grown.dataUsed || cleaned.metaUsed >= grown.metaUsed/2 {
		t.Errorf("deleting every volume left %d chunks and %d of %d metadata blocks in use", cleaned.dataUsed, cleaned.metaUsed, grown.metaUsed)
	}
	v, err := createBlock(ctx, c, "after-recovery", 64*backend.MiB, nil)
	if err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	a := attachBlock(t, c, v.GetVolumeId(), dir)
	attachments = append(attachments, a)
	if w := fillMappings(t, []string{a.target}, 16*backend.MiB, 1, func(int64) {}); w.writes != 16*backend.MiB/mdChunk {
		t.Errorf("after recovery a new volume took %d of %d writes: %v", w.writes, 16*backend.MiB/mdChunk, w.firstErr)
	}
	detachAll()
	if _, err := c.CreateSnapshot(ctx, "after-recovery-snap", v.GetVolumeId()); err != nil {
		t.Errorf("after recovery: %v", err)
	}
	if _, err := createBlock(ctx, c, "after-recovery-clone", 64*backend.MiB, volumeSource(v.GetVolumeId())); err != nil {
		t.Errorf("after recovery: %v", err)
	}
	if h, err := c.Controller.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: v.GetVolumeId()}); err != nil || len(h.GetVolumeHealth().GetHealthStatuses()) > 0 {
		t.Errorf("volume health after recovery: %v, %v", h.GetVolumeHealth().GetHealthStatuses(), err)
	}
	if pr, err := c.Identity.Probe(ctx, &csi.ProbeRequest{}); err != nil || !pr.GetReady().GetValue() {
		t.Errorf("Probe after recovery: ready=%v, %v", pr.GetReady().GetValue(), err)
	}
	end := poolStatus(t, p)
	t.Logf("after recovery (dmsetup): %s", end.raw)
	if end.mode != "rw" || end.needsCheck {
		t.Errorf("pool at the end: mode %s, needs_check %v", end.mode, end.needsCheck)
	}
	t.Logf("times: setup %s, fill %s, recovery %s, total %s", setupTook.Round(time.Second), out.elapsed.Round(time.Second),
		time.Since(recStart).Round(time.Second), time.Since(testStart).Round(time.Second))
}
