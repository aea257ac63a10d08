package harness

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
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
