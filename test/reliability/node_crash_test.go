package reliability

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/csi-thin/csi-thin/internal/csiclient"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/btrfs"
	"github.com/csi-thin/csi-thin/pkg/btrfs/btrfstest"
	"github.com/csi-thin/csi-thin/pkg/command"
	"github.com/csi-thin/csi-thin/test/reliability/harness"
)

// nodeFlags are the StorageClass mountOptions of every Node call here:
// per-mount flags, which a bind mount gets only from mount-utils' second
// mount(8) call, so a crash between the two can lose them.
var nodeFlags = []string{"nosuid", "nodev", "noexec", "noatime"}

// nodeVolume is one volume as kubelet lays it out on a node.
type nodeVolume struct {
	id, staging, target string
	size                int64
	sum                 string // checksum of its data
}

// nodeOp is one Node call that a crash may interrupt anywhere.
type nodeOp struct {
	name, method string
	// setup brings the volume to where the call starts, with a healthy
	// driver.
	setup func(t *testing.T, v *nodeVolume, c *csiclient.Client)
	// call is the CSI call; it must be idempotent by CSI's rules.
	call func(ctx context.Context, v *nodeVolume, c *csiclient.Client) error
	// What must be mounted once the call succeeded.
	staged, published, readOnly bool
}

func stage(ctx context.Context, v *nodeVolume, c *csiclient.Client) error {
	return c.Stage(ctx, v.id, v.staging, nodeFlags)
}

func publish(ctx context.Context, v *nodeVolume, c *csiclient.Client, readOnly bool) error {
	_, err := c.Node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
		VolumeId: v.id, StagingTargetPath: v.staging, TargetPath: v.target, Readonly: readOnly,
		VolumeCapability: &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{MountFlags: nodeFlags}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		},
	})
	return err
}

func nodeOps() []nodeOp {
	staged := func(t *testing.T, v *nodeVolume, c *csiclient.Client) {
		harness.Must(t, "stage", stage(context.Background(), v, c))
	}
	published := func(t *testing.T, v *nodeVolume, c *csiclient.Client) {
		staged(t, v, c)
		harness.Must(t, "publish", publish(context.Background(), v, c, false))
	}
	return []nodeOp{
		{name: "stage", method: "NodeStageVolume", call: stage, staged: true},
		{name: "publish", method: "NodePublishVolume", setup: staged,
			call: func(ctx context.Context, v *nodeVolume, c *csiclient.Client) error {
				return publish(ctx, v, c, false)
			},
			staged: true, published: true},
		{name: "publish-ro", method: "NodePublishVolume", setup: staged,
			call: func(ctx context.Context, v *nodeVolume, c *csiclient.Client) error {
				return publish(ctx, v, c, true)
			},
			staged: true, published: true, readOnly: true},
		{name: "unpublish", method: "NodeUnpublishVolume", setup: published,
			call: func(ctx context.Context, v *nodeVolume, c *csiclient.Client) error {
				return c.Unpublish(ctx, v.id, v.target)
			},
			staged: true},
		{name: "unstage", method: "NodeUnstageVolume", setup: staged,
			call: func(ctx context.Context, v *nodeVolume, c *csiclient.Client) error {
				return c.Unstage(ctx, v.id, v.staging)
			}},
		{name: "expand", method: "NodeExpandVolume",
			setup: func(t *testing.T, v *nodeVolume, c *csiclient.Client) {
				published(t, v, c)
				v.size *= 2
				_, err := c.Controller.ControllerExpandVolume(context.Background(), &csi.ControllerExpandVolumeRequest{
					VolumeId: v.id, CapacityRange: &csi.CapacityRange{RequiredBytes: v.size}})
				harness.Must(t, "controller expand", err)
			},
			call: func(ctx context.Context, v *nodeVolume, c *csiclient.Client) error {
				resp, err := c.Node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{
					VolumeId: v.id, VolumePath: v.target, StagingTargetPath: v.staging,
					CapacityRange: &csi.CapacityRange{RequiredBytes: v.size}})
				if err == nil && resp.GetCapacityBytes() != v.size {
					err = fmt.Errorf("NodeExpandVolume reports %d bytes, want %d", resp.GetCapacityBytes(), v.size)
				}
				return err
			},
			staged: true, published: true},
	}
}

// nodeCrash is the state of TestNodeCrashAtEveryStep.
type nodeCrash struct {
	pool   *btrfs.Pool
	config string
	dir    string // the driver children's socket and log
	root   string // kubelet's directory: every staging and target path
	// bystander stays staged and published through the whole test: no
	// crash of a call on another volume may touch it.
	bystander *nodeVolume
	n         int
}

