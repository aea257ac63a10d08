package lvm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"

	"github.com/csi-thin/csi-thin/internal/csiclient"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/command"
	"github.com/csi-thin/csi-thin/test/reliability/harness"
)

// nodeFlags are the StorageClass mountOptions of every Node call here:
// per-mount flags, which a bind mount gets only from mount-utils' second
// mount(8) call.
var nodeFlags = []string{"nosuid", "nodev", "noexec", "noatime"}

// growBytes is what each expand point adds to its volume.
const growBytes = 64 * backend.MiB

// xfsBytes is the smallest size mkfs.xfs (≥ 5.19) accepts, rounded up.
const xfsBytes = 320 * backend.MiB

// nodeVol is one volume as kubelet lays it out on a node.
type nodeVol struct {
	name, id, staging, target string
	fsType                    string // "" for raw block
	size                      int64
	sum                       string // checksum of its data; "" while it holds none
	uuid                      string // its filesystem's UUID, once one was seen
	fsBytes                   int64  // statfs total before a NodeExpandVolume
}

func (v *nodeVol) capability() *csi.VolumeCapability {
	mode := &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}
	if v.fsType == "" {
		return &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}, AccessMode: mode}
	}
	return &csi.VolumeCapability{AccessMode: mode, AccessType: &csi.VolumeCapability_Mount{
		Mount: &csi.VolumeCapability_MountVolume{FsType: v.fsType, MountFlags: nodeFlags}}}
}

func nodeStage(ctx context.Context, v *nodeVol, c *csiclient.Client) error {
	_, err := c.Node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{
		VolumeId: v.id, StagingTargetPath: v.staging, VolumeCapability: v.capability()})
	return err
}

func nodePublish(ctx context.Context, v *nodeVol, c *csiclient.Client, readOnly bool) error {
	_, err := c.Node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
		VolumeId: v.id, StagingTargetPath: v.staging, TargetPath: v.target, Readonly: readOnly,
		VolumeCapability: v.capability()})
	return err
}

func nodeExpand(ctx context.Context, v *nodeVol, c *csiclient.Client) error {
	resp, err := c.Node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{
		VolumeId: v.id, VolumePath: v.target, StagingTargetPath: v.staging,
		CapacityRange: &csi.CapacityRange{RequiredBytes: v.size}, VolumeCapability: v.capability()})
	if err == nil && resp.GetCapacityBytes() != v.size {
		err = fmt.Errorf("NodeExpandVolume reports %d bytes, want %d", resp.GetCapacityBytes(), v.size)
	}
	return err
}

// nodePoint is one crash point: a SIGKILL before or after one command of
// the call (an LVM command through command.FaultRunner, or a tool that
// mount-utils runs itself, through the harness's stand-in), or after the
// call succeeded, before the reply.
type nodePoint struct {
	label, method string // method: the call, for the crash before its reply
	faults, tools []command.Fault
	reply         bool
}

func lvmCrash(kind command.FaultKind, cmd string) nodePoint {
	return nodePoint{label: string(kind) + " lvm " + cmd, faults: []command.Fault{{Kind: kind, Nth: 1, Match: "lvm " + cmd}}}
}

func toolCrash(kind command.FaultKind, tool string, nth int) nodePoint {
	return nodePoint{label: fmt.Sprintf("%s %s #%d", kind, tool, nth), tools: []command.Fault{{Kind: kind, Nth: nth, Match: tool}}}
}

var replyCrash = nodePoint{label: "before the reply", reply: true}

// nodeOp is one Node call and the crash points it is killed at.
//
// Every external command is covered, but not every "after k": the state
// after command k is the state before command k+1 (between them the Node
// code only parses output or creates a directory that the retry creates
// again), and after the last one it is the state of the crash before the
// reply. A read (lvs, blkid, and fsck of a clean filesystem) changes
// nothing, so a crash before it is the crash after the command before.
// Crash-after points remain where the next step is not another command:
// after the activation (the device appears; the next step is blkid),
// after mkfs (formatted but not mounted: the retry must mount and not
// format again) and after umount (unmounted, directory left).
type nodeOp struct {
	name, method string
	vol          func(n *nodeCrash) *nodeVol // the volume it runs on; nil: a fresh one per point (fsType)
	fsType       string
	inactive     bool // the LV is deactivated first, as after a node reboot
	setup        func(t *testing.T, n *nodeCrash, v *nodeVol, c *csiclient.Client)
	call         func(ctx context.Context, v *nodeVol, c *csiclient.Client) error
	// What must hold once the call succeeded.
	staged, published, readOnly, grown bool
	points                             []nodePoint
	// tools are the tool commands the whole call runs, checked at the
	// reply point (the one that runs the call to its end).
	tools []string
}

