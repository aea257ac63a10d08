package lvmthin

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/rpcerr"
	"google.golang.org/grpc/codes"
)

func TestMountsOfDevice(t *testing.T) {
	dev := unix.Mkdev(253, 7)
	other := unix.Mkdev(253, 8)
	// What a stat of each bind-mounted /dev file finds.
	nodes := map[string]uint64{"/pods/a/dev": dev, "/pods/b/dev": other, "/ctr/dev/vol": dev}
	statOf := func(p string) (uint64, bool) { d, ok := nodes[p]; return d, ok }
	mounts := []backend.Mount{
		{Major: 8, Minor: 1, Root: "/", MountPoint: "/", FsType: "ext4"},
		{Major: 253, Minor: 7, Root: "/", MountPoint: "/staging/v", FsType: "ext4"},        // staged
		{Major: 253, Minor: 7, Root: "/", MountPoint: "/pods/x/mount", FsType: "ext4"},     // published
		{Major: 253, Minor: 8, Root: "/", MountPoint: "/staging/other", FsType: "xfs"},     // another volume
		{Major: 0, Minor: 5, Root: "/dm-7", MountPoint: "/pods/a/dev", FsType: "devtmpfs"}, // raw block publish
		{Major: 0, Minor: 5, Root: "/dm-8", MountPoint: "/pods/b/dev", FsType: "devtmpfs"},
		{Major: 0, Minor: 5, Root: "/", MountPoint: "/dev", FsType: "devtmpfs"}, // /dev itself is not a use
		{Major: 0, Minor: 30, Root: "/vol", MountPoint: "/ctr/dev/vol", FsType: "tmpfs"},
	}
	got := mountsOfDevice(mounts, dev, statOf)
	want := []string{"/staging/v", "/pods/x/mount", "/pods/a/dev", "/ctr/dev/vol"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestDeleteOpenVolumeIsInUse: lvremove's refusal of an open LV becomes
// FailedPrecondition (it was Aborted, which a CO retries as if the
// conflict were its own call's).
func TestDeleteOpenVolumeIsInUse(t *testing.T) {
	b, f := fakeBackend(t, string(readFixture(t, "lvs-vg.json")))
	f.On("lvm lvremove", "", 5, string(readFixture(t, "lvremove-inuse.stderr")))
	err := b.DeleteVolume(context.Background(), fixtureVol)
	if !errors.Is(err, backend.ErrInUse) || rpcerr.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("delete of an open volume: %v (code %v)", err, rpcerr.Code(err))
	}
}

// TestActiveDeviceRunsNothing: ActiveDevice answers from /dev alone, never
// activating (no LVM command), and names no device for an ID that is not
// a volume's or for a volume that is not active.
func TestActiveDeviceRunsNothing(t *testing.T) {
	b, f := fakeBackend(t, "")
	for _, id := range []string{"../../dev/sda", "v-not-hex", backend.VolumeIDFor("inactive")} {
		if dev, ok := b.ActiveDevice(id); ok {
			t.Errorf("ActiveDevice(%q) = %q, want none", id, dev)
		}
	}
	if calls := f.Lines(); len(calls) != 0 {
		t.Errorf("ActiveDevice ran %v, want nothing", calls)
	}
}
