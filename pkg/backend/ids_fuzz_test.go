package backend

import (
	"errors"
	"math"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzIDs: any CSI name maps to a well-formed ID, and any string that
// passes the ID check is a single harmless path component, so nothing a
// caller sends as an ID can walk out of the pool directory.
func FuzzIDs(f *testing.F) {
	for _, s := range []string{"", "pvc-2f1c0a4e-1d0b-4c8f-9d55-7b7e0c2a6a11", "../../etc/passwd", "/etc/shadow",
		"a\x00b", strings.Repeat("x", 4096), "v-0123456789abcdef0123456789abcdef", "v-0123456789ABCDEF0123456789abcdef",
		"v-0123456789abcdef0123456789abcdef\n", "s-0123456789abcdef0123456789abcdef/..", "-o", "--", "héllo", "v-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		vid, sid := VolumeIDFor(s), SnapshotIDFor(s)
		if !IsVolumeID(vid) || !IsSnapshotID(sid) || vid != VolumeIDFor(s) {
			t.Fatalf("name %q: ids %q %q are not well-formed or not stable", s, vid, sid)
		}
		for _, check := range []struct {
			ok  bool
			err error
		}{{IsVolumeID(s), CheckVolumeID(s)}, {IsSnapshotID(s), CheckSnapshotID(s)}} {
			if check.ok != (check.err == nil) {
				t.Fatalf("%q: Is* and Check* disagree", s)
			}
			if !check.ok {
				continue
			}
			if len(s) != 34 || filepath.Base(s) != s || strings.ContainsAny(s, "/\\.\x00 \n,=") || strings.HasPrefix(s, "-") {
				t.Fatalf("%q accepted as an ID but is not a plain path component", s)
			}
			if joined := filepath.Join("/pool/volumes", s); filepath.Dir(joined) != "/pool/volumes" {
				t.Fatalf("%q escapes the pool: %s", s, joined)
			}
		}
	})
}

// FuzzResolveSize: sizes (zero, negative, huge, overflowing) either
// resolve to a size that honours the range and the unit, or are refused
// with ErrOutOfRange; nothing overflows or panics.
func FuzzResolveSize(f *testing.F) {
	f.Add(int64(0), int64(0), GiB, int64(0), MiB)
	f.Add(int64(-1), int64(0), GiB, int64(0), MiB)
	f.Add(int64(math.MaxInt64), int64(0), GiB, int64(0), MiB)
	f.Add(int64(math.MaxInt64-1), int64(math.MaxInt64), GiB, int64(0), int64(64<<10))
	f.Add(int64(1), int64(1), GiB, int64(0), MiB)
	f.Add(int64(0), int64(512), GiB, int64(0), MiB)
	f.Add(int64(0), int64(0), GiB, int64(math.MaxInt64), MiB)
	f.Add(int64(100), int64(0), GiB, int64(0), int64(-5))
	f.Fuzz(func(t *testing.T, required, limit, def, minimum, unit int64) {
		if def <= 0 {
			def = GiB // the backends' defaults are positive constants
		}
		size, err := ResolveSize(required, limit, def, minimum, unit)
		if err != nil {
			if !errors.Is(err, ErrOutOfRange) {
				t.Fatalf("ResolveSize(%d, %d, %d, %d, %d): error without ErrOutOfRange: %v", required, limit, def, minimum, unit, err)
			}
			return
		}
		switch {
		case size < required:
			t.Fatalf("size %d below required %d", size, required)
		case limit > 0 && size > limit:
			t.Fatalf("size %d above limit %d", size, limit)
		case size < minimum:
			t.Fatalf("size %d below minimum %d", size, minimum)
		case unit > 0 && size%unit != 0:
			t.Fatalf("size %d not a multiple of %d", size, unit)
		case size < 0:
			t.Fatalf("negative size %d", size)
		}
	})
}
