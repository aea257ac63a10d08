package reliability

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-thin/csi-thin/internal/csiclient"
	"github.com/csi-thin/csi-thin/internal/tenant"
	"github.com/csi-thin/csi-thin/internal/testenv"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/btrfs"
	"github.com/csi-thin/csi-thin/pkg/btrfs/btrfstest"
	"github.com/csi-thin/csi-thin/pkg/command"
	"github.com/csi-thin/csi-thin/test/reliability/harness"
)

// tenantWrite has the tenant write mib MiB into path with dd (fsync at
// the end, so that quota and space errors surface).
func tenantWrite(path string, mib int) (string, error) {
	return tenant.Run("dd", "if=/dev/zero", "of="+path, "bs=1M", "count="+strconv.Itoa(mib), "conv=fsync", "status=none")
}

// publishForTenant stages and publishes a volume as kubelet would, with
// the StorageClass flags given, under a directory the tenant can reach,
// and hands the volume's root to the tenant (as fsGroup or a chown in an
// init container would). It returns the path the tenant sees.
func publishForTenant(t *testing.T, c *csiclient.Client, id string, flags []string) (*csiclient.Attachment, string) {
	t.Helper()
	dir := t.TempDir()
	for d := dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	a, err := c.Attach(context.Background(), id, filepath.Join(dir, "pod"), flags)
	if err != nil {
		t.Fatalf("publish %s: %v", id, err)
	}
	t.Cleanup(func() {
		// Through the driver if it still serves this client; else by
		// hand, so that a failed test leaves no mount holding the pool.
		if a.Detach(context.Background()) != nil {
			for _, m := range []string{a.TargetPath, a.StagingPath} {
				syscall.Unmount(m, syscall.MNT_DETACH)
			}
		}
	})
	if err := os.Chmod(filepath.Join(dir, "pod"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(a.TargetPath, tenant.UID, tenant.UID); err != nil {
		t.Fatal(err)
	}
	if out, err := tenant.Run("touch", filepath.Join(a.TargetPath, ".probe")); err != nil {
		t.Fatalf("the tenant cannot write its own volume: %v: %s", err, out)
	}
	return a, a.TargetPath
}

// refusedOrContained asserts a tenant's write did not get through in
// full: it failed with a quota or space error.
func refusedOrContained(t *testing.T, what, out string, err error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: succeeded, want a quota error", what)
		return
	}
	if !strings.Contains(out, "Disk quota exceeded") && !strings.Contains(out, "No space left on device") {
		t.Errorf("%s: failed with %q, want a quota or space error", what, out)
	}
}

// volumeUsage is NodeGetVolumeStats' used bytes of a published volume.
func volumeUsage(t *testing.T, c *csiclient.Client, id, path string) (used, total int64) {
	t.Helper()
	host.Run(context.Background(), "sync")
	resp, err := c.Node.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: path})
	if err != nil {
		t.Fatalf("stats of %s: %v", id, err)
	}
	for _, u := range resp.GetUsage() {
		if u.GetUnit() == csi.VolumeUsage_BYTES {
			return u.GetUsed(), u.GetTotal()
		}
	}
	t.Fatalf("stats of %s: no byte usage in %v", id, resp)
	return 0, 0
}

