package harness

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"
)

// What the btrfs and LVM suites check of a volume seen through the node:
// its data and its mounts.

// TreeSum hashes every regular file under dir (names and contents), so
// a volume's data can be compared before and after a crash.
func TreeSum(t testing.TB, dir string) string {
	t.Helper()
	h := sha256.New()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		io.WriteString(h, rel+"\x00")
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(h, f)
		return err
	})
	if err != nil {
		t.Fatalf("checksum %s: %v", dir, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// WriteData fills dir with n files of pseudo-random content seeded by
// seed, synced to disk, and returns their checksum.
func WriteData(t testing.TB, dir string, seed string, n int, size int) string {
	t.Helper()
	block := sha256.Sum256([]byte(seed))
	for i := 0; i < n; i++ {
		buf := make([]byte, 0, size)
		for len(buf) < size {
			block = sha256.Sum256(block[:])
			buf = append(buf, block[:]...)
		}
		p := filepath.Join(dir, "data-"+strconv.Itoa(i))
		if err := os.WriteFile(p, buf[:size], 0o600); err != nil {
			t.Fatalf("write %s: %v", p, err)
		}
	}
	if err := syncFS(dir); err != nil {
		t.Fatalf("sync %s: %v", dir, err)
	}
	return TreeSum(t, dir)
}

// syncFS flushes the filesystem holding dir: a crash test kills the
// driver, and data still in the page cache would prove nothing.
func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncfs: %w", err)
	}
	return nil
}

// MountsUnder returns the mount table's entries below dir, by mount
// point, in mount order (the last one is on top).
func MountsUnder(t testing.TB, dir string) map[string][]mount.MountInfo {
	t.Helper()
	infos, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		t.Fatalf("read mount table: %v", err)
	}
	out := map[string][]mount.MountInfo{}
	for _, mi := range infos {
		if strings.HasPrefix(mi.MountPoint, dir+"/") {
			out[mi.MountPoint] = append(out[mi.MountPoint], mi)
		}
	}
	for _, entries := range out {
		sort.SliceStable(entries, func(i, j int) bool { return entries[i].ID < entries[j].ID })
	}
	return out
}

// ProbeWrite creates and removes a file in dir.
func ProbeWrite(dir string) error {
	p := filepath.Join(dir, ".probe")
	if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
		return err
	}
	return os.Remove(p)
}

// CommandsOnly drops the paths from command lines, for the log.
func CommandsOnly(lines []string) []string {
	var out []string
	for _, l := range lines {
		var f []string
		for _, w := range strings.Fields(l) {
			if !strings.HasPrefix(w, "/") {
				f = append(f, w)
			}
		}
		out = append(out, strings.Join(f, " "))
	}
	return out
}

// CheckMount checks that path, after a Node call, is mounted exactly once
// with flags among its per-mount options (and returns that mount), or,
// when it must not be mounted, that it is gone: kubelet's paths are the
// driver's to remove.
func CheckMount(t testing.TB, label string, mounts map[string][]mount.MountInfo, path string, mounted bool, flags []string) *mount.MountInfo {
	t.Helper()
	entries := mounts[path]
	if !mounted {
		if len(entries) > 0 {
			t.Errorf("[%s] %s is still mounted", label, path)
		}
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("[%s] %s is not mounted but still exists (%v)", label, path, err)
		}
		return nil
	}
	if len(entries) != 1 {
		t.Errorf("[%s] %s has %d mounts, want 1", label, path, len(entries))
		return nil
	}
	for _, f := range flags {
		if !slices.Contains(entries[0].MountOptions, f) {
			t.Errorf("[%s] %s is mounted with %v, missing %q", label, path, entries[0].MountOptions, f)
		}
	}
	return &entries[0]
}

// CheckWritable checks that a file can be written in dir, or, for a
// read-only mount, that the write fails with EROFS.
func CheckWritable(t testing.TB, label, dir string, readOnly bool) {
	t.Helper()
	err := ProbeWrite(dir)
	if readOnly && !errors.Is(err, syscall.EROFS) {
		t.Errorf("[%s] write into read-only %s: %v, want EROFS", label, dir, err)
	}
	if !readOnly && err != nil {
		t.Errorf("[%s] write into %s: %v", label, dir, err)
	}
}
