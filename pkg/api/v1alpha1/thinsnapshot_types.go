package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ThinSnapshotSpec is what the controller asks the node for; it is fixed
// at creation.
// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec is immutable"
type ThinSnapshotSpec struct {
	// Node is the node of the source volume.
	// +kubebuilder:validation:MinLength=1
	Node string `json:"node"`
	// Name is the CSI request name (the VolumeSnapshotContent's name).
	// +optional
	Name string `json:"name,omitempty"`
	// SourceVolumeID is the volume to snapshot.
	// +kubebuilder:validation:Pattern=`^v-[0-9a-f]{32}$`
	SourceVolumeID string `json:"sourceVolumeID"`
	// SkipFreeze: snapshot without freezing the source's mounted
	// filesystem (VolumeSnapshotClass parameter freeze: "false").
	// +optional
	SkipFreeze bool `json:"skipFreeze,omitempty"`
	// GroupID names the ThinGroupSnapshot this snapshot is a member of.
	// The node took the member with its group, at the group's instant;
	// for a member the node only looks the snapshot up and never takes
	// one on its own.
	// +kubebuilder:validation:Pattern=`^g-[0-9a-f]{32}$`
	// +optional
	GroupID string `json:"groupID,omitempty"`
}

// ThinSnapshotStatus is what the node agent reports.
type ThinSnapshotStatus struct {
	// +optional
	Phase Phase `json:"phase,omitempty"`
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// SizeBytes is the size of the snapshotted volume (a restore needs at
	// least this much).
	// +optional
	SizeBytes int64 `json:"sizeBytes,omitempty"`
	// ReadyToUse says the snapshot can be restored from.
	// +optional
	ReadyToUse bool `json:"readyToUse,omitempty"`
	// CreationTime is when the node took the snapshot.
	// +optional
	CreationTime *metav1.Time `json:"creationTime,omitempty"`
	// OperationStatus is the outcome of the last attempt.
	OperationStatus `json:",inline"`
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// ThinSnapshot is one read-only thin snapshot on one node. Its name is the
// CSI snapshot ID.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=ts,categories=csi-thin
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.node`
// +kubebuilder:printcolumn:name="Source",type=string,JSONPath=`.spec.sourceVolumeID`
// +kubebuilder:printcolumn:name="Size",type=integer,JSONPath=`.status.sizeBytes`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Code",type=string,JSONPath=`.status.code`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ThinSnapshot struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   ThinSnapshotSpec   `json:"spec"`
	Status ThinSnapshotStatus `json:"status,omitempty"`
}

// ThinSnapshotList is a list of ThinSnapshots.
//
// +kubebuilder:object:root=true
type ThinSnapshotList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ThinSnapshot `json:"items"`
}

func init() {
	SchemeBuilder.Register(&ThinSnapshot{}, &ThinSnapshotList{})
}