func nodeOps() []nodeOp {
	stage := func(ctx context.Context, v *nodeVol, c *csiclient.Client) error { return nodeStage(ctx, v, c) }
	staged := func(t *testing.T, n *nodeCrash, v *nodeVol, c *csiclient.Client) {
		harness.Must(t, "stage", nodeStage(context.Background(), v, c))
	}
	published := func(t *testing.T, n *nodeCrash, v *nodeVol, c *csiclient.Client) {
		if v.fsType != "" {
			staged(t, n, v, c)
		}
		harness.Must(t, "publish", nodePublish(context.Background(), v, c, false))
	}
	publishRW := func(ctx context.Context, v *nodeVol, c *csiclient.Client) error { return nodePublish(ctx, v, c, false) }
	unpublish := func(ctx context.Context, v *nodeVol, c *csiclient.Client) error {
		return c.Unpublish(ctx, v.id, v.target)
	}
	grown := func(t *testing.T, n *nodeCrash, v *nodeVol, c *csiclient.Client) {
		published(t, n, v, c)
		v.size += growBytes
		v.fsBytes = fsTotal(t, v.target)
		_, err := c.Controller.ControllerExpandVolume(context.Background(), &csi.ControllerExpandVolumeRequest{
			VolumeId: v.id, CapacityRange: &csi.CapacityRange{RequiredBytes: v.size}})
		harness.Must(t, "controller expand", err)
	}
	ext4 := func(n *nodeCrash) *nodeVol { return n.ext4 }
	xfs := func(n *nodeCrash) *nodeVol { return n.xfs }
	block := func(n *nodeCrash) *nodeVol { return n.block }
	before, after := command.FaultCrashBefore, command.FaultCrashAfter
	return []nodeOp{
		// A first stage of a fresh LV after a reboot: activate, blkid
		// (blank), mkfs, mount.
		{name: "stage", method: "NodeStageVolume", fsType: "ext4", inactive: true, call: stage, staged: true,
			points: []nodePoint{lvmCrash(before, "lvchange"), lvmCrash(after, "lvchange"),
				toolCrash(before, "mkfs.ext4", 1), toolCrash(after, "mkfs.ext4", 1), replyCrash},
			tools: []string{"blkid", "mkfs.ext4", "mount"}},
		// A stage of a formatted LV with data after a reboot: it must be
		// checked and mounted, never formatted again.
		{name: "restage", method: "NodeStageVolume", vol: ext4, inactive: true, call: stage, staged: true,
			points: []nodePoint{toolCrash(before, "fsck", 1), toolCrash(before, "mount", 1), replyCrash},
			tools:  []string{"blkid", "fsck", "mount"}},
		{name: "stage-xfs", method: "NodeStageVolume", fsType: "xfs", call: stage, staged: true,
			points: []nodePoint{toolCrash(before, "mkfs.xfs", 1), toolCrash(after, "mkfs.xfs", 1), replyCrash},
			tools:  []string{"blkid", "mkfs.xfs", "mount"}},
		// A bind mount is two mount(8) calls: bind, then remount with the
		// flags.
		{name: "publish", method: "NodePublishVolume", vol: ext4, setup: staged, call: publishRW,
			staged: true, published: true,
			points: []nodePoint{toolCrash(before, "mount", 1), toolCrash(after, "mount", 1), replyCrash},
			tools:  []string{"mount", "mount"}},
		{name: "publish-ro", method: "NodePublishVolume", vol: ext4, setup: staged,
			call: func(ctx context.Context, v *nodeVol, c *csiclient.Client) error {
				return nodePublish(ctx, v, c, true)
			},
			staged: true, published: true, readOnly: true,
			points: []nodePoint{toolCrash(before, "mount", 1), toolCrash(after, "mount", 1), replyCrash},
			tools:  []string{"mount", "mount"}},
		{name: "unpublish", method: "NodeUnpublishVolume", vol: ext4, setup: published, call: unpublish, staged: true,
			points: []nodePoint{toolCrash(before, "umount", 1), toolCrash(after, "umount", 1), replyCrash},
			tools:  []string{"umount"}},
		{name: "unstage", method: "NodeUnstageVolume", vol: ext4, setup: staged,
			call: func(ctx context.Context, v *nodeVol, c *csiclient.Client) error {
				return c.Unstage(ctx, v.id, v.staging)
			},
			points: []nodePoint{toolCrash(before, "umount", 1), toolCrash(after, "umount", 1), replyCrash},
			tools:  []string{"umount"}},
		// The LV was grown by ControllerExpandVolume; the node grows the
		// mounted filesystem (resize2fs takes the device, xfs_growfs the
		// mount point).
		{name: "expand", method: "NodeExpandVolume", vol: ext4, setup: grown, call: nodeExpand,
			staged: true, published: true, grown: true,
			points: []nodePoint{toolCrash(before, "resize2fs", 1), replyCrash},
			tools:  []string{"blkid", "resize2fs"}},
		{name: "expand-xfs", method: "NodeExpandVolume", vol: xfs, setup: grown, call: nodeExpand,
			staged: true, published: true, grown: true,
			points: []nodePoint{toolCrash(before, "xfs_growfs", 1), replyCrash},
			tools:  []string{"blkid", "xfs_growfs"}},
		// Raw block: stage does nothing (no command to crash at); publish
		// activates the LV and bind-mounts its device node on a file.
		{name: "publish-block", method: "NodePublishVolume", vol: block, inactive: true, call: publishRW, published: true,
			points: []nodePoint{lvmCrash(before, "lvchange"), lvmCrash(after, "lvchange"),
				toolCrash(before, "mount", 1), toolCrash(after, "mount", 1), replyCrash},
			tools: []string{"mount", "mount"}},
		// Killed between the bind and the remount, a read-only publish
		// would be left without its "ro".
		{name: "publish-block-ro", method: "NodePublishVolume", vol: block,
			call: func(ctx context.Context, v *nodeVol, c *csiclient.Client) error {
				return nodePublish(ctx, v, c, true)
			},
			published: true, readOnly: true,
			points: []nodePoint{toolCrash(before, "mount", 1), toolCrash(after, "mount", 1), replyCrash},
			tools:  []string{"mount", "mount"}},
		{name: "unpublish-block", method: "NodeUnpublishVolume", vol: block, setup: published, call: unpublish,
			points: []nodePoint{toolCrash(before, "umount", 1), toolCrash(after, "umount", 1), replyCrash},
			tools:  []string{"umount"}},
	}
}