// TestHostileTenantBtrfs: an unprivileged uid inside its published
// volume tries to escape its quota (plain writes, nested subvolumes,
// nested-of-nested, snapshots of its own subvolume and of nested ones),
// to make device nodes and use setuid binaries, and to fill the pool.
// Each attempt is refused or contained; another tenant's data never
// changes; the driver keeps serving, restarts cleanly, and deleting the
// attacked volume succeeds and leaves nothing behind.
func TestHostileTenantBtrfs(t *testing.T) {
	testenvRequire(t, "setpriv", "dd", "mknod", "btrfs")
	pool := btrfstest.NewPool(t, 2*backend.GiB, btrfs.Config{})
	dir := t.TempDir()
	cfg := childConfigOf(t, pool)
	child := harness.Start(t, harness.Options{Dir: dir, Config: cfg, Verbosity: 2})
	defer func() { child.Stop(t) }()
	ctx := context.Background()

	victim, err := child.CreateVolume(ctx, "victim", 256*backend.MiB)
	harness.Must(t, "create victim", err)
	victimSum := harness.WriteData(t, volumeDir(pool, victim.GetVolumeId()), "victim", 8, 1<<20)
	vol, err := child.CreateVolume(ctx, "tenant", 256*backend.MiB)
	harness.Must(t, "create tenant", err)
	id := vol.GetVolumeId()
	// No mount options: the node mounts every filesystem volume
	// nosuid,nodev by itself (docs/reliability.md, "Hostile tenant").
	att, mnt := publishForTenant(t, child.Client, id, nil)

	t.Run("plain writes", func(t *testing.T) {
		out, err := tenantWrite(filepath.Join(mnt, "plain"), 512)
		refusedOrContained(t, "512 MiB into a 256 MiB volume", out, err)
		os.Remove(filepath.Join(mnt, "plain"))
	})
	t.Run("nested subvolumes", func(t *testing.T) {
		for _, p := range []string{"nested", "nested/deeper"} {
			if out, err := tenant.Run("btrfs", "subvolume", "create", filepath.Join(mnt, p)); err != nil {
				t.Logf("subvolume create %s refused: %s", p, out) // refusal is containment too
			}
		}
		out, err := tenantWrite(filepath.Join(mnt, "nested", "deeper", "big"), 768)
		refusedOrContained(t, "768 MiB into a subvolume nested two deep", out, err)
		out, err = tenantWrite(filepath.Join(mnt, "nested", "more"), 768)
		refusedOrContained(t, "768 MiB more into the first nested subvolume", out, err)
		used, total := volumeUsage(t, child.Client, id, mnt)
		if total != 256*backend.MiB || used > total+backend.MiB || used < total/2 {
			t.Errorf("NodeGetVolumeStats: %d of %d bytes used, want the nested writes counted within the limit", used, total)
		}
		for _, p := range []string{"nested/deeper/big", "nested/more"} {
			os.Remove(filepath.Join(mnt, p))
		}
	})
	t.Run("snapshots of its own subvolumes", func(t *testing.T) {
		for _, snap := range [][2]string{{mnt, "self-snap"}, {filepath.Join(mnt, "nested"), "nested-snap"}} {
			dst := filepath.Join(mnt, snap[1])
			if out, err := tenant.Run("btrfs", "subvolume", "snapshot", snap[0], dst); err != nil {
				t.Logf("snapshot %s refused: %s", snap[1], out)
				continue
			}
			out, err := tenantWrite(filepath.Join(dst, "big"), 512)
			refusedOrContained(t, "512 MiB into the tenant's snapshot "+snap[1], out, err)
			os.Remove(filepath.Join(dst, "big"))
		}
	})
	t.Run("device nodes", func(t *testing.T) {
		if out, err := tenant.Run("mknod", filepath.Join(mnt, "mem"), "c", "1", "1"); err == nil {
			t.Errorf("the tenant made a device node: %s", out)
		}
		// One planted by someone privileged (a root init container) must
		// be unusable through the published mount.
		planted := filepath.Join(volumeDir(pool, id), "null")
		if out, err := exec.Command("mknod", "-m", "666", planted, "c", "1", "3").CombinedOutput(); err != nil {
			t.Fatalf("plant a device node: %v: %s", err, out)
		}
		if out, err := tenant.Run("dd", "if=/dev/zero", "of="+filepath.Join(mnt, "null"), "bs=1", "count=1", "status=none"); err == nil {
			t.Errorf("the tenant wrote through a device node in its volume: %s", out)
		}
		os.Remove(planted)
	})
	t.Run("setuid binaries", func(t *testing.T) {
		id, err := exec.LookPath("id")
		if err != nil {
			t.Skip("no id(1)")
		}
		b, err := os.ReadFile(id)
		harness.Must(t, "read id(1)", err)
		planted := filepath.Join(volumeDir(pool, vol.GetVolumeId()), "suid-id")
		harness.Must(t, "plant a setuid binary", os.WriteFile(planted, b, 0o755))
		harness.Must(t, "chmod", os.Chmod(planted, 0o4755))
		out, err := tenant.Run(filepath.Join(mnt, "suid-id"), "-u")
		if err != nil || strings.TrimSpace(out) != strconv.Itoa(tenant.UID) {
			t.Errorf("setuid-root binary in the volume ran with euid %q (%v), want %d", out, err, tenant.UID)
		}
		os.Remove(planted)
	})
	t.Run("fill the pool", func(t *testing.T) {
		// A volume promised more than the pool holds (overprovisioning):
		// its tenant writes until the pool is full.
		big, err := child.CreateVolume(ctx, "filler", 3*backend.GiB)
		harness.Must(t, "create filler", err)
		fa, fmnt := publishForTenant(t, child.Client, big.GetVolumeId(), nil)
		out, err := tenantWrite(filepath.Join(fmnt, "fill"), 3*1024)
		refusedOrContained(t, "3 GiB into a 2 GiB pool", out, err)
		// The pool is full: new volumes are refused with a precise code,
		// the victim's data is intact, and the driver answers.
		_, err = child.CreateVolume(ctx, "while-full", 64*backend.MiB)
		if code := status.Code(err); code != codes.ResourceExhausted && code != codes.OK {
			t.Errorf("create on a full pool: %v, want ResourceExhausted (or OK)", err)
		}
		if got := harness.TreeSum(t, volumeDir(pool, victim.GetVolumeId())); got != victimSum {
			t.Error("the victim's data changed while the pool filled up")
		}
		harness.Must(t, "unpublish filler", fa.Detach(ctx))
		harness.Must(t, "delete filler", child.DeleteVolume(ctx, big.GetVolumeId()))
		child.DeleteVolume(ctx, backend.VolumeIDFor("while-full"))
		// The space comes back once btrfs' cleaner has dropped the
		// filler's extents (asynchronous, as on any btrfs).
		for _, args := range [][]string{{"subvolume", "sync", pool.MountPath()}, {"filesystem", "sync", pool.MountPath()}} {
			if _, err := host.Run(ctx, "btrfs", args...); err != nil {
				t.Fatalf("btrfs %v: %v", args, err)
			}
		}
	})

	// The driver still serves: other volumes come and go, and a restart
	// comes up.
	other, err := child.CreateVolume(ctx, "after-attack", 64*backend.MiB)
	harness.Must(t, "create after the attack", err)
	harness.Must(t, "delete after the attack", child.DeleteVolume(ctx, other.GetVolumeId()))
	child.Stop(t)
	child = harness.Start(t, harness.Options{Dir: dir, Config: cfg, Verbosity: 2})
	if _, err := child.Controller.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id}); err != nil {
		t.Errorf("the attacked volume after a restart: %v", err)
	}

	// Deleting the attacked volume removes it and everything nested in it.
	harness.Must(t, "unpublish the attacked volume", child.Unpublish(ctx, id, att.TargetPath))
	harness.Must(t, "unstage the attacked volume", child.Unstage(ctx, id, att.StagingPath))
	if err := child.DeleteVolume(ctx, id); err != nil {
		t.Fatalf("delete the attacked volume: %v\n%s", err, child.LogTail())
	}
	harness.Must(t, "delete again", child.DeleteVolume(ctx, id))
	child.Stop(t)
	child = harness.Start(t, harness.Options{Dir: dir, Config: cfg, Verbosity: 2})
	st := settledPool(t, pool)
	if want := []string{victim.GetVolumeId()}; !reflect.DeepEqual(st.Volumes, want) || len(st.Snapshots) > 0 {
		t.Errorf("volumes %v snapshots %v left, want only the victim %v", st.Volumes, st.Snapshots, want)
	}
	for what, l := range map[string][]string{"subvolume": st.Other, "staged": st.Staging, "meta": st.Leftovers, "stale qgroup": st.StaleQgroups} {
		if len(l) > 0 {
			t.Errorf("%s entries left after deleting the attacked volume: %v", what, l)
		}
	}
	if got := harness.TreeSum(t, volumeDir(pool, victim.GetVolumeId())); got != victimSum {
		t.Error("the victim's data changed")
	}
}

