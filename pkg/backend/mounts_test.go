package backend

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func TestReadMounts(t *testing.T) {
	old := MountInfoPath
	MountInfoPath = "testdata/mountinfo"
	t.Cleanup(func() { MountInfoPath = old })
	got, err := ReadMounts()
	if err != nil {
		t.Fatal(err)
	}
	want := []Mount{
		{Major: 0, Minor: 21, Root: "/", MountPoint: "/", FsType: "ext4"},
		{Major: 0, Minor: 42, Root: "/", MountPoint: "/var/lib/pool one", FsType: "btrfs"},
		{Major: 0, Minor: 42, Root: "/csi-thin/volumes/v-1", MountPoint: "/var/lib/kubelet/staging dir", FsType: "btrfs"},
		{Major: 0, Minor: 5, Root: "/dm-3", MountPoint: "/var/lib/kubelet/pods/p/dev", FsType: "devtmpfs"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
}

func TestUnescapeMountPath(t *testing.T) {
	for in, want := range map[string]string{
		`/a\040b`: "/a b", `/tab\011x`: "/tab\tx", `/back\134slash`: `/back\slash`, `/end\`: `/end\`, `/short\04`: `/short\04`, `/not\999`: `/not\999`,
	} {
		if got := unescapeMountPath(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestMountedErrorIsInUse(t *testing.T) {
	err := fmt.Errorf("delete: %w", &MountedError{Volume: "v-1", Node: "n1", MountPoints: []string{"/a", "/b c"}})
	var mounted *MountedError
	if !errors.Is(err, ErrInUse) || !errors.As(err, &mounted) || len(mounted.MountPoints) != 2 {
		t.Fatalf("%v: want ErrInUse with its two mount points", err)
	}
	for _, want := range []string{"v-1", "/a, /b c", "n1", ErrInUse.Error()} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not name %q", err, want)
		}
	}
}