// nodeCrash is the state of TestNodeCrashAtEveryStepLVM.
type nodeCrash struct {
	vg, config string
	dir        string // the driver children's socket and log
	root       string // kubelet's directory: every staging and target path
	// bystander stays staged and published throughout: no crash of a
	// call on another volume may touch it.
	bystander        *nodeVol
	ext4, xfs, block *nodeVol // volumes with data that several ops reuse
	lvs              map[string]bool
	n                int
	child            *harness.Child // the last one started
}

// TestNodeCrashAtEveryStepLVM is TestNodeCrashAtEveryStep of the btrfs
// suite on a dm-thin pool, where the Node calls do the work: activate the
// LV, format it (ext4 or xfs, on first stage only), mount the device, bind
// it into the pod, grow the filesystem; and raw block publish. It SIGKILLs
// the driver before or after each of these commands and before each
// reply, restarts it, checks that no mount leaked, stacked or moved and
// no data or filesystem changed, retries the call twice, and checks
// exactly the mounts the call must leave, with their flags, the data
// through them, the filesystem's size after an expand, the same
// filesystem (UUID) as before the crash, and the LVs of the pool.
func TestNodeCrashAtEveryStepLVM(t *testing.T) {
	_, cfg := newPool(t, "csithin_node", 2*backend.GiB, nil)
	n := &nodeCrash{vg: cfg.VG, config: childConfig(t, cfg), dir: t.TempDir(), root: t.TempDir(), lvs: map[string]bool{}}
	// After a failure, leave the pool to its teardown as a node leaves
	// it: no driver, nothing mounted (cleanups run last-in first-out).
	t.Cleanup(func() {
		if n.child != nil && !n.child.Exited() {
			n.child.Stop(t)
		}
		mounts := harness.MountsUnder(t, n.root)
		paths := slices.Sorted(maps.Keys(mounts))
		slices.Reverse(paths) // a path's mounts before its parent's
		for _, p := range paths {
			for range mounts[p] {
				if err := unix.Unmount(p, 0); err != nil {
					t.Errorf("clean up mount %s: %v", p, err)
				}
			}
		}
	})
	ctx := context.Background()
	c := n.start(t, nodePoint{})
	n.bystander = n.newVolume(t, c.Client, "bystander", "ext4", volBytes)
	harness.Must(t, "stage bystander", nodeStage(ctx, n.bystander, c.Client))
	harness.Must(t, "publish bystander", nodePublish(ctx, n.bystander, c.Client, false))
	n.bystander.sum = harness.WriteData(t, n.bystander.target, "bystander", 2, 256<<10)
	n.ext4 = n.newVolume(t, c.Client, "ext4", "ext4", volBytes)
	n.xfs = n.newVolume(t, c.Client, "xfs", "xfs", xfsBytes)
	for _, v := range []*nodeVol{n.ext4, n.xfs} {
		harness.Must(t, "stage "+v.name, nodeStage(ctx, v, c.Client))
		v.sum = harness.WriteData(t, v.staging, v.name, 2, 256<<10)
		v.uuid = fsUUID(t, n.device(v))
		harness.Must(t, "unstage "+v.name, c.Unstage(ctx, v.id, v.staging))
	}
	n.block = n.newVolume(t, c.Client, "block", "", volBytes)
	n.block.sum = writeDevice(t, n.device(n.block), "block")

	start := time.Now()
	var points, kills int
	for _, op := range nodeOps() {
		if n.child.Exited() {
			t.Fatal("stopped: the driver is gone after a failed point")
		}
		t.Run(op.name, func(t *testing.T) {
			opStart := time.Now()
			k := n.run(t, op)
			points, kills = points+len(op.points), kills+k
			t.Logf("%s: %d crash points, %d SIGKILLs survived, %s", op.name, len(op.points), k, time.Since(opStart).Round(time.Second))
		})
	}
	c = n.child
	if c.Exited() {
		t.Fatal("stopped: the driver is gone after a failed point")
	}
	n.check(t, "end", nil)
	harness.Must(t, "unpublish bystander", c.Unpublish(ctx, n.bystander.id, n.bystander.target))
	harness.Must(t, "unstage bystander", c.Unstage(ctx, n.bystander.id, n.bystander.staging))
	if got := harness.MountsUnder(t, n.root); len(got) > 0 {
		t.Errorf("mounts left after the last unstage: %v", got)
	}
	c.Stop(t)
	t.Logf("lvm node crash suite: %d crash points, %d SIGKILLs in %s", points, kills, time.Since(start).Round(time.Second))
}

