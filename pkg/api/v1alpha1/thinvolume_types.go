package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// VolumeSourceKind names what a volume is thinly copied from.
// +kubebuilder:validation:Enum=snapshot;volume;export
type VolumeSourceKind string

const (
	VolumeSourceSnapshot VolumeSourceKind = "snapshot"
	VolumeSourceVolume   VolumeSourceKind = "volume"
	// VolumeSourceExport: a snapshot exported to an object store, restored
	// on any node from its chain of exports.
	VolumeSourceExport VolumeSourceKind = "export"
)

// VolumeSource is the origin of a restored or cloned volume.
// +kubebuilder:validation:XValidation:rule="(self.kind == 'export') == has(self.export)",message="export is set exactly for kind export"
type VolumeSource struct {
	// Kind is snapshot (restore), volume (clone) or export (restore from
	// an object store).
	Kind VolumeSourceKind `json:"kind"`
	// ID is the source's snapshot or volume ID, on the same node unless
	// Node says otherwise; for an export, the export ID <volume ID>/<snapshot ID>.
	// +kubebuilder:validation:Pattern=`^([vs]-[0-9a-f]{32}|v-[0-9a-f]{32}/s-[0-9a-f]{32})$`
	ID string `json:"id"`
	// Export is the Secret of the export's object store (kind export).
	// +optional
	Export *SnapshotExport `json:"export,omitempty"`
	// Node is set for a cross-node copy: the source (kind snapshot or
	// volume) lives on this node, not on the volume's, and the volume's
	// node agent pulls the stream of SnapshotID from this node's agent
	// (pkg/transfer), with a one-time token the controller grants in the
	// annotation csi-thin.io/transfer-token.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Node string `json:"node,omitempty"`
	// SnapshotID is the snapshot a cross-node copy streams: the source
	// itself (kind snapshot), or the snapshot the controller took of the
	// source volume for this copy (kind volume), which it removes once the
	// copy is over.
	// +kubebuilder:validation:Pattern=`^s-[0-9a-f]{32}$`
	// +optional
	SnapshotID string `json:"snapshotID,omitempty"`
}

// AccessType is how the volume is consumed on the node.
// +kubebuilder:validation:Enum=mount;block
type AccessType string

const (
	AccessMount AccessType = "mount"
	AccessBlock AccessType = "block"
)

// ThinVolumeSpec is what the controller asks the node for. Everything but
// the size is fixed at creation; the size may only grow (expansion).
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.source) || (has(self.source) && self.source == oldSelf.source)",message="source is immutable"
// +kubebuilder:validation:XValidation:rule="has(oldSelf.source) || !has(self.source)",message="source is immutable"
type ThinVolumeSpec struct {
	// Node is the Kubernetes node whose pool holds the volume.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="node is immutable"
	Node string `json:"node"`
	// Name is the CSI request name (the PV name), kept for operators.
	// +optional
	Name string `json:"name,omitempty"`
	// RequiredBytes is the size asked for; raising it expands the volume.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:XValidation:rule="self >= oldSelf",message="requiredBytes may only grow"
	RequiredBytes int64 `json:"requiredBytes"`
	// LimitBytes is the CSI capacity range's limit; 0 means none.
	// +kubebuilder:validation:Minimum=0
	// +optional
	LimitBytes int64 `json:"limitBytes,omitempty"`
	// Source is set for a restore or a clone.
	// +optional
	Source *VolumeSource `json:"source,omitempty"`
	// AccessType is mount (a filesystem) or block (a raw device).
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="accessType is immutable"
	AccessType AccessType `json:"accessType"`
	// FsType is the filesystem for mount volumes.
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="fsType is immutable"
	// +optional
	FsType string `json:"fsType,omitempty"`
	// Parameters are the StorageClass parameters the backend understands.
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="parameters are immutable"
	// +optional
	Parameters map[string]string `json:"parameters,omitempty"`
}

// ThinVolumeStatus is what the node agent reports.
type ThinVolumeStatus struct {
	// Phase is Pending until the node made the volume (Ready) or gave up
	// (Failed). A failed expansion leaves the phase Ready and sets Code.
	// +optional
	Phase Phase `json:"phase,omitempty"`
	// ObservedGeneration is the spec generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// SizeBytes is the volume's actual (rounded up) size.
	// +optional
	SizeBytes int64 `json:"sizeBytes,omitempty"`
	// OperationStatus is the outcome of the last attempt.
	OperationStatus `json:",inline"`
	// Conditions: Ready and Healthy.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// Transfer is the progress of a cross-node copy (spec.source.node)
	// or of a restore from an export (phase, bytes, completion time).
	// +optional
	Transfer *TransferStatus `json:"transfer,omitempty"`
}

// TransferPhase is where a cross-node copy is.
// +kubebuilder:validation:Enum=AwaitingToken;Receiving;Received
type TransferPhase string

// Transfer phases.
const (
	// TransferAwaitingToken: the node agent needs a token (none granted
	// yet, or the last one is spent: a retry) and waits for the
	// controller to grant one.
	TransferAwaitingToken TransferPhase = "AwaitingToken"
	// TransferReceiving: the stream is being received.
	TransferReceiving TransferPhase = "Receiving"
	// TransferReceived: the stream verified; the volume is Ready.
	TransferReceived TransferPhase = "Received"
)

// TransferStatus is what the target node's agent reports of a cross-node
// copy.
type TransferStatus struct {
	// +optional
	Phase TransferPhase `json:"phase,omitempty"`
	// BytesDone is what the receive has read of the stream so far.
	// +optional
	BytesDone int64 `json:"bytesDone,omitempty"`
	// BytesTotal is the allocated data of the streamed snapshot (what
	// the stream's payload is about), known once the stream started.
	// +optional
	BytesTotal int64 `json:"bytesTotal,omitempty"`
	// Attempts counts the receives started (each with its own token).
	// +optional
	Attempts int32 `json:"attempts,omitempty"`
	// SpentTokenID is the ID of the last token the agent used: a token
	// is good for one attempt, so the controller grants a new one when
	// the granted token's ID is this one.
	// +optional
	SpentTokenID string `json:"spentTokenID,omitempty"`
	// Message says why the last attempt failed.
	// +optional
	Message string `json:"message,omitempty"`
	// CompletionTime is when the stream verified.
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`
}

// ThinVolume is one thin volume (LV or btrfs subvolume) on one node. Its
// name is the CSI volume ID.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=tv,categories=csi-thin
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.node`
// +kubebuilder:printcolumn:name="Size",type=integer,JSONPath=`.status.sizeBytes`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Code",type=string,JSONPath=`.status.code`,priority=1
// +kubebuilder:printcolumn:name="PV",type=string,JSONPath=`.spec.name`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ThinVolume struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   ThinVolumeSpec   `json:"spec"`
	Status ThinVolumeStatus `json:"status,omitempty"`
}

// ThinVolumeList is a list of ThinVolumes.
//
// +kubebuilder:object:root=true
type ThinVolumeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ThinVolume `json:"items"`
}

func init() {
	SchemeBuilder.Register(&ThinVolume{}, &ThinVolumeList{})
}