// TestNodeCrashAtEveryStep SIGKILLs the driver before and after each
// mount(8) and umount(8) call of NodeStageVolume, NodePublishVolume (read-
// write and read-only), NodeUnpublishVolume and NodeUnstageVolume, and
// after each of them and NodeExpandVolume succeeded but before the reply,
// restarts it, retries the call and checks that it succeeds, that exactly
// the expected mounts exist (one staging mount, one publish mount, none
// stacked, none leaked, with the requested flags), that the data is
// intact, and that an unpublish or unstage leaves neither a mount nor its
// directory. (btrfs serves no raw block volumes, so filesystem only.)
func TestNodeCrashAtEveryStep(t *testing.T) {
	pool := btrfstest.NewPool(t, backend.GiB, btrfs.Config{})
	nc := &nodeCrash{pool: pool, config: childConfigOf(t, pool), dir: t.TempDir(), root: t.TempDir()}
	c := nc.start(t, nil, "")
	nc.bystander = nc.newVolume(t, c.Client, "bystander")
	harness.Must(t, "stage bystander", stage(context.Background(), nc.bystander, c.Client))
	harness.Must(t, "publish bystander", publish(context.Background(), nc.bystander, c.Client, false))
	c.Stop(t)

	var points, kills, restarts int
	start := time.Now()
	for _, op := range nodeOps() {
		t.Run(op.name, func(t *testing.T) {
			p, k, r := nc.run(t, op)
			points, kills, restarts = points+p, kills+k, restarts+r
			t.Logf("%s: %d crash points, %d SIGKILLs survived", op.name, p, k)
		})
	}

	c = nc.start(t, nil, "")
	defer c.Stop(t)
	nc.check(t, "end", nil)
	if err := c.Unpublish(context.Background(), nc.bystander.id, nc.bystander.target); err != nil {
		t.Error(err)
	}
	if err := c.Unstage(context.Background(), nc.bystander.id, nc.bystander.staging); err != nil {
		t.Error(err)
	}
	if got := harness.MountsUnder(t, nc.root); len(got) > 0 {
		t.Errorf("mounts left after the last unstage: %v", got)
	}
	if n := countMountsOf(t, pool.LoopDevice()); n != 1 {
		t.Errorf("pool device has %d mounts at the end, want 1 (the pool)", n)
	}
	t.Logf("node crash suite: %d crash points, %d SIGKILLs, %d driver starts in %s",
		points, kills, restarts, time.Since(start).Round(time.Millisecond))
}

func (nc *nodeCrash) start(t *testing.T, mountFaults []command.Fault, crashReply string) *harness.Child {
	t.Helper()
	return harness.Start(t, harness.Options{Dir: nc.dir, Config: nc.config, MountFaults: mountFaults, CrashReply: crashReply, Verbosity: 4})
}

// newVolume creates a volume with data and kubelet-style paths for it.
func (nc *nodeCrash) newVolume(t *testing.T, c *csiclient.Client, name string) *nodeVolume {
	t.Helper()
	v := &nodeVolume{id: mustCreate(t, c, name), size: crashVolumeBytes}
	dir := filepath.Join(nc.root, name)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	v.staging, v.target = filepath.Join(dir, "globalmount"), filepath.Join(dir, "mount")
	v.sum = harness.WriteData(t, volumeDir(nc.pool, v.id), name, 2, 256<<10)
	return v
}

