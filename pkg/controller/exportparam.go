package controller

import (
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/export"
)

// The VolumeSnapshotClass parameters that export each snapshot of the
// class to an object store (docs/mobility.md): the Secret with
// pkg/export's keys, by reference. The node agent reads the Secret when it
// exports; its values never enter a CRD. (The snapshotter's own
// csi.storage.k8s.io/snapshotter-secret-* parameters never reach the
// driver, only the values they resolve to, so they cannot name it.)
const (
	ParamExportSecretName      = "csi-thin.io/export-secret-name"
	ParamExportSecretNamespace = "csi-thin.io/export-secret-namespace"
	// ParamExportRetain "true" keeps each export when its snapshot is
	// deleted ("false", the default, deletes it with the snapshot).
	ParamExportRetain = "csi-thin.io/export-retain"
)

// exportTarget reads the export parameters of a CreateSnapshot: nil
// without them. secrets are the request's secrets (the class's
// snapshotter Secret, if it names one): when present they must be a valid
// export configuration, so a broken Secret is refused before a snapshot
// is cut instead of failing every export in the background.
func exportTarget(params, secrets map[string]string, b backend.Backend) (*backend.ExportTarget, error) {
	name, hasName := params[ParamExportSecretName]
	ns, hasNS := params[ParamExportSecretNamespace]
	retainValue, hasRetain := params[ParamExportRetain]
	if hasRetain && retainValue != "true" && retainValue != "false" {
		return nil, status.Errorf(codes.InvalidArgument, "VolumeSnapshotClass parameter %s=%.64q: want \"true\" or \"false\"", ParamExportRetain, retainValue)
	}
	retain := retainValue == "true"
	switch {
	case !hasName && !hasNS && hasRetain:
		return nil, status.Errorf(codes.InvalidArgument, "VolumeSnapshotClass parameter %s without %s and %s: nothing is exported", ParamExportRetain, ParamExportSecretNamespace, ParamExportSecretName)
	case !hasName && !hasNS:
		return nil, nil
	case !hasName:
		return nil, status.Errorf(codes.InvalidArgument, "VolumeSnapshotClass parameter %s is set but %s is not: an export needs both", ParamExportSecretNamespace, ParamExportSecretName)
	case !hasNS:
		return nil, status.Errorf(codes.InvalidArgument, "VolumeSnapshotClass parameter %s is set but %s is not: an export needs both", ParamExportSecretName, ParamExportSecretNamespace)
	}
	if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
		return nil, status.Errorf(codes.InvalidArgument, "VolumeSnapshotClass parameter %s=%.64q is not a namespace name: %s", ParamExportSecretNamespace, ns, strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return nil, status.Errorf(codes.InvalidArgument, "VolumeSnapshotClass parameter %s=%.64q is not a Secret name: %s", ParamExportSecretName, name, strings.Join(errs, "; "))
	}
	if e, ok := b.(backend.SnapshotExporter); !ok || !e.ExportsSnapshots() {
		return nil, status.Errorf(codes.InvalidArgument, "VolumeSnapshotClass parameter %s: snapshot exports need the cluster mode (the node agents export); this driver runs on a single pool", ParamExportSecretName)
	}
	if len(secrets) > 0 {
		data := make(map[string][]byte, len(secrets))
		for k, v := range secrets {
			data[k] = []byte(v)
		}
		if _, err := export.ConfigFromSecret(data); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "the VolumeSnapshotClass's snapshotter Secret is not an export configuration: %v", err)
		}
	}
	return &backend.ExportTarget{SecretNamespace: ns, SecretName: name, Retain: retain}, nil
}