// TestOneBrokenObjectDoesNotTakeThePoolDown: a delete whose recovery
// cannot finish (its subvolume made undeletable, here with the immutable
// flag) leaves the driver serving every other volume; the broken object
// is refused with a precise error until an operator fixes it, after
// which the same DeleteVolume finishes.
func TestOneBrokenObjectDoesNotTakeThePoolDown(t *testing.T) {
	testenvRequire(t, "chattr")
	pool := btrfstest.NewPool(t, backend.GiB, btrfs.Config{})
	dir := t.TempDir()
	cfg := childConfigOf(t, pool)
	ctx := context.Background()

	c := harness.Start(t, harness.Options{Dir: dir, Config: cfg})
	keep, err := c.CreateVolume(ctx, "keep", crashVolumeBytes)
	harness.Must(t, "create keep", err)
	keepSum := harness.WriteData(t, volumeDir(pool, keep.GetVolumeId()), "keep", 4, 1<<20)
	broken, err := c.CreateVolume(ctx, "broken", crashVolumeBytes)
	harness.Must(t, "create broken", err)
	c.Stop(t)
	// A delete cut off after its commit point...
	c = harness.Start(t, harness.Options{Dir: dir, Config: cfg, Faults: []command.Fault{{Kind: command.FaultCrashBefore, Nth: 1, Match: "btrfs subvolume delete"}}})
	if err := c.DeleteVolume(ctx, broken.GetVolumeId()); err == nil || !c.WaitKilled(t) {
		t.Fatalf("the delete was not cut off: %v", err)
	}
	// ...whose subvolume recovery cannot remove.
	brokenDir := volumeDir(pool, broken.GetVolumeId())
	if out, err := exec.Command("chattr", "+i", brokenDir).CombinedOutput(); err != nil {
		t.Fatalf("chattr +i: %v: %s", err, out)
	}
	defer exec.Command("chattr", "-i", brokenDir).Run()

	c = harness.Start(t, harness.Options{Dir: dir, Config: cfg})
	if _, err := c.Controller.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: keep.GetVolumeId()}); err != nil {
		t.Errorf("the healthy volume after a failed recovery: %v", err)
	}
	a, err := c.Attach(ctx, keep.GetVolumeId(), filepath.Join(t.TempDir(), "pod"), nil)
	if err != nil {
		t.Fatalf("publish the healthy volume: %v", err)
	}
	if got := harness.TreeSum(t, a.TargetPath); got != keepSum {
		t.Error("the healthy volume's data changed")
	}
	harness.Must(t, "unpublish", a.Detach(ctx))
	other, err := c.CreateVolume(ctx, "other", crashVolumeBytes)
	harness.Must(t, "create beside the broken object", err)
	err = c.DeleteVolume(ctx, broken.GetVolumeId())
	if err == nil || !strings.Contains(err.Error(), broken.GetVolumeId()) {
		t.Errorf("delete of the broken object: %v, want an error naming it", err)
	}
	if !strings.Contains(harnessLog(t, dir), "needs an operator") {
		t.Error("the driver's log does not report the broken object")
	}
	// The operator clears the flag; the CO's next retry finishes.
	if out, err := exec.Command("chattr", "-i", brokenDir).CombinedOutput(); err != nil {
		t.Fatalf("chattr -i: %v: %s", err, out)
	}
	harness.Must(t, "retried delete", c.DeleteVolume(ctx, broken.GetVolumeId()))
	harness.Must(t, "delete other", c.DeleteVolume(ctx, other.GetVolumeId()))
	c.Stop(t)
	st := settledPool(t, pool)
	if want := []string{keep.GetVolumeId()}; !reflect.DeepEqual(st.Volumes, want) || len(st.Leftovers) > 0 || len(st.StaleQgroups) > 0 {
		t.Errorf("after the fix: volumes %v leftovers %v stale qgroups %v, want only %v", st.Volumes, st.Leftovers, st.StaleQgroups, want)
	}
}

func harnessLog(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "child.log"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func testenvRequire(t *testing.T, cmds ...string) {
	t.Helper()
	btrfstest.Require(t)
	testenv.RequireCommands(t, cmds...)
}
