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

// exportingBackend is a recordingBackend that says it exports (as the
// cluster's router does).
type exportingBackend struct{ *recordingBackend }

func (exportingBackend) ExportsSnapshots() bool { return true }

func TestCreateSnapshotExportParameters(t *testing.T) {
	valid := map[string]string{ParamExportSecretNamespace: "csi-thin", ParamExportSecretName: "s3-exports"}
	goodSecret := map[string]string{"endpoint": "https://s3.example.com", "bucket": "snapshots", "accessKeyID": "AKIA", "secretAccessKey": "very-secret-value"}
	for _, tc := range []struct {
		name       string
		params     map[string]string
		secrets    map[string]string
		bare       bool // a single pool: no exports
		want       *backend.ExportTarget
		wantCode   codes.Code
		wantInText string
	}{
		{name: "no export"},
		{name: "export", params: valid, want: &backend.ExportTarget{SecretNamespace: "csi-thin", SecretName: "s3-exports"}},
		{name: "export with a valid snapshotter secret", params: valid, secrets: goodSecret, want: &backend.ExportTarget{SecretNamespace: "csi-thin", SecretName: "s3-exports"}},
		{name: "retained export", params: map[string]string{ParamExportSecretNamespace: "csi-thin", ParamExportSecretName: "s3-exports", ParamExportRetain: "true"}, want: &backend.ExportTarget{SecretNamespace: "csi-thin", SecretName: "s3-exports", Retain: true}},
		{name: "export not retained", params: map[string]string{ParamExportSecretNamespace: "csi-thin", ParamExportSecretName: "s3-exports", ParamExportRetain: "false"}, want: &backend.ExportTarget{SecretNamespace: "csi-thin", SecretName: "s3-exports"}},
		{name: "retain not a boolean", params: map[string]string{ParamExportSecretNamespace: "csi-thin", ParamExportSecretName: "s3-exports", ParamExportRetain: "yes"}, wantCode: codes.InvalidArgument, wantInText: ParamExportRetain + `="yes"`},
		{name: "retain without an export", params: map[string]string{ParamExportRetain: "true"}, wantCode: codes.InvalidArgument, wantInText: "nothing is exported"},
		{name: "name only", params: map[string]string{ParamExportSecretName: "s3"}, wantCode: codes.InvalidArgument, wantInText: ParamExportSecretNamespace},
		{name: "namespace only", params: map[string]string{ParamExportSecretNamespace: "csi-thin"}, wantCode: codes.InvalidArgument, wantInText: ParamExportSecretName},
		{name: "bad namespace", params: map[string]string{ParamExportSecretNamespace: "Not_A_Namespace", ParamExportSecretName: "s3"}, wantCode: codes.InvalidArgument, wantInText: ParamExportSecretNamespace + `="Not_A_Namespace"`},
		{name: "bad name", params: map[string]string{ParamExportSecretNamespace: "csi-thin", ParamExportSecretName: "../s3"}, wantCode: codes.InvalidArgument, wantInText: ParamExportSecretName + `="../s3"`},
		{name: "empty name", params: map[string]string{ParamExportSecretNamespace: "csi-thin", ParamExportSecretName: ""}, wantCode: codes.InvalidArgument, wantInText: ParamExportSecretName},
		{name: "single pool", params: valid, bare: true, wantCode: codes.InvalidArgument, wantInText: "cluster mode"},
		{name: "snapshotter secret without bucket", params: valid, secrets: map[string]string{"endpoint": "https://s3.example.com", "accessKeyID": "AKIA", "secretAccessKey": "very-secret-value"}, wantCode: codes.InvalidArgument, wantInText: "bucket"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			rec := &recordingBackend{Backend: fake.New("n1", 10*backend.GiB)}
			var b backend.Backend = exportingBackend{rec}
			if tc.bare {
				b = rec
			}
			s := New(b)
			vol, err := s.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "src", VolumeCapabilities: []*csi.VolumeCapability{{
				AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
				AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}}})
			if err != nil {
				t.Fatal(err)
			}
			_, err = s.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: vol.GetVolume().GetVolumeId(), Parameters: tc.params, Secrets: tc.secrets})
			if status.Code(err) != tc.wantCode {
				t.Fatalf("CreateSnapshot: %v, want %s", err, tc.wantCode)
			}
			if err != nil {
				msg := status.Convert(err).Message()
				if !strings.Contains(msg, tc.wantInText) {
					t.Errorf("message %q does not name %q", msg, tc.wantInText)
				}
				if strings.Contains(msg, "very-secret-value") {
					t.Errorf("message %q shows the secret key", msg)
				}
				if rec.last.ID != "" {
					t.Error("refused, yet the backend was asked for a snapshot")
				}
				return
			}
			if (rec.last.Export == nil) != (tc.want == nil) || (tc.want != nil && *rec.last.Export != *tc.want) {
				t.Errorf("backend asked to export %+v, want %+v", rec.last.Export, tc.want)
			}
		})
	}
}

// A group snapshot class does not export: its parameters are refused.
func TestCreateGroupSnapshotRefusesExport(t *testing.T) {
	err := checkParameterKeys("VolumeGroupSnapshotClass", map[string]string{ParamExportSecretName: "s3", ParamExportSecretNamespace: "ns"}, snapshotParamKeys)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), ParamExportSecretName) {
		t.Errorf("group snapshot with export parameters: %v, want InvalidArgument naming them", err)
	}
}

