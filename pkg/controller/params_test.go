package controller

import (
	"context"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/backend/fake"
)

// TestUnknownParametersRefused: a StorageClass or VolumeSnapshotClass key
// csi-thin does not know is InvalidArgument naming it and the accepted
// keys; the sidecars' csi.storage.k8s.io/ keys pass, and only the PVC/PV
// metadata is recorded with the volume.
func TestUnknownParametersRefused(t *testing.T) {
	cases := []struct {
		name   string
		params map[string]string
		want   codes.Code
		// recorded is what the backend must be given (nil: nothing).
		recorded map[string]string
		// inError must appear in a refusal.
		inError []string
	}{
		{name: "none", want: codes.OK},
		{name: "typo", params: map[string]string{"bogus": "x"}, want: codes.InvalidArgument,
			inError: []string{`"bogus"`, "csi.storage.k8s.io/fstype", "csi.storage.k8s.io/pvc/name"}},
		{name: "another driver's parameter", params: map[string]string{"fsType": "ext4", "csi.storage.k8s.io/pvc/name": "c"},
			want: codes.InvalidArgument, inError: []string{`"fsType"`}},
		{name: "every unknown key named, sorted", params: map[string]string{"zz": "1", "aa": "2"}, want: codes.InvalidArgument,
			inError: []string{`"aa", "zz"`}},
		{name: "provisioner metadata", params: map[string]string{"csi.storage.k8s.io/pvc/name": "c", "csi.storage.k8s.io/pvc/namespace": "ns",
			"csi.storage.k8s.io/pv/name": "pv-1"}, want: codes.OK,
			recorded: map[string]string{"csi.storage.k8s.io/pvc/name": "c", "csi.storage.k8s.io/pvc/namespace": "ns", "csi.storage.k8s.io/pv/name": "pv-1"}},
		{name: "sidecar keys pass, not recorded", params: map[string]string{"csi.storage.k8s.io/fstype": "ext4",
			"csi.storage.k8s.io/provisioner-secret-name": "s"}, want: codes.OK},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := fake.New("n1", 10*backend.GiB)
			s := New(b)
			resp, err := s.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: rwo, Parameters: tc.params})
			if got := status.Code(err); got != tc.want {
				t.Fatalf("code %v, want %v (%v)", got, tc.want, err)
			}
			for _, s := range tc.inError {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not name %s", err, s)
				}
			}
			if err != nil {
				if vols, _ := b.ListVolumes(context.Background()); len(vols) != 0 {
					t.Errorf("a refused request made %d volumes", len(vols))
				}
				return
			}
			v, err := b.GetVolume(context.Background(), resp.GetVolume().GetVolumeId())
			if err != nil {
				t.Fatal(err)
			}
			if len(v.Parameters) != len(tc.recorded) {
				t.Errorf("recorded %v, want %v", v.Parameters, tc.recorded)
			}
			for k, want := range tc.recorded {
				if v.Parameters[k] != want {
					t.Errorf("recorded %v, want %v", v.Parameters, tc.recorded)
				}
			}
		})
	}
}

func TestUnknownSnapshotParametersRefused(t *testing.T) {
	cases := []struct {
		name   string
		params map[string]string
		want   codes.Code
	}{
		{"none", nil, codes.OK},
		{"snapshotter metadata", map[string]string{"csi.storage.k8s.io/volumesnapshot/name": "s",
			"csi.storage.k8s.io/volumesnapshot/namespace": "ns", "csi.storage.k8s.io/volumesnapshotcontent/name": "c"}, codes.OK},
		{"typo", map[string]string{"bogus": "x"}, codes.InvalidArgument},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := fake.New("n1", 10*backend.GiB)
			s := New(b)
			vol, err := s.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "src", VolumeCapabilities: rwo})
			if err != nil {
				t.Fatal(err)
			}
			_, err = s.CreateSnapshot(context.Background(), &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: vol.GetVolume().GetVolumeId(), Parameters: tc.params})
			if got := status.Code(err); got != tc.want {
				t.Fatalf("code %v, want %v (%v)", got, tc.want, err)
			}
			if tc.want != codes.OK {
				if !strings.Contains(err.Error(), `"bogus"`) || !strings.Contains(err.Error(), "csi.storage.k8s.io/volumesnapshot/name") {
					t.Errorf("error %q names neither the key nor the accepted ones", err)
				}
				if snaps, _ := b.ListSnapshots(context.Background()); len(snaps) != 0 {
					t.Errorf("a refused request made %d snapshots", len(snaps))
				}
			}
		})
	}
}
