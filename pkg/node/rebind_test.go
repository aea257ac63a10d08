package node

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/csi-thin/csi-thin/internal/testenv"
	"github.com/csi-thin/csi-thin/pkg/backend/fake"
)

// countingExec counts the commands the node service runs besides the
// mounter's own.
type countingExec struct {
	utilexec.Interface
	cmds [][]string
}

func (c *countingExec) Command(cmd string, args ...string) utilexec.Cmd {
	c.cmds = append(c.cmds, append([]string{cmd}, args...))
	return c.Interface.Command(cmd, args...)
}

// TestFinishBind makes real bind mounts in the states a crash can leave
// them in and checks that finishBind adds exactly the missing per-mount
// flags, with one remount and without stacking a second mount.
func TestFinishBind(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "mount", "umount")
	cases := []struct {
		name string
		// setup is how the mount was left: the bind alone (crash between
		// mount-utils' two mount(8) calls), or complete.
		setup       []string
		opts        []string
		want        []string // per-mount flags the mount must then have
		notWant     []string
		wantRemount bool
	}{
		{name: "bind alone, read-only publish", setup: nil, opts: []string{"bind", "ro"},
			want: []string{"ro"}, wantRemount: true},
		{name: "bind alone, StorageClass flags", setup: nil, opts: []string{"bind", "nosuid", "nodev", "noexec", "noatime", "commit=5"},
			want: []string{"nosuid", "nodev", "noexec", "noatime"}, notWant: []string{"ro"}, wantRemount: true},
		{name: "complete", setup: []string{"nosuid", "ro"}, opts: []string{"bind", "ro", "nosuid"},
			want: []string{"ro", "nosuid"}},
		{name: "more restricted than asked is left alone", setup: []string{"ro"}, opts: []string{"bind"},
			want: []string{"ro"}},
		{name: "kept flags survive the remount", setup: []string{"nosuid"}, opts: []string{"bind", "ro"},
			want: []string{"ro", "nosuid"}, wantRemount: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
			for _, d := range []string{src, dst} {
				if err := os.Mkdir(d, 0o750); err != nil {
					t.Fatal(err)
				}
			}
			m := mount.New("")
			if tc.setup == nil {
				// The first of mount-utils' two calls, alone.
				if out, err := exec.Command("mount", "-o", "bind", src, dst).CombinedOutput(); err != nil {
					t.Fatalf("bind: %v: %s", err, out)
				}
			} else if err := m.Mount(src, dst, "", append([]string{"bind"}, tc.setup...)); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { m.Unmount(dst) })

			ex := &countingExec{Interface: utilexec.New()}
			s := New(fake.New("n1", 1<<30), Options{Mounter: NewMounter(m, ex)})
			if err := s.finishBind("v-1", dst, tc.opts); err != nil {
				t.Fatal(err)
			}
			if got := len(ex.cmds) > 0; got != tc.wantRemount {
				t.Errorf("remounted: %v (%q), want %v", got, ex.cmds, tc.wantRemount)
			}
			infos, err := mount.ParseMountInfo("/proc/self/mountinfo")
			if err != nil {
				t.Fatal(err)
			}
			var at []mount.MountInfo
			for _, mi := range infos {
				if mi.MountPoint == dst {
					at = append(at, mi)
				}
			}
			if len(at) != 1 {
				t.Fatalf("%d mounts at the target, want 1", len(at))
			}
			for _, f := range tc.want {
				if !slices.Contains(at[0].MountOptions, f) {
					t.Errorf("mounted with %v, missing %q", at[0].MountOptions, f)
				}
			}
			for _, f := range tc.notWant {
				if slices.Contains(at[0].MountOptions, f) {
					t.Errorf("mounted with %v, want no %q", at[0].MountOptions, f)
				}
			}
		})
	}
}