// volumeRecorder keeps the last volume request and answers it without a
// pool (a restore from an export happens on a node agent).
type volumeRecorder struct {
	exportingBackend
	lastVolume backend.VolumeRequest
}

func (b *volumeRecorder) CreateVolume(_ context.Context, req backend.VolumeRequest) (*backend.Volume, error) {
	b.lastVolume = req
	return &backend.Volume{ID: req.ID, SizeBytes: req.RequiredBytes, Source: req.Source, Node: "n2"}, nil
}

// A pre-provisioned VolumeSnapshotContent's export handle: listed as a
// ready snapshot without touching the backend, and as a restore's source
// it reaches the backend as an export to place on any node; malformed, or
// on a single pool, it is refused.
func TestExportHandle(t *testing.T) {
	const v, s = "v-0123456789abcdef0123456789abcdef", "s-0123456789abcdef0123456789abcdef"
	handle := "export:backup/s3/" + v + "/" + s
	ctx := context.Background()
	mount := []*csi.VolumeCapability{{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}}
	fromSnapshot := func(id string) *csi.VolumeContentSource {
		return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
	}
	b := &volumeRecorder{exportingBackend: exportingBackend{&recordingBackend{Backend: fake.New("n1", 10*backend.GiB)}}}
	srv := New(b)

	list, err := srv.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: handle})
	if err != nil || len(list.GetEntries()) != 1 || !list.GetEntries()[0].GetSnapshot().GetReadyToUse() ||
		list.GetEntries()[0].GetSnapshot().GetSourceVolumeId() != v || list.GetEntries()[0].GetSnapshot().GetSnapshotId() != handle {
		t.Errorf("ListSnapshots(%s): %v, %v", handle, list, err)
	}
	if got, err := srv.GetSnapshot(ctx, &csi.GetSnapshotRequest{SnapshotId: handle}); err != nil || got.GetSnapshot().GetSnapshotId() != handle {
		t.Errorf("GetSnapshot(%s): %v, %v", handle, got, err)
	}
	resp, err := srv.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "restored", VolumeCapabilities: mount,
		CapacityRange: &csi.CapacityRange{RequiredBytes: backend.GiB}, VolumeContentSource: fromSnapshot(handle)})
	if err != nil {
		t.Fatalf("CreateVolume from %s: %v", handle, err)
	}
	if b.lastVolume.Source != (backend.Source{Kind: backend.SourceExport, ID: handle}) || b.lastVolume.Node != "" {
		t.Errorf("backend asked for %+v, want an export source and no fixed node", b.lastVolume)
	}
	if resp.GetVolume().GetContentSource().GetSnapshot().GetSnapshotId() != handle {
		t.Errorf("content source %v", resp.GetVolume().GetContentSource())
	}

	for _, bad := range []string{"export:backup/s3/" + v, "export:Backup/s3/" + v + "/" + s, "export:backup/s3/" + s + "/" + v} {
		_, err := srv.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "bad", VolumeCapabilities: mount, VolumeContentSource: fromSnapshot(bad)})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "export handle") {
			t.Errorf("CreateVolume from %q: %v, want InvalidArgument about the export handle", bad, err)
		}
		if list, err := srv.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: bad}); err != nil || len(list.GetEntries()) != 0 {
			t.Errorf("ListSnapshots(%q): %v, %v; want no entry", bad, list, err)
		}
	}

	bare := New(&recordingBackend{Backend: fake.New("n1", 10*backend.GiB)})
	_, err = bare.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "restored", VolumeCapabilities: mount, VolumeContentSource: fromSnapshot(handle)})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "cluster mode") {
		t.Errorf("single pool, CreateVolume from an export: %v, want InvalidArgument (cluster mode)", err)
	}
	if list, err := bare.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: handle}); err != nil || len(list.GetEntries()) != 0 {
		t.Errorf("single pool, ListSnapshots(%s): %v, %v; want no entry", handle, list, err)
	}
}

// The VolumeSnapshot the snapshotter names (--extra-create-metadata)
// reaches the backend, which records it for the export's Events.
func TestCreateSnapshotNamesItsVolumeSnapshot(t *testing.T) {
	ctx := context.Background()
	rec := &recordingBackend{Backend: fake.New("n1", 10*backend.GiB)}
	s := New(exportingBackend{rec})
	vol, err := s.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "src", VolumeCapabilities: []*csi.VolumeCapability{{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}}})
	if err != nil {
		t.Fatal(err)
	}
	params := map[string]string{provisionerParamPrefix + "volumesnapshot/namespace": "app", provisionerParamPrefix + "volumesnapshot/name": "nightly",
		provisionerParamPrefix + "volumesnapshotcontent/name": "snapcontent-1"}
	if _, err := s.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: vol.GetVolume().GetVolumeId(), Parameters: params}); err != nil {
		t.Fatal(err)
	}
	if rec.last.VolumeSnapshotNamespace != "app" || rec.last.VolumeSnapshotName != "nightly" {
		t.Errorf("backend told VolumeSnapshot %q/%q, want app/nightly", rec.last.VolumeSnapshotNamespace, rec.last.VolumeSnapshotName)
	}
}
