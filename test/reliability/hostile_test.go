package reliability

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/btrfs"
	"github.com/csi-thin/csi-thin/pkg/btrfs/btrfstest"
	"github.com/csi-thin/csi-thin/pkg/command"
)

// hostileIDs are volume and snapshot IDs an attacker with access to the
// socket (or a confused CO) might send.
var hostileIDs = []string{
	"../../../etc", "/etc/passwd", "v-../../../../etc", "v-0123456789abcdef0123456789abcdef/../../..",
	"v-0123456789abcdef0123456789abcdef\x00", "--", "-rf", "--help", "v-0123456789ABCDEF0123456789ABCDEF",
	strings.Repeat("v-", 5000), "s-0123456789abcdef0123456789abcdef/../v-0123456789abcdef0123456789abcdef", " ", ".",
}

// TestHostileInputStaysInsideThePool sends path traversal, option
// injection and oversized input through every call that takes an ID, a
// name, a path or a mount flag, on a real pool. Every storage command the
// driver ran is recorded: none may name a path outside the pool or carry
// an injected option, no mount may appear, and a directory beside the
// pool must be untouched.
func TestHostileInputStaysInsideThePool(t *testing.T) {
	base := btrfstest.NewPool(t, backend.GiB, btrfs.Config{})
	recorder := &command.FaultRunner{Next: &command.Host{}}
	pool, err := btrfs.Open(context.Background(), btrfs.Config{PoolPath: base.MountPath(), NodeName: base.NodeName(), Runner: recorder})
	if err != nil {
		t.Fatal(err)
	}
	c := serve(t, pool)
	ctx := context.Background()
	legit, err := c.CreateVolume(ctx, "legit", crashVolumeBytes)
	if err != nil {
		t.Fatal(err)
	}

	outside := t.TempDir()
	victim := filepath.Join(outside, "victim")
	if err := os.MkdirAll(filepath.Join(victim, "empty"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(victim, "data"), []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	mountsBefore := countMountsOf(t, base.LoopDevice())
	recorder.Arm() // count commands from here on

	vc := func(flags ...string) *csi.VolumeCapability {
		return &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{MountFlags: flags}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		}
	}
	refused := 0
	expect := func(what string, err error, ok ...codes.Code) {
		t.Helper()
		code := status.Code(err)
		for _, o := range ok {
			if code == o {
				if code != codes.OK {
					refused++
				}
				return
			}
		}
		t.Errorf("%.120s: %s (%.200v), want one of %v", what, code, err, ok)
	}
	notThere := []codes.Code{codes.NotFound, codes.InvalidArgument}
	for _, id := range hostileIDs {
		_, err := c.Controller.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id})
		expect("get "+id, err, notThere...)
		_, err = c.Controller.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id, CapacityRange: &csi.CapacityRange{RequiredBytes: backend.GiB}})
		expect("expand "+id, err, notThere...)
		_, err = c.CreateSnapshot(ctx, "snap-of-hostile", id)
		expect("snapshot of "+id, err, notThere...)
		_, err = c.CloneVolume(ctx, "clone-of-hostile", id, crashVolumeBytes)
		expect("clone of "+id, err, notThere...)
		_, err = c.RestoreSnapshot(ctx, "restore-of-hostile", id, crashVolumeBytes)
		expect("restore of "+id, err, notThere...)
		// Deleting what cannot exist succeeds (CSI idempotency) but must
		// touch nothing.
		expect("delete "+id, c.DeleteVolume(ctx, id), codes.OK, codes.InvalidArgument)
		expect("delete snapshot "+id, c.DeleteSnapshot(ctx, id), codes.OK, codes.InvalidArgument)
		expect("stage "+id, c.Stage(ctx, id, filepath.Join(outside, "stage"), nil), notThere...)
	}
	// Names are hashed: traversal in a name is harmless, and must stay so.
	for _, name := range []string{"../../etc", "/etc/passwd", "--", "-o", "$(reboot)", "a b,c=d"} {
		v, err := c.CreateVolume(ctx, name, crashVolumeBytes)
		expect("create "+name, err, codes.OK)
		if err == nil && !backend.IsVolumeID(v.GetVolumeId()) {
			t.Errorf("name %q gave ID %q", name, v.GetVolumeId())
		}
	}
	for _, name := range []string{strings.Repeat("n", 1<<20), "a\x00b", "line\ninjected"} {
		_, err := c.CreateVolume(ctx, name, crashVolumeBytes)
		expect("create with bad name", err, codes.InvalidArgument)
	}
	// Option injection through mount flags.
	staging := filepath.Join(outside, "staging")
	for _, flags := range [][]string{{"ro,dev"}, {"-o", "exec"}, {"--bind"}, {"nosuid,suid"}, {"x-mount.mkdir=/etc/x"}, {"context=\"system_u\""}, {"ro\x00"}} {
		_, err := c.Node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: legit.GetVolumeId(), StagingTargetPath: staging, VolumeCapability: vc(flags...)})
		expect("stage with flags "+strings.Join(flags, " "), err, codes.InvalidArgument)
	}
	// Traversal and relative paths where the node mounts and removes.
	for _, p := range []string{victim + "/../victim/empty", "relative/path", victim + "/./empty", "", strings.Repeat("/x", 3000), victim + "/empty\x00"} {
		_, err := c.Node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: legit.GetVolumeId(), StagingTargetPath: p, VolumeCapability: vc()})
		expect("stage at "+p, err, codes.InvalidArgument)
		expect("unstage "+p, c.Unstage(ctx, legit.GetVolumeId(), p), codes.InvalidArgument)
		expect("unpublish "+p, c.Unpublish(ctx, legit.GetVolumeId(), p), codes.InvalidArgument)
		_, err = c.Node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: legit.GetVolumeId(), VolumePath: p})
		expect("stats of "+p, err, notThere...)
	}

	mnt := base.MountPath()
	lines := recorder.Lines()
	for _, line := range lines {
		for _, arg := range strings.Fields(line)[1:] {
			if strings.HasPrefix(arg, "/") && arg != mnt && !strings.HasPrefix(arg, mnt+"/csi-thin/") {
				t.Errorf("command %q names a path outside the pool", line)
			}
			if strings.HasPrefix(arg, "--") || strings.ContainsAny(arg, "\x00,") {
				t.Errorf("command %q carries a suspicious argument %q", line, arg)
			}
		}
	}
	if n := countMountsOf(t, base.LoopDevice()); n != mountsBefore {
		t.Errorf("mounts of the pool went from %d to %d", mountsBefore, n)
	}
	if b, err := os.ReadFile(filepath.Join(victim, "data")); err != nil || string(b) != "precious" {
		t.Errorf("file beside the pool changed: %q %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(victim, "empty")); err != nil {
		t.Errorf("directory beside the pool removed: %v", err)
	}
	st := inspectPool(t, base)
	if len(st.Staging) > 0 || len(st.Leftovers) > 0 || len(st.Other) > 0 {
		t.Errorf("hostile calls left entries in the pool: %+v", st)
	}
	t.Logf("hostile input: %d calls refused, %d storage commands run, all inside %s", refused, len(lines), mnt)
}
