package lvmthin

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

func TestGroupTagRoundTrip(t *testing.T) {
	gid := backend.GroupSnapshotIDFor("g")
	tags, err := encodeTags(objectMeta{Kind: kindSnapshot, Group: gid, GroupSize: 3})
	if err != nil {
		t.Fatal(err)
	}
	if m := decodeTags(tags); m.Group != gid || m.GroupSize != 3 {
		t.Fatalf("decoded %+v from %q", m, tags)
	}
	for _, bad := range []objectMeta{{Kind: kindSnapshot, Group: "g-x", GroupSize: 1}, {Kind: kindSnapshot, Group: gid}} {
		if _, err := encodeTags(bad); !errors.Is(err, backend.ErrInvalid) {
			t.Errorf("%+v: want ErrInvalid, got %v", bad, err)
		}
	}
	if m := decodeTags([]string{tag(keyGroup, "../x:2")}); m.Group != "" {
		t.Fatalf("a malformed group tag was read: %+v", m)
	}
}

// A member is one lvcreate carrying the group's tag; a failed lvcreate
// leaves nothing to remove.
func TestGroupSnapshotMemberCommands(t *testing.T) {
	b, f := fakeBackend(t, string(readFixture(t, "lvs-vg.json")))
	gid := backend.GroupSnapshotIDFor("g")
	f.On("lvm lvcreate", "", 5, "  Insufficient free space")
	_, err := b.CreateGroupSnapshot(context.Background(), backend.GroupSnapshotRequest{ID: gid, Name: "g", SourceVolumeIDs: []string{fixtureVol}})
	if err == nil {
		t.Fatal("group snapshot with a failing lvcreate succeeded")
	}
	m := mutations(f)
	if len(m) != 1 || !strings.HasPrefix(m[0], "lvm lvcreate --snapshot --name "+backend.MemberSnapshotID(gid, fixtureVol)) ||
		!strings.Contains(m[0], " --addtag csi-thin.io/group="+gid+":1 ") {
		t.Fatalf("commands: %q", m)
	}
}
