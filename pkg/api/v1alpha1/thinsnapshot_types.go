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
	// Export asks the node agent to copy the snapshot, once it is ready,
	// into the object store that a Secret describes (pkg/export), and to
	// delete that copy with the snapshot.
	// +optional
	Export *SnapshotExport `json:"export,omitempty"`
}

// SnapshotExport names where a snapshot is exported to. The Secret holds
// pkg/export's keys (endpoint, bucket, accessKeyID, secretAccessKey, ...);
// only its reference is stored here, never its values.
type SnapshotExport struct {
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	SecretNamespace string `json:"secretNamespace"`
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	SecretName string `json:"secretName"`
	// Retain keeps the export in the store when the snapshot is deleted (a
	// backup that outlives its snapshot); otherwise it is deleted with it.
	// +optional
	Retain bool `json:"retain,omitempty"`
}

// ExportPhase is where a snapshot's export is.
// +kubebuilder:validation:Enum=Pending;Exporting;Exported;Failed
type ExportPhase string

// Export phases.
const (
	// ExportPending: the snapshot is not ready yet, or the export waits
	// for its next attempt.
	ExportPending ExportPhase = "Pending"
	// ExportExporting: the stream is being uploaded.
	ExportExporting ExportPhase = "Exporting"
	// ExportExported: the export exists in the store (status.export.id).
	ExportExported ExportPhase = "Exported"
	// ExportFailed: the last attempt failed; the agent retries with backoff.
	ExportFailed ExportPhase = "Failed"
)

// ExportStatus is the progress and outcome of a snapshot's export.
type ExportStatus struct {
	// +optional
	Phase ExportPhase `json:"phase,omitempty"`
	// ID is the export's ID in the store: <volume ID>/<snapshot ID>.
	// +optional
	ID string `json:"id,omitempty"`
	// Parent is the export this one is incremental against ("" for full).
	// +optional
	Parent string `json:"parent,omitempty"`
	// BytesDone is what the upload has sent of the stream so far.
	// +optional
	BytesDone int64 `json:"bytesDone,omitempty"`
	// BytesTotal is the snapshot's allocated data (what a full stream's
	// payload is about); known once the send started.
	// +optional
	BytesTotal int64 `json:"bytesTotal,omitempty"`
	// Attempts counts the attempts of the current export.
	// +optional
	Attempts int32 `json:"attempts,omitempty"`
	// Message says why the last attempt failed.
	// +optional
	Message string `json:"message,omitempty"`
	// CompletionTime is when the export was complete.
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`
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
	// Export is the snapshot's export (spec.export).
	// +optional
	Export *ExportStatus `json:"export,omitempty"`
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
