package controller

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/backend/fake"
	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

func mountCap(mode csi.VolumeCapability_AccessMode_Mode) []*csi.VolumeCapability {
	return []*csi.VolumeCapability{{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}}
}

var rwo = mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)

func nodeTopo(n string) []*csi.Topology {
	return []*csi.Topology{{Segments: map[string]string{wellknown.TopologyKey: n}}}
}

func TestCreateVolumeValidation(t *testing.T) {
	s := New(fake.New("n1", 10*backend.GiB))
	cases := []struct {
		name string
		req  *csi.CreateVolumeRequest
		want codes.Code
	}{
		{"no name", &csi.CreateVolumeRequest{VolumeCapabilities: rwo}, codes.InvalidArgument},
		{"no capabilities", &csi.CreateVolumeRequest{Name: "a"}, codes.InvalidArgument},
		{"multi-node access", &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)}, codes.InvalidArgument},
		{"no access mode", &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: []*csi.VolumeCapability{{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}}}}}, codes.InvalidArgument},
		{"limit below required", &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: rwo, CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * backend.GiB, LimitBytes: backend.GiB}}, codes.OutOfRange},
		{"unknown source snapshot", &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: rwo, VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: "nope"}}}}, codes.NotFound},
		{"too big for the pool", &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: rwo, CapacityRange: &csi.CapacityRange{RequiredBytes: 100 * backend.GiB}}, codes.ResourceExhausted},
		{"ok", &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: rwo}, codes.OK},
		{"same name, other size", &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: rwo, CapacityRange: &csi.CapacityRange{RequiredBytes: 3 * backend.GiB}}, codes.AlreadyExists},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.CreateVolume(context.Background(), tc.req)
			if got := status.Code(err); got != tc.want {
				t.Fatalf("code %v, want %v (%v)", got, tc.want, err)
			}
		})
	}
}

func TestCreateVolumeReportsTopologyAndSource(t *testing.T) {
	ctx := context.Background()
	s := New(fake.New("n1", 10*backend.GiB))
	resp, err := s.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "src", VolumeCapabilities: rwo, AccessibilityRequirements: &csi.TopologyRequirement{Preferred: nodeTopo("n1")}})
	if err != nil {
		t.Fatal(err)
	}
	v := resp.GetVolume()
	if v.GetAccessibleTopology()[0].GetSegments()[wellknown.TopologyKey] != "n1" || v.GetVolumeId() != backend.VolumeIDFor("src") {
		t.Fatalf("volume %+v", v)
	}
	clone, err := s.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "clone", VolumeCapabilities: rwo,
		VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: v.GetVolumeId()}}}})
	if err != nil {
		t.Fatal(err)
	}
	if clone.GetVolume().GetContentSource().GetVolume().GetVolumeId() != v.GetVolumeId() || clone.GetVolume().GetCapacityBytes() != v.GetCapacityBytes() {
		t.Fatalf("clone %+v", clone.GetVolume())
	}
}

// A clone must live with its source; a CO that asks for another node gets
// a precise refusal that says how to fix it.
func TestCloneOnOtherNodeIsRefused(t *testing.T) {
	ctx := context.Background()
	s := New(fake.New("n1", 10*backend.GiB))
	src, err := s.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "src", VolumeCapabilities: rwo})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "clone", VolumeCapabilities: rwo,
		AccessibilityRequirements: &csi.TopologyRequirement{Requisite: nodeTopo("n2"), Preferred: nodeTopo("n2")},
		VolumeContentSource:       &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: src.GetVolume().GetVolumeId()}}}})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("want FailedPrecondition, got %v", err)
	}
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "volumeBindingMode: Immediate") || !strings.Contains(msg, `"n1"`) {
		t.Fatalf("message does not explain: %q", msg)
	}
}

// nodeCopier is a cluster backend (not one pool) that copies across nodes.
type nodeCopier struct{ backend.Backend }

func (nodeCopier) CopiesAcrossNodes() bool { return true }