func (n *nodeCrash) start(t *testing.T, p nodePoint) *harness.Child {
	t.Helper()
	crashReply := ""
	if p.reply {
		crashReply = p.method
	}
	n.child = harness.Start(t, harness.Options{Dir: n.dir, Config: n.config, Faults: p.faults, MountFaults: p.tools,
		RecordTools: p.reply, CrashReply: crashReply, Verbosity: 4})
	return n.child
}

// newVolume creates a volume and kubelet-style paths for it.
func (n *nodeCrash) newVolume(t *testing.T, c *csiclient.Client, name, fsType string, size int64) *nodeVol {
	t.Helper()
	access := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	v := &nodeVol{name: name, fsType: fsType, size: size}
	access.AccessType = v.capability().AccessType
	resp, err := c.Controller.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
		Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeCapabilities: []*csi.VolumeCapability{access}})
	harness.Must(t, "create "+name, err)
	v.id = resp.GetVolume().GetVolumeId()
	n.lvs[v.id] = true
	dir := filepath.Join(n.root, name)
	harness.Must(t, "kubelet dir", os.MkdirAll(dir, 0o750))
	v.staging, v.target = filepath.Join(dir, "globalmount"), filepath.Join(dir, "mount")
	return v
}

// device is the LV's device node; it exists while the LV is active.
func (n *nodeCrash) device(v *nodeVol) string { return "/dev/" + n.vg + "/" + v.id }

