package btrfs

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/command"
)

// FuzzToolOutput feeds arbitrary bytes to every parser of btrfs output,
// as a btrfs-progs upgrade or a corrupted pipe would: each must return a
// value or an error, never panic, never report a negative size, and read
// an answer only from output that clearly says it.
func FuzzToolOutput(f *testing.F) {
	for _, name := range []string{"testdata/qgroup-show-limited.txt", "testdata/filesystem-df.json"} {
		if b, err := os.ReadFile(name); err == nil {
			f.Add(b)
		}
	}
	for _, s := range []string{"", "257\n", "ro=true\n", "ro=false", "ro=maybe", "-1", "18446744073709551616",
		"0/257 -5 10 none none x\n", "{\"filesystem-df\":[{\"bg-type\":\"Data\",\"used\":\"-1\"}]}", "\x00\xff{]"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, out []byte) {
		if groups, err := parseQgroups(out); err == nil {
			for _, g := range groups {
				if g.Referenced < 0 || g.Exclusive < 0 || g.MaxReferenced < 0 {
					t.Fatalf("negative qgroup figures accepted: %+v", g)
				}
			}
		}
		if u, err := parseUsage(out); err == nil && (u.Data < 0 || u.Metadata < 0 || u.System < 0) {
			t.Fatalf("negative usage accepted: %+v", u)
		}
		if list, err := parseSubvolumeList(out); err == nil {
			for _, e := range list {
				if !strings.Contains(string(out), "ID "+strconv.FormatUint(e.ID, 10)+" ") {
					t.Fatalf("subvolume %d read from output that does not name it", e.ID)
				}
			}
		}
		fake := &command.Fake{}
		fake.On("btrfs", string(out), 0, "")
		c := cli{run: fake}
		answer := strings.TrimSpace(string(out))
		if ro, err := c.isReadOnly(context.Background(), "/p"); err == nil && answer != strconv.FormatBool(ro) && answer != "ro="+strconv.FormatBool(ro) {
			t.Fatalf("output %q read as ro=%v", out, ro)
		}
	})
}
