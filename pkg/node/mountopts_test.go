package node

import (
	"errors"
	"reflect"
	"slices"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

func TestCheckMountFlags(t *testing.T) {
	good := [][]string{nil, {"noatime"}, {"ro", "nodev", "nosuid"}, {"commit=30", "data=ordered"}, {"nodiscard"}}
	for _, f := range good {
		if err := checkMountFlags(f); err != nil {
			t.Errorf("%v refused: %v", f, err)
		}
	}
	bad := [][]string{
		{"noatime,dev"},         // comma smuggles a second option
		{"-o"},                  // looks like a flag to mount(8)
		{"--bind"},              // same
		{"bind"},                // not on the list
		{"rw", "suid"},          // suid is not allowed
		{"data=../../etc"},      // value outside its pattern
		{"commit=1;rm"},         // same
		{""},                    // empty
		{"context=system_u:x"},  // unknown key
		{"noatime\x00ro"},       // NUL
		{"errors=remount-ro x"}, // whitespace
		{"errors=panic"},        // one volume's I/O error panics the node
		{"dev"},                 // device nodes in a tenant's volume
		{"suid"},                // setuid files in a tenant's volume
	}
	for _, f := range bad {
		if err := checkMountFlags(f); !errors.Is(err, backend.ErrInvalid) {
			t.Errorf("%q accepted (err %v)", f, err)
		}
	}
}

func TestStageOptions(t *testing.T) {
	cases := []struct {
		fs    string
		flags []string
		want  []string
	}{
		{"ext4", nil, []string{"discard"}},
		{"ext4", []string{"noatime"}, []string{"noatime", "discard"}},
		{"ext4", []string{"nodiscard"}, []string{}},
		{"ext4", []string{"discard", "discard"}, []string{"discard"}},
		{"xfs", nil, []string{"discard", "nouuid"}},
	}
	for _, tc := range cases {
		if got := stageOptions(tc.fs, tc.flags); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("stageOptions(%s, %v) = %v, want %v", tc.fs, tc.flags, got, tc.want)
		}
	}
}

func TestCheckPath(t *testing.T) {
	for _, p := range []string{"relative/path", "/a/../b", "/a//b", "/a\x00b", ""} {
		if checkPath(p) == nil {
			t.Errorf("path %q accepted", p)
		}
	}
	for _, p := range []string{"/var/lib/kubelet/pods/x/volumes/kubernetes.io~csi/pv/mount", "/tmp/x/"} {
		if err := checkPath(p); err != nil {
			t.Errorf("path %q refused: %v", p, err)
		}
	}
}

func TestTenantSafeAddsNosuidNodev(t *testing.T) {
	for _, tc := range []struct {
		in, want []string
	}{
		{nil, []string{"nosuid", "nodev"}},
		{[]string{"noatime"}, []string{"noatime", "nosuid", "nodev"}},
		{[]string{"nodev", "ro", "nosuid"}, []string{"nodev", "ro", "nosuid"}},
	} {
		in := slices.Clone(tc.in)
		if got := tenantSafe(tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("tenantSafe(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if !slices.Equal(in, tc.in) {
			t.Errorf("tenantSafe modified its argument %q", tc.in)
		}
	}
}