// run goes through the crash points of op and returns the SIGKILLs. It
// keeps one healthy child between points, which checks one and sets up
// the next (in the TCG VM a driver start costs seconds): n.child, when
// run starts and ends.
func (n *nodeCrash) run(t *testing.T, op nodeOp) int {
	kills, clean := 0, n.child
	for _, p := range op.points {
		p.method = op.method
		n.n++
		label := op.name + ": " + p.label
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		v := n.volumeFor(t, op, clean.Client)
		if op.inactive {
			lvm(t, "lvchange", "--activate", "n", n.vg+"/"+v.id)
		}
		if op.setup != nil {
			op.setup(t, n, v, clean.Client)
		}
		clean.Stop(t)
		c := n.start(t, p)
		if err := op.call(ctx, v, c.Client); err == nil {
			c.Stop(t)
			t.Fatalf("[%s] the crash point did not fire: the call no longer runs that step", label)
		} else if !c.WaitKilled(t) {
			t.Fatalf("[%s] call failed without a crash: %v\n%s", label, err, c.LogTail())
		}
		kills++
		if p.reply {
			if got := firstWords(harness.MountCalls(n.dir)); !reflect.DeepEqual(got, op.tools) {
				t.Errorf("[%s] the call ran the tools %q, want %q (update the crash points)", op.name, got, op.tools)
			}
		}

		clean = n.start(t, nodePoint{})
		n.check(t, label+", after restart", v)
		clean.RetryTwice(t, label, func(c *csiclient.Client) error { return op.call(ctx, v, c) })
		n.want(t, label, v, op)
		// Leave nothing for the next point: a full unpublish and unstage
		// must clean up whatever the crash and the retries left.
		harness.Must(t, "unpublish", clean.Unpublish(ctx, v.id, v.target))
		harness.Must(t, "unstage", clean.Unstage(ctx, v.id, v.staging))
		n.check(t, label+", after unstage", nil)
		if op.vol == nil {
			harness.Must(t, "delete", clean.DeleteVolume(ctx, v.id))
			delete(n.lvs, v.id)
			harness.Must(t, "remove kubelet dir", os.Remove(filepath.Dir(v.staging)))
		}
		n.checkLVs(t, label)
		cancel()
	}
	return kills
}

func (n *nodeCrash) volumeFor(t *testing.T, op nodeOp, c *csiclient.Client) *nodeVol {
	if op.vol != nil {
		return op.vol(n)
	}
	size := volBytes
	if op.fsType == "xfs" {
		size = xfsBytes
	}
	return n.newVolume(t, c, fmt.Sprintf("%s-%d", op.name, n.n), op.fsType, size)
}

// check holds at every moment, even right after a crash: nothing is
// mounted under kubelet's directory but the staging and target paths of
// the bystander and (when given) of the volume under test, none twice;
// the devices of both are mounted nowhere else; the bystander's data is
// intact, and so are v's data and filesystem where they can be seen.
func (n *nodeCrash) check(t *testing.T, label string, v *nodeVol) {
	t.Helper()
	vols := []*nodeVol{n.bystander}
	if v != nil {
		vols = append(vols, v)
	}
	allowed := map[string]bool{}
	for _, x := range vols {
		allowed[x.staging], allowed[x.target] = true, true
	}
	got := harness.MountsUnder(t, n.root)
	for path, entries := range got {
		if !allowed[path] {
			t.Errorf("[%s] unexpected mount at %s", label, path)
		}
		if len(entries) > 1 {
			t.Errorf("[%s] %d mounts stacked at %s", label, len(entries), path)
		}
	}
	for _, p := range []string{n.bystander.staging, n.bystander.target} {
		if len(got[p]) != 1 {
			t.Errorf("[%s] bystander's %s has %d mounts, want 1", label, p, len(got[p]))
		}
	}
	for _, x := range vols {
		for _, where := range n.mountsOfDevice(t, x) {
			if where != x.staging && where != x.target {
				t.Errorf("[%s] the device of %s is mounted at %s", label, x.name, where)
			}
		}
	}
	if got := harness.TreeSum(t, n.bystander.target); got != n.bystander.sum {
		t.Errorf("[%s] bystander's data changed", label)
	}
	if v == nil {
		return
	}
	dev := n.device(v)
	if _, err := os.Stat(dev); err != nil {
		return // inactive: a crash before the activation
	}
	if v.fsType == "" {
		if got := sumDevice(t, dev); got != v.sum {
			t.Errorf("[%s] data of %s changed", label, v.name)
		}
		return
	}
	if u := fsUUID(t, dev); v.uuid != "" && u != v.uuid {
		t.Errorf("[%s] %s holds another filesystem (UUID %q, was %q): formatted again", label, v.name, u, v.uuid)
	} else if v.uuid == "" {
		v.uuid = u // a crash after mkfs: the retry must keep this one
	}
	if len(got[v.staging]) == 1 && v.sum != "" {
		if sum := harness.TreeSum(t, v.staging); sum != v.sum {
			t.Errorf("[%s] data of %s changed", label, v.name)
		}
	}
}