// run goes through every crash point of op and returns the points, the
// SIGKILLs and the driver starts.
func (nc *nodeCrash) run(t *testing.T, op nodeOp) (points, kills, restarts int) {
	point := func(mountFaults []command.Fault, crashReply string) (crashed bool) {
		nc.n++
		label := op.name + " " + command.FormatFaults(mountFaults) + crashReply
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		c := nc.start(t, nil, "")
		v := nc.newVolume(t, c.Client, fmt.Sprintf("%s-%d", op.name, nc.n))
		if op.setup != nil {
			op.setup(t, v, c.Client)
		}
		c.Stop(t)
		c = nc.start(t, mountFaults, crashReply)
		restarts += 2
		if err := op.call(ctx, v, c.Client); err == nil {
			c.Stop(t)
		} else if !c.WaitKilled(t) {
			t.Fatalf("[%s] call failed without a crash: %v\n%s", label, err, c.LogTail())
		} else {
			crashed = true
			kills++
		}
		calls := harness.MountCalls(nc.dir)

		c = nc.start(t, nil, "")
		restarts++
		nc.check(t, label+", after restart", v)
		c.RetryTwice(t, label, func(cl *csiclient.Client) error { return op.call(ctx, v, cl) })
		nc.want(t, label, v, op)
		// Leave nothing for the next point: a full unpublish and unstage
		// must clean up whatever the crash and the retries left.
		harness.Must(t, "unpublish", c.Unpublish(ctx, v.id, v.target))
		harness.Must(t, "unstage", c.Unstage(ctx, v.id, v.staging))
		nc.check(t, label+", after unstage", nil)
		harness.Must(t, "delete", c.DeleteVolume(ctx, v.id))
		c.Stop(t)
		if !crashed && len(mountFaults) > 0 { // the whole call ran under the stand-ins
			t.Logf("%s runs %d mount tool commands: %q", op.name, len(calls), harness.CommandsOnly(calls))
		}
		points++
		return crashed
	}
	harness.EveryCommandStep(t, op.name, func(faults []command.Fault) bool { return point(faults, "") })
	if !point(nil, op.method) {
		t.Fatalf("%s: the crash before the reply did not fire", op.name)
	}
	return points, kills, restarts
}

// want checks the end state of a call that succeeded: exactly its mounts
// (and the bystander's), with the requested flags, its data intact, and
// no directory where nothing is mounted.
func (nc *nodeCrash) want(t *testing.T, label string, v *nodeVolume, op nodeOp) {
	t.Helper()
	nc.check(t, label, v)
	got := harness.MountsUnder(t, nc.root)
	targetFlags := nodeFlags
	if op.readOnly {
		targetFlags = append([]string{"ro"}, nodeFlags...)
	}
	harness.CheckMount(t, label, got, v.staging, op.staged, nodeFlags)
	harness.CheckMount(t, label, got, v.target, op.published, targetFlags)
	switch {
	case op.published:
		if got := harness.TreeSum(t, v.target); got != v.sum {
			t.Errorf("[%s] data seen through %s differs from the volume's", label, v.target)
		}
		harness.CheckWritable(t, label, v.target, op.readOnly)
	case op.staged:
		if got := harness.TreeSum(t, v.staging); got != v.sum {
			t.Errorf("[%s] data seen through %s differs from the volume's", label, v.staging)
		}
	}
}

// check holds at every moment, even right after a crash: no mount point
// is stacked, nothing is mounted but the staging and target paths of the
// bystander, which stays published and intact, and (when given) of the
// volume under test, every mount of the pool device is one of these, and
// every volume's data is unchanged.
func (nc *nodeCrash) check(t *testing.T, label string, v *nodeVolume) {
	t.Helper()
	got := harness.MountsUnder(t, nc.root)
	allowed := map[string]string{ // mount point → the subvolume it must show
		nc.bystander.staging: "/csi-thin/volumes/" + nc.bystander.id,
		nc.bystander.target:  "/csi-thin/volumes/" + nc.bystander.id,
	}
	if v != nil {
		allowed[v.staging] = "/csi-thin/volumes/" + v.id
		allowed[v.target] = "/csi-thin/volumes/" + v.id
	}
	n := 0
	for path, entries := range got {
		n += len(entries)
		want, ok := allowed[path]
		if !ok {
			t.Errorf("[%s] unexpected mount at %s", label, path)
		}
		if len(entries) > 1 {
			t.Errorf("[%s] %d mounts stacked at %s", label, len(entries), path)
		}
		for _, e := range entries {
			if ok && e.Root != want {
				t.Errorf("[%s] %s shows %s of the pool, want %s", label, path, e.Root, want)
			}
		}
	}
	for _, p := range []string{nc.bystander.staging, nc.bystander.target} {
		if len(got[p]) != 1 {
			t.Errorf("[%s] bystander's %s has %d mounts, want 1", label, p, len(got[p]))
		}
	}
	// Every mount under root is a bind of the pool: any other mount of
	// its device leaked somewhere else.
	if dev := countMountsOf(t, nc.pool.LoopDevice()); dev != 1+n {
		t.Errorf("[%s] pool device has %d mounts, want %d (the pool and %d under %s)", label, dev, 1+n, n, nc.root)
	}
	if got := harness.TreeSum(t, nc.bystander.target); got != nc.bystander.sum {
		t.Errorf("[%s] bystander's data changed", label)
	}
	if v != nil {
		if got := harness.TreeSum(t, volumeDir(nc.pool, v.id)); got != v.sum {
			t.Errorf("[%s] data of %s changed", label, v.id)
		}
	}
}
