package backend

import (
	"errors"
	"math"
	"strings"
	"testing"
)

func TestResolveSize(t *testing.T) {
	cases := []struct {
		name                                string
		required, limit, def, minimum, unit int64
		want                                int64
		wantErr                             error
	}{
		{"default when unset", 0, 0, GiB, 0, MiB, GiB, nil},
		{"default capped by limit", 0, 100 * MiB, GiB, 0, MiB, 100 * MiB, nil},
		{"rounded up", 1, 0, GiB, 0, MiB, MiB, nil},
		{"clone takes source size", 0, 0, GiB, 300 * MiB, MiB, 300 * MiB, nil},
		{"at least the source", 10 * MiB, 0, GiB, 300 * MiB, MiB, 300 * MiB, nil},
		{"source above limit", 10 * MiB, 20 * MiB, GiB, 300 * MiB, MiB, 0, ErrOutOfRange},
		{"required above limit", 2 * GiB, GiB, GiB, 0, MiB, 0, ErrOutOfRange},
		{"limit below unit", 0, 1000, GiB, 0, MiB, 0, ErrOutOfRange},
		{"negative", -1, 0, GiB, 0, MiB, 0, ErrOutOfRange},
		{"overflow", math.MaxInt64, 0, GiB, 0, MiB, 0, ErrOutOfRange},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ResolveSize(tc.required, tc.limit, tc.def, tc.minimum, tc.unit)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			if got != tc.want {
				t.Fatalf("size %d, want %d", got, tc.want)
			}
		})
	}
}

func TestIDs(t *testing.T) {
	v, s := VolumeIDFor("pvc-1"), SnapshotIDFor("pvc-1")
	if v == s || !IsVolumeID(v) || !IsSnapshotID(s) || IsVolumeID(s) || IsSnapshotID(v) {
		t.Fatalf("ids %q %q", v, s)
	}
	if VolumeIDFor("pvc-1") != v {
		t.Fatal("volume id is not stable")
	}
	if VolumeIDFor(strings.Repeat("x", 4096)) == v {
		t.Fatal("different names, same id")
	}
	for _, bad := range []string{"", "v-", "../v-0", "v-" + strings.Repeat("A", 32), "v-" + strings.Repeat("0", 33), "/etc/passwd", "v-" + strings.Repeat("0", 31) + "\x00"} {
		if IsVolumeID(bad) || CheckVolumeID(bad) == nil {
			t.Errorf("accepted malformed id %q", bad)
		}
		if !errors.Is(CheckVolumeID(bad), ErrNotFound) {
			t.Errorf("malformed id %q must read as not found", bad)
		}
	}
}