// want checks the end state of a call that succeeded: exactly its mounts
// (and the bystander's), with the requested flags and filesystem, its data
// intact, and no path left where nothing is mounted.
func (n *nodeCrash) want(t *testing.T, label string, v *nodeVol, op nodeOp) {
	t.Helper()
	n.check(t, label, v)
	got := harness.MountsUnder(t, n.root)
	expect := func(path string, mounted bool, flags []string) {
		mi := harness.CheckMount(t, label, got, path, mounted, flags)
		if mi == nil || v.fsType == "" {
			return
		}
		if mi.FsType != v.fsType {
			t.Errorf("[%s] %s is %s, want %s", label, path, mi.FsType, v.fsType)
		}
		if !slices.Contains(mi.SuperOptions, "discard") {
			t.Errorf("[%s] %s is mounted without discard (%v)", label, path, mi.SuperOptions)
		}
	}
	targetFlags := nodeFlags
	if v.fsType == "" {
		targetFlags = nil // raw block: no mount flags
	}
	if op.readOnly {
		targetFlags = append([]string{"ro"}, targetFlags...)
	}
	if v.fsType != "" {
		expect(v.staging, op.staged, nodeFlags)
	}
	expect(v.target, op.published, targetFlags)

	switch {
	case v.fsType == "" && op.published:
		if got := sumDevice(t, v.target); got != v.sum {
			t.Errorf("[%s] data seen through %s differs from the volume's", label, v.target)
		}
		// No write probe: the kernel lets a device node on a read-only
		// mount be opened for writing (measured here: a read-only block
		// publish opens O_WRONLY). What keeps a pod from writing is
		// kubelet's device cgroup rule ("r" for a read-only volume); the
		// driver's part is the "ro" on the mount, checked above.
	case op.published:
		if got := harness.TreeSum(t, v.target); got != v.sum && v.sum != "" {
			t.Errorf("[%s] data seen through %s differs from the volume's", label, v.target)
		}
		harness.CheckWritable(t, label, v.target, op.readOnly)
	case op.staged:
		if v.sum == "" { // a fresh filesystem: empty and writable
			if got, empty := harness.TreeSum(t, v.staging), hex.EncodeToString(sha256.New().Sum(nil)); got != empty {
				t.Errorf("[%s] a freshly formatted %s holds files", label, v.staging)
			}
			if err := harness.ProbeWrite(v.staging); err != nil {
				t.Errorf("[%s] write into a fresh staging mount: %v", label, err)
			}
		} else if got := harness.TreeSum(t, v.staging); got != v.sum {
			t.Errorf("[%s] data seen through %s differs from the volume's", label, v.staging)
		}
	}
	if op.grown {
		if size := deviceBytes(t, n.device(v)); size != v.size {
			t.Errorf("[%s] the LV is %d bytes, want %d", label, size, v.size)
		}
		// statfs leaves out what the filesystem keeps for itself (the
		// xfs log; ext4's inode tables, which grow with it).
		if total := fsTotal(t, v.target); total < v.fsBytes+growBytes*7/8 {
			t.Errorf("[%s] the filesystem has %d bytes on a %d-byte LV, %d before a %d-byte growth: not grown",
				label, total, v.size, v.fsBytes, growBytes)
		}
	}
}

