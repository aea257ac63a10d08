package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ThinGroupSnapshotSpec is what the controller asks of the node: one
// snapshot of each source volume, all taken at one instant.
type ThinGroupSnapshotSpec struct {
	// Node is the node of every source volume (a group is one instant
	// only within one pool).
	// +kubebuilder:validation:MinLength=1
	Node string `json:"node"`
	// Name is the CSI request name (the VolumeGroupSnapshotContent's name).
	// +optional
	Name string `json:"name,omitempty"`
	// SourceVolumeIDs are the volumes to snapshot, sorted.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:items:Pattern=`^v-[0-9a-f]{32}$`
	// +listType=set
	SourceVolumeIDs []string `json:"sourceVolumeIDs"`
	// SkipFreeze: take the members without freezing their mounted
	// filesystems (VolumeGroupSnapshotClass parameter freeze: "false").
	// +optional
	SkipFreeze bool `json:"skipFreeze,omitempty"`
}

// GroupMember is one snapshot of a group.
type GroupMember struct {
	// SnapshotID is the member's snapshot ID.
	SnapshotID string `json:"snapshotID"`
	// SourceVolumeID is the volume it copies.
	SourceVolumeID string `json:"sourceVolumeID"`
	// SizeBytes is the size of the snapshotted volume.
	// +optional
	SizeBytes int64 `json:"sizeBytes,omitempty"`
}

// ThinGroupSnapshotStatus is what the node agent reports.
type ThinGroupSnapshotStatus struct {
	// +optional
	Phase Phase `json:"phase,omitempty"`
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Members are the group's snapshots, once taken.
	// +optional
	// +listType=map
	// +listMapKey=snapshotID
	Members []GroupMember `json:"members,omitempty"`
	// ReadyToUse says every member can be restored from.
	// +optional
	ReadyToUse bool `json:"readyToUse,omitempty"`
	// CreationTime is when the group was taken.
	// +optional
	CreationTime *metav1.Time `json:"creationTime,omitempty"`
	// OneInstant says the members hold one instant (btrfs: one commit;
	// LVM thin: every member's filesystem frozen together). False: taken
	// one after another, each member crash-consistent on its own
	// (docs/consistency.md says when).
	// +optional
	OneInstant bool `json:"oneInstant,omitempty"`
	// OperationStatus is the outcome of the last attempt.
	OperationStatus `json:",inline"`
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// ThinGroupSnapshot is a group of thin snapshots taken together on one
// node (a VolumeGroupSnapshot), at one instant where status.oneInstant
// says so. Its name is the CSI group snapshot
// ID; each member also has a ThinSnapshot (spec.groupID names the group),
// through which it is restored, listed and deleted like any snapshot.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=tgs,categories=csi-thin
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.node`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="OneInstant",type=boolean,JSONPath=`.status.oneInstant`
// +kubebuilder:printcolumn:name="Code",type=string,JSONPath=`.status.code`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ThinGroupSnapshot struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   ThinGroupSnapshotSpec   `json:"spec"`
	Status ThinGroupSnapshotStatus `json:"status,omitempty"`
}

// ThinGroupSnapshotList is a list of ThinGroupSnapshots.
//
// +kubebuilder:object:root=true
type ThinGroupSnapshotList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ThinGroupSnapshot `json:"items"`
}

func init() {
	SchemeBuilder.Register(&ThinGroupSnapshot{}, &ThinGroupSnapshotList{})
}
