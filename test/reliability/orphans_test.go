package reliability

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/btrfs"
	"github.com/csi-thin/csi-thin/pkg/btrfs/btrfstest"
	"github.com/csi-thin/csi-thin/test/reliability/harness"
)

// TestRecoveryNeverDeletesOnAGuess plants, on a pool with a real volume,
// everything that looks half-made but cannot be proven to be an
// unfinished operation of ours, SIGKILLs the driver mid-call so that
// recovery runs, and checks that every byte of it survived.
func TestRecoveryNeverDeletesOnAGuess(t *testing.T) {
	pool := btrfstest.NewPool(t, backend.GiB, btrfs.Config{})
	dir := t.TempDir()
	opts := harness.Options{Dir: dir, Config: childConfigOf(t, pool)}
	c := harness.Start(t, opts)
	v, err := c.CreateVolume(context.Background(), "kept", crashVolumeBytes)
	if err != nil {
		t.Fatal(err)
	}
	c.Stop(t)

	base := filepath.Join(pool.MountPath(), "csi-thin")
	orphanID := backend.VolumeIDFor("written by someone else")
	planted := map[string]bool{ // path → is a subvolume
		filepath.Join(base, "volumes", orphanID):          true, // a volume-shaped subvolume with no record
		filepath.Join(base, "staging", "not-an-id"):       true, // staging entry that is not ours by name
		filepath.Join(pool.MountPath(), "user-subvolume"): true, // user data beside the driver's tree
		filepath.Join(base, "meta", "notes.txt"):          false,
	}
	sums := map[string]string{}
	for p, subvol := range planted {
		if subvol {
			if _, err := host.Run(context.Background(), "btrfs", "subvolume", "create", p); err != nil {
				t.Fatal(err)
			}
			sums[p] = harness.WriteData(t, p, p, 2, 64<<10)
		} else if err := os.WriteFile(p, []byte("operator notes"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	sums[volumeDir(pool, v.GetVolumeId())] = harness.WriteData(t, volumeDir(pool, v.GetVolumeId()), "kept", 2, 64<<10)

	opts.Faults = nil
	opts.CrashReply = "CreateVolume"
	c = harness.Start(t, opts)
	if _, err := c.CreateVolume(context.Background(), "interrupted", crashVolumeBytes); err == nil || !c.WaitKilled(t) {
		t.Fatalf("driver did not crash as injected (err %v)", err)
	}
	opts.CrashReply = ""
	c = harness.Start(t, opts)
	defer c.Stop(t)

	for p := range planted {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("recovery removed %s: %v", p, err)
		}
	}
	for p, sum := range sums {
		if got := harness.TreeSum(t, p); got != sum {
			t.Errorf("data under %s changed", p)
		}
	}
	resp, err := c.Controller.ListVolumes(context.Background(), &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range resp.GetEntries() {
		if e.GetVolume().GetVolumeId() == orphanID {
			t.Errorf("an orphan subvolume without a record is served as a volume")
		}
	}
	if len(resp.GetEntries()) != 2 {
		t.Errorf("listed %d volumes, want 2 (kept, interrupted)", len(resp.GetEntries()))
	}
	// The operator's cleanup: the orphan is theirs to judge.
	for p, subvol := range planted {
		if subvol {
			if _, err := host.Run(context.Background(), "btrfs", "subvolume", "delete", p); err != nil {
				t.Errorf("cleanup %s: %v", p, err)
			}
		}
	}
}
