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