// checkLVs: the Node calls make no LV, so the pool holds exactly the
// volumes of the test, none half made.
func (n *nodeCrash) checkLVs(t *testing.T, label string) {
	t.Helper()
	var got []string
	for _, lv := range listLVs(t, n.vg) {
		if halfMade(lv) {
			t.Errorf("[%s] half-made LV %s", label, lv.Name)
		}
		if strings.Contains(lv.Tags, tagOwned) && backend.IsVolumeID(lv.Name) {
			got = append(got, lv.Name)
		}
	}
	if got, want := harness.Sorted(got), harness.SortedKeys(n.lvs); !reflect.DeepEqual(got, want) {
		t.Errorf("[%s] LVs %v, want %v", label, got, want)
	}
}

// mountsOfDevice lists every mount point, anywhere, that shows v's
// device: its filesystem, or for raw block the device node bind-mounted
// on a file (a devtmpfs mount whose root is the node).
func (n *nodeCrash) mountsOfDevice(t *testing.T, v *nodeVol) []string {
	t.Helper()
	real, err := filepath.EvalSymlinks(n.device(v))
	if err != nil {
		return nil // inactive: nothing can be mounted
	}
	var st unix.Stat_t
	harness.Must(t, "stat "+real, unix.Stat(real, &st))
	infos, err := mount.ParseMountInfo("/proc/self/mountinfo")
	harness.Must(t, "read mount table", err)
	var out []string
	for _, mi := range infos {
		if v.fsType != "" && mi.Major == int(unix.Major(st.Rdev)) && mi.Minor == int(unix.Minor(st.Rdev)) ||
			v.fsType == "" && mi.FsType == "devtmpfs" && mi.Root == strings.TrimPrefix(real, "/dev") {
			out = append(out, mi.MountPoint)
		}
	}
	return out
}

// fsUUID is the UUID of the filesystem on dev, "" for none, read by a
// low-level probe (the blkid cache could be stale after a crash).
func fsUUID(t *testing.T, dev string) string {
	t.Helper()
	res, err := host.Run(context.Background(), "blkid", "-p", "-s", "UUID", "-o", "value", dev)
	if res.ExitCode == 2 { // nothing found
		return ""
	}
	harness.Must(t, "blkid "+dev, err)
	return strings.TrimSpace(string(res.Stdout))
}

// writeDevice writes dataBytes of data seeded by seed at the start of a
// raw block device and returns their checksum.
func writeDevice(t *testing.T, dev, seed string) string {
	t.Helper()
	buf := make([]byte, dataBytes)
	block := sha256.Sum256([]byte(seed))
	for i := 0; i < len(buf); i += len(block) {
		block = sha256.Sum256(block[:])
		copy(buf[i:], block[:])
	}
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	harness.Must(t, "open "+dev, err)
	defer f.Close()
	_, err = f.Write(buf)
	harness.Must(t, "write "+dev, err)
	harness.Must(t, "sync "+dev, f.Sync())
	return sumDevice(t, dev)
}

// sumDevice hashes the first dataBytes of a block device (or of a file it
// is bind-mounted on).
func sumDevice(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	harness.Must(t, "open "+path, err)
	defer f.Close()
	h := sha256.New()
	_, err = io.CopyN(h, f, dataBytes)
	harness.Must(t, "read "+path, err)
	return hex.EncodeToString(h.Sum(nil))
}

// fsTotal is the size statfs reports for the filesystem mounted at dir.
func fsTotal(t *testing.T, dir string) int64 {
	t.Helper()
	var st unix.Statfs_t
	harness.Must(t, "statfs "+dir, unix.Statfs(dir, &st))
	return int64(st.Blocks) * st.Bsize
}

func deviceBytes(t *testing.T, dev string) int64 {
	t.Helper()
	f, err := os.Open(dev)
	harness.Must(t, "open "+dev, err)
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	harness.Must(t, "size of "+dev, err)
	return size
}

// firstWords keeps the command names of command lines.
func firstWords(lines []string) []string {
	var out []string
	for _, l := range lines {
		if f := strings.Fields(l); len(f) > 0 {
			out = append(out, f[0])
		}
	}
	return out
}
