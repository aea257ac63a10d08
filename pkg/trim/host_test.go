package trim

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/csi-thin/csi-thin/internal/testenv"
	"github.com/csi-thin/csi-thin/pkg/backend"
)

// Real filesystems on loop devices: the loop driver turns a discard into a
// hole punched in its backing file, so the file's allocated blocks show
// what a trim gave back, as a thin pool's mapped chunks would.

const freed = 64 << 20

// loopFS makes a filesystem with mkfs args on a loop device over a sparse
// file of size bytes and mounts it with opts; it returns the mount point,
// the device and the backing file.
func loopFS(t *testing.T, size int64, mkfs []string, opts string) (mnt, dev, img string) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, mkfs[0], "mount", "umount", "losetup")
	dir := t.TempDir()
	img, mnt = filepath.Join(dir, "fs.img"), filepath.Join(dir, "mnt")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).Output()
	if err != nil {
		testenv.Missing(t, "a loop device: "+err.Error())
	}
	dev = strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d: %v: %s", err, out)
		}
	})
	if out, err := exec.Command(mkfs[0], append(mkfs[1:], dev)...).CombinedOutput(); err != nil {
		testenv.Missing(t, mkfs[0]+": "+err.Error()+": "+string(out))
	}
	if err := os.Mkdir(mnt, 0o750); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-o", opts, dev, mnt).CombinedOutput(); err != nil {
		testenv.Missing(t, "mount "+opts+": "+err.Error()+": "+string(out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount: %v: %s", err, out)
		}
	})
	return mnt, dev, img
}

// allocated is the bytes a file has on disk.
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// writeAndDelete writes 64 MiB to a file in mnt, syncs, deletes it and
// syncs again, and returns the backing file's allocation in between.
func writeAndDelete(t *testing.T, mnt, img string) (written, afterDelete int64) {
	t.Helper()
	p := filepath.Join(mnt, "data")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("csi-thin"), 1<<17) // 1 MiB
	for i := 0; i < freed/len(chunk); i++ {
		if _, err := f.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	f.Close()
	written = allocated(t, img)
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	syncfs(t, mnt)
	afterDelete = allocated(t, img)
	return written, afterDelete
}

func syncfs(t *testing.T, mnt string) {
	t.Helper()
	d, err := os.Open(mnt)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := unix.Syncfs(int(d.Fd())); err != nil {
		t.Fatal(err)
	}
}

// checkReturned runs one round and checks the one result and the backing
// file: the deleted 64 MiB are discarded, reported and given back.
func checkReturned(t *testing.T, tr *Trimmer, img string, written, afterDelete int64, want Target) {
	t.Helper()
	if written-afterDelete > freed/2 {
		t.Fatalf("the delete alone returned %d of %d bytes: the filesystem discards online", written-afterDelete, freed)
	}
	res, err := tr.RunOnce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || res[0].Target != want || res[0].Err != nil || res[0].Skipped {
		t.Fatalf("results %+v, want one trim of %+v", res, want)
	}
	after := allocated(t, img)
	t.Logf("backing file: %d MiB after writing, %d after the delete, %d after the trim; FITRIM reported %d MiB",
		written>>20, afterDelete>>20, after>>20, res[0].Bytes>>20)
	if res[0].Bytes < freed {
		t.Errorf("FITRIM reported %d bytes, less than the %d deleted", res[0].Bytes, freed)
	}
	if got := afterDelete - after; got < freed*15/16 {
		t.Errorf("the backing file shrank by %d bytes, want the %d deleted", got, freed)
	}
}

func TestTrimExt4WithoutDiscard(t *testing.T) {
	mnt, dev, img := loopFS(t, 256<<20, []string{"mkfs.ext4", "-q", "-F"}, "nodiscard")
	written, afterDelete := writeAndDelete(t, mnt, img)
	// The real finder, over a pool whose one volume is this device.
	pool := volumes{"v-ext4": {Path: dev, IsDevice: true}}
	checkReturned(t, &Trimmer{Find: BlockVolumes(pool, nil)}, img, written, afterDelete, Target{VolumeID: "v-ext4", Path: mnt})
}

func TestTrimExt4WithDiscardIsLeftAlone(t *testing.T) {
	mnt, dev, _ := loopFS(t, 256<<20, []string{"mkfs.ext4", "-q", "-F"}, "discard")
	got, err := BlockVolumes(volumes{"v-ext4": {Path: dev, IsDevice: true}}, nil)(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 0 {
		t.Fatalf("an ext4 mounted with discard at %s is listed for trimming: %+v", mnt, got)
	}
}

func TestTrimBtrfsPoolWithoutDiscard(t *testing.T) {
	mnt, _, img := loopFS(t, 512<<20, []string{"mkfs.btrfs", "-q", "-f"}, "nodiscard")
	written, afterDelete := writeAndDelete(t, mnt, img)
	checkReturned(t, &Trimmer{Find: Pool(mnt, nil)}, img, written, afterDelete, Target{Path: mnt})
}

func TestTrimBtrfsPoolWithDiscardIsLeftAlone(t *testing.T) {
	mnt, _, _ := loopFS(t, 512<<20, []string{"mkfs.btrfs", "-q", "-f"}, "discard=async")
	got, err := Pool(mnt, nil)(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 0 {
		t.Fatalf("a btrfs pool mounted with discard=async is listed for trimming: %+v", got)
	}
}

var _ Volumes = volumes{}
var _ Volumes = backend.Local(nil)
