package freeze

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/backend/fake"
)

// groupPool is a fake pool whose volumes are given block devices and whose
// group snapshot runs a hook before its members are made.
type groupPool struct {
	*fake.Backend
	targets map[string]backend.Target
	during  func() error
}

func (p *groupPool) Target(ctx context.Context, id string) (backend.Target, error) {
	if _, err := p.GetVolume(ctx, id); err != nil {
		return backend.Target{}, err
	}
	return p.targets[id], nil
}

func (p *groupPool) CreateGroupSnapshot(ctx context.Context, req backend.GroupSnapshotRequest) (*backend.GroupSnapshot, error) {
	if err := p.during(); err != nil {
		return nil, err
	}
	return p.Backend.CreateGroupSnapshot(ctx, req)
}

// TestGroupMembersFrozenTogether: two mounted members are both frozen
// while the backend makes the group, and thawed after. A kernel that
// refuses a snapshot of a frozen filesystem (busy) still gets its group,
// member by member, and every later group is taken unfrozen. A class
// that turns freezing off, and a group with one member mounted, are not
// frozen. Only a group whose members were all frozen reports OneInstant.
func TestGroupMembersFrozenTogether(t *testing.T) {
	mntA, devA := ext4Mount(t)
	mntB, devB := ext4Mount(t)
	for _, tc := range []struct {
		name        string
		mounted     int  // members whose device is mounted
		skip        bool // the class says freeze: "false"
		refuseBusy  bool // the backend fails busy while frozen
		busyThawed  bool // the first call fails busy whether frozen or not
		groups      int
		replay      bool          // the first group asked for again: nothing to freeze for
		timeout     time.Duration // the freeze timeout (0: the default)
		wantFrozen  []bool        // in each call of the backend's group snapshot
		wantRefused bool
		wantInstant bool // every group reports OneInstant
	}{
		{name: "two mounted members", mounted: 2, groups: 2, replay: true, wantFrozen: []bool{true, true, false}, wantInstant: true},
		{name: "freeze turned off by the class", mounted: 2, skip: true, groups: 1, wantFrozen: []bool{false}},
		{name: "one member mounted", mounted: 1, groups: 1, wantFrozen: []bool{false}},
		{name: "kernel refuses a frozen snapshot", mounted: 2, refuseBusy: true, groups: 2, wantFrozen: []bool{true, false, false}, wantRefused: true},
		{name: "thawed by the timeout before the group finished", mounted: 2, timeout: 20 * time.Millisecond, groups: 1, wantFrozen: []bool{false}},
		// Busy after the timeout thawed says nothing of the kernel: taken
		// again member by member, and freezing stays on.
		{name: "busy after the timeout thawed", mounted: 2, busyThawed: true, timeout: 20 * time.Millisecond, groups: 1, wantFrozen: []bool{false, false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			inner := &groupPool{Backend: fake.New("n1", 1<<30), targets: map[string]backend.Target{}}
			var sources []string
			for i, dev := range []string{devA, devB} {
				v, err := inner.CreateVolume(ctx, backend.VolumeRequest{ID: backend.VolumeIDFor(fmt.Sprint(tc.name, i)), RequiredBytes: 1 << 20, AccessType: backend.AccessMount})
				if err != nil {
					t.Fatal(err)
				}
				if i >= tc.mounted {
					dev = filepath.Join(t.TempDir(), "not-active")
				}
				inner.targets[v.ID] = backend.Target{Path: dev, IsDevice: true}
				sources = append(sources, v.ID)
			}
			f, err := New(t.TempDir(), tc.timeout, nil)
			if err != nil {
				t.Fatal(err)
			}
			var frozen []bool
			inner.during = func() error {
				a, b := startWriter(filepath.Join(mntA, "f")), startWriter(filepath.Join(mntB, "f"))
				h := held(t, a, b)
				heldA, heldB := h[0], h[1]
				if heldA != heldB {
					t.Errorf("call %d: member A frozen %v, member B frozen %v: not together", len(frozen)+1, heldA, heldB)
				}
				frozen = append(frozen, heldA)
				if tc.busyThawed && len(frozen) == 1 {
					return fmt.Errorf("lvcreate: suspend: device or resource busy: %w", backend.ErrBusy)
				}
				if heldA {
					// Resumed by the thaw, which the test must not wait for here.
					t.Cleanup(func() { wantResumes(t, "member A after the group", a); wantResumes(t, "member B after the group", b) })
					if tc.refuseBusy {
						return fmt.Errorf("lvcreate: suspend: device or resource busy: %w", backend.ErrBusy)
					}
				}
				return nil
			}
			pool := Wrap(inner, f, Options{}).(*Pool)
			for i := range tc.groups {
				req := backend.GroupSnapshotRequest{ID: backend.GroupSnapshotIDFor(fmt.Sprint(tc.name, i)), Name: "g", SourceVolumeIDs: sources, SkipFreeze: tc.skip}
				g, err := pool.CreateGroupSnapshot(ctx, req)
				if err != nil {
					t.Fatalf("group %d: %v", i, err)
				}
				if !g.ReadyToUse || len(g.Snapshots) != 2 {
					t.Fatalf("group %d: %+v", i, g)
				}
				if g.OneInstant != tc.wantInstant {
					t.Errorf("group %d: OneInstant = %v, want %v", i, g.OneInstant, tc.wantInstant)
				}
			}
			if tc.replay {
				req := backend.GroupSnapshotRequest{ID: backend.GroupSnapshotIDFor(fmt.Sprint(tc.name, 0)), Name: "g", SourceVolumeIDs: sources}
				if _, err := pool.CreateGroupSnapshot(ctx, req); err != nil {
					t.Fatalf("replay: %v", err)
				}
			}
			if fmt.Sprint(frozen) != fmt.Sprint(tc.wantFrozen) {
				t.Errorf("frozen in each backend call: %v, want %v", frozen, tc.wantFrozen)
			}
			if pool.TakesFrozen() == tc.wantRefused {
				t.Errorf("TakesFrozen() = %v after the groups, want %v", pool.TakesFrozen(), !tc.wantRefused)
			}
			if tc.refuseBusy {
				if _, err := inner.GetSnapshot(ctx, backend.MemberSnapshotID(backend.GroupSnapshotIDFor(fmt.Sprint(tc.name, 0)), sources[0])); err != nil {
					t.Errorf("the refused group was not taken member by member: %v", err)
				}
			}
		})
	}
}

