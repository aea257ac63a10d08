// Package v1alpha1 holds the csi-thin.io/v1alpha1 custom resources: the
// records through which the central CSI controller asks a node for a volume
// or snapshot (ThinVolume, ThinSnapshot) and through which each node
// publishes its pool's space and health (ThinNode).
//
// All three are cluster-scoped. A ThinVolume or ThinSnapshot is named after
// the volume or snapshot ID (backend.VolumeIDFor / SnapshotIDFor), so a
// retried CreateVolume finds the same object; a ThinNode is named after its
// Kubernetes node.
//
// +kubebuilder:object:generate=true
// +groupName=csi-thin.io
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

// Group is the API group of every csi-thin resource.
const Group = "csi-thin.io"

var (
	// GroupVersion is the group and version of these types.
	GroupVersion = schema.GroupVersion{Group: Group, Version: "v1alpha1"}

	// SchemeBuilder registers the types with a runtime.Scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the types of this group to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
