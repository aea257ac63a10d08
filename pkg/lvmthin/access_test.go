package lvmthin

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// TestCopyKeepsAccessType: a restore or clone that changes the access
// type is ErrInvalid and runs no lvcreate; a snapshot of unknown type
// (no tag, source gone) restores only as raw block.
func TestCopyKeepsAccessType(t *testing.T) {
	const (
		blockVol      = "v-b0000000000000000000000000000000"
		mountVol      = "v-a0000000000000000000000000000000"
		blockSnap     = "s-b0000000000000000000000000000000"
		legacyOfBlock = "s-c0000000000000000000000000000000"
		orphan        = "s-d0000000000000000000000000000000"
	)
	lv := func(name string, tags ...string) *LV {
		return &LV{Name: name, Attr: LVAttr{Type: 'V'}, Size: 64 << 20, Pool: "pool", Tags: append([]string{tagOwned}, tags...)}
	}
	st := &poolState{lvs: map[string]*LV{
		blockVol:  lv(blockVol, tag(keyKind, kindVolume), tag(keyAccess, "block")),
		mountVol:  lv(mountVol, tag(keyKind, kindVolume), tag(keyAccess, "mount"), tag(keyFsType, "ext4")),
		blockSnap: lv(blockSnap, tag(keyKind, kindSnapshot), tag(keySource, "volume:"+mountVol), tag(keyAccess, "block")),
		// Taken before snapshots recorded the type: the source says.
		legacyOfBlock: lv(legacyOfBlock, tag(keyKind, kindSnapshot), tag(keySource, "volume:"+blockVol)),
		// Taken before the tag, its source gone: unknown.
		orphan: lv(orphan, tag(keyKind, kindSnapshot), tag(keySource, "volume:v-e0000000000000000000000000000000")),
	}}
	cases := []struct {
		src    string
		access backend.AccessType
		ok     bool
	}{
		{blockVol, backend.AccessBlock, true},
		{blockVol, backend.AccessMount, false},
		{mountVol, backend.AccessMount, true},
		{mountVol, backend.AccessBlock, false},
		{blockSnap, backend.AccessMount, false},
		{blockSnap, backend.AccessBlock, true},
		{legacyOfBlock, backend.AccessMount, false},
		{legacyOfBlock, backend.AccessBlock, true},
		{orphan, backend.AccessMount, false},
		{orphan, backend.AccessBlock, true},
	}
	for _, tc := range cases {
		err := st.checkCopyAccess(st.lvs[tc.src], "v-new", tc.access)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, backend.ErrInvalid)) {
			t.Errorf("copy of %s as %s: %v, want ok=%v", tc.src, tc.access, err, tc.ok)
		}
	}
	if err := st.checkCopyAccess(st.lvs[orphan], "v-new", backend.AccessMount); err == nil || !strings.Contains(err.Error(), "csi-thin.io/access=mount") {
		t.Errorf("the refusal of an unknown snapshot should name the operator's tag: %v", err)
	}
}

// TestRestoreAsOtherAccessRunsNothing: through CreateVolume on the
// captured report, a block restore of the fixture's filesystem snapshot
// is refused before any LVM change.
func TestRestoreAsOtherAccessRunsNothing(t *testing.T) {
	b, f := fakeBackend(t, string(readFixture(t, "lvs-vg.json")))
	_, err := b.CreateVolume(context.Background(), backend.VolumeRequest{ID: backend.VolumeIDFor("as-block"), AccessType: backend.AccessBlock,
		Source: backend.Source{Kind: backend.SourceSnapshot, ID: fixtureSnap}})
	if !errors.Is(err, backend.ErrInvalid) {
		t.Fatalf("block restore of a filesystem snapshot: %v, want ErrInvalid", err)
	}
	_, err = b.CreateVolume(context.Background(), backend.VolumeRequest{ID: backend.VolumeIDFor("clone-as-block"), AccessType: backend.AccessBlock,
		Source: backend.Source{Kind: backend.SourceVolume, ID: fixtureVol}})
	if !errors.Is(err, backend.ErrInvalid) {
		t.Fatalf("block clone of a filesystem volume: %v, want ErrInvalid", err)
	}
	if m := mutations(f); len(m) != 0 {
		t.Errorf("ran %q", m)
	}
}