// deviceListing is a pool that names active volumes' devices itself and
// whose Target (which activates, on LVM) must not be called.
type deviceListing struct {
	*groupPool
	t      *testing.T
	active map[string]string
}

func (p *deviceListing) Target(context.Context, string) (backend.Target, error) {
	p.t.Error("Target called: it activates an inactive LVM volume")
	return backend.Target{}, backend.ErrUnsupported
}

func (p *deviceListing) ActiveDevice(id string) (string, bool) {
	dev, ok := p.active[id]
	return dev, ok
}

// TestGroupFindsMountsWithoutActivating: a pool that names its active
// volumes' devices (LVM thin) is asked that way, never through Target;
// both members active and mounted are frozen, and a group with an
// inactive member is not.
func TestGroupFindsMountsWithoutActivating(t *testing.T) {
	mntA, devA := ext4Mount(t)
	mntB, devB := ext4Mount(t)
	for _, tc := range []struct {
		name       string
		active     int
		wantFrozen bool
	}{
		{name: "both active", active: 2, wantFrozen: true},
		{name: "one inactive", active: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			inner := &deviceListing{groupPool: &groupPool{Backend: fake.New("n1", 1<<30)}, t: t, active: map[string]string{}}
			var sources []string
			for i, dev := range []string{devA, devB} {
				v, err := inner.CreateVolume(ctx, backend.VolumeRequest{ID: backend.VolumeIDFor(fmt.Sprint(tc.name, i)), RequiredBytes: 1 << 20, AccessType: backend.AccessMount})
				if err != nil {
					t.Fatal(err)
				}
				if i < tc.active {
					inner.active[v.ID] = dev
				}
				sources = append(sources, v.ID)
			}
			frozen := false
			var writers []<-chan error
			inner.during = func() error {
				a, b := startWriter(filepath.Join(mntA, "f")), startWriter(filepath.Join(mntB, "f"))
				writers = append(writers, a, b)
				h := held(t, a, b)
				frozen = h[0] && h[1]
				return nil
			}
			f, err := New(t.TempDir(), 0, nil)
			if err != nil {
				t.Fatal(err)
			}
			req := backend.GroupSnapshotRequest{ID: backend.GroupSnapshotIDFor(tc.name), Name: "g", SourceVolumeIDs: sources}
			if _, err := Wrap(inner, f, Options{}).(*Pool).CreateGroupSnapshot(ctx, req); err != nil {
				t.Fatal(err)
			}
			if frozen != tc.wantFrozen {
				t.Errorf("members frozen: %v, want %v", frozen, tc.wantFrozen)
			}
			if frozen {
				for _, w := range writers {
					wantResumes(t, "after the group", w)
				}
			}
		})
	}
}