// A backend that copies across nodes gets the CO's node for a clone whose
// source is elsewhere (it copies the source there); without a requirement
// the clone stays with its source.
func TestCloneOnOtherNodeWithNodeCopier(t *testing.T) {
	ctx := context.Background()
	pool := fake.New("n1", 10*backend.GiB)
	src, err := pool.CreateVolume(ctx, backend.VolumeRequest{ID: backend.VolumeIDFor("src"), RequiredBytes: backend.GiB, AccessType: backend.AccessMount})
	if err != nil {
		t.Fatal(err)
	}
	s := New(nodeCopier{pool})
	for _, tc := range []struct {
		topo *csi.TopologyRequirement
		want string
	}{
		{&csi.TopologyRequirement{Requisite: append(nodeTopo("n3"), nodeTopo("n2")...), Preferred: nodeTopo("n2")}, "n2"},
		{&csi.TopologyRequirement{Requisite: nodeTopo("n3")}, "n3"},
		{&csi.TopologyRequirement{Requisite: append(nodeTopo("n2"), nodeTopo("n1")...), Preferred: nodeTopo("n2")}, "n1"},
		{nil, "n1"},
	} {
		got, err := s.placement(ctx, backend.Source{Kind: backend.SourceVolume, ID: src.ID}, tc.topo)
		if err != nil || got != tc.want {
			t.Errorf("placement for %v: %q, %v; want %q", tc.topo, got, err, tc.want)
		}
	}
}

func TestConcurrentSameNameCreatesOneVolume(t *testing.T) {
	b := fake.New("n1", 100*backend.GiB)
	s := New(b)
	var wg sync.WaitGroup
	ids := make([]string, 32)
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := s.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "same", VolumeCapabilities: rwo})
			if err != nil {
				t.Error(err)
				return
			}
			ids[i] = resp.GetVolume().GetVolumeId()
		}()
	}
	wg.Wait()
	for _, id := range ids {
		if id != ids[0] {
			t.Fatalf("different ids for one name: %v", ids)
		}
	}
	if b.Creates != 1 {
		t.Fatalf("%d volumes created for one name", b.Creates)
	}
}

func TestListVolumesPagination(t *testing.T) {
	ctx := context.Background()
	s := New(fake.New("n1", 100*backend.GiB))
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		if _, err := s.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: n, VolumeCapabilities: rwo, CapacityRange: &csi.CapacityRange{RequiredBytes: backend.MiB}}); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	token := ""
	for pages := 0; ; pages++ {
		resp, err := s.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 2, StartingToken: token})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetEntries()) > 2 {
			t.Fatalf("page of %d", len(resp.GetEntries()))
		}
		for _, e := range resp.GetEntries() {
			if seen[e.GetVolume().GetVolumeId()] {
				t.Fatalf("volume listed twice")
			}
			seen[e.GetVolume().GetVolumeId()] = true
		}
		if token = resp.GetNextToken(); token == "" {
			break
		}
		if pages > 5 {
			t.Fatal("pagination does not end")
		}
	}
	if len(seen) != 5 {
		t.Fatalf("listed %d of 5", len(seen))
	}
	if _, err := s.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: "garbage"}); status.Code(err) != codes.Aborted {
		t.Fatalf("bad token: want Aborted, got %v", err)
	}
	if _, err := s.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: -1}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("negative max: want InvalidArgument, got %v", err)
	}
}

func TestExpandReportsNodeExpansion(t *testing.T) {
	ctx := context.Background()
	s := New(fake.New("n1", 100*backend.GiB))
	vol, err := s.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: rwo, CapacityRange: &csi.CapacityRange{RequiredBytes: backend.GiB}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := s.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: vol.GetVolume().GetVolumeId(), CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * backend.GiB}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetCapacityBytes() != 2*backend.GiB || !resp.GetNodeExpansionRequired() {
		t.Fatalf("expand response %+v", resp)
	}
	if _, err := s.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: vol.GetVolume().GetVolumeId()}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("no range: %v", err)
	}
	if _, err := s.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: backend.VolumeIDFor("none"), CapacityRange: &csi.CapacityRange{RequiredBytes: 1}}); status.Code(err) != codes.NotFound {
		t.Fatalf("missing volume: %v", err)
	}
}
