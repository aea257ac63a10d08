package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ThinNodeStatus is a node's pool as its node agent last saw it. The
// controller answers GetCapacity and picks nodes from it.
type ThinNodeStatus struct {
	// Backend is the pool's kind: btrfs or lvmthin.
	// +optional
	Backend string `json:"backend,omitempty"`
	// TotalBytes is the pool's physical size.
	// +optional
	TotalBytes int64 `json:"totalBytes,omitempty"`
	// UsedBytes is physically allocated data.
	// +optional
	UsedBytes int64 `json:"usedBytes,omitempty"`
	// ProvisionedBytes is the sum of the volumes' virtual sizes.
	// +optional
	ProvisionedBytes int64 `json:"provisionedBytes,omitempty"`
	// AvailableBytes is the largest new volume the pool accepts now.
	// +optional
	AvailableBytes int64 `json:"availableBytes,omitempty"`
	// MaximumVolumeBytes is the largest single volume ever creatable.
	// +optional
	MaximumVolumeBytes int64 `json:"maximumVolumeBytes,omitempty"`
	// DataPercent and MetadataPercent are the pool's fill levels (0-100).
	// +optional
	DataPercent float64 `json:"dataPercent,omitempty"`
	// +optional
	MetadataPercent float64 `json:"metadataPercent,omitempty"`
	// Overprovision is ProvisionedBytes / TotalBytes.
	// +optional
	Overprovision float64 `json:"overprovision,omitempty"`
	// Healthy is false when the pool cannot serve requests; Message says why.
	Healthy bool `json:"healthy"`
	// +optional
	Message string `json:"message,omitempty"`
	// Volumes and Snapshots count what the pool holds.
	// +optional
	Volumes int32 `json:"volumes,omitempty"`
	// +optional
	Snapshots int32 `json:"snapshots,omitempty"`
	// Strays counts what the pool holds that no ThinVolume or
	// ThinSnapshot of this node stands for (never deleted by the agent:
	// an operator decides). StrayIDs lists the first of them.
	// +optional
	Strays int32 `json:"strays,omitempty"`
	// +optional
	// +kubebuilder:validation:MaxItems=32
	StrayIDs []string `json:"strayIDs,omitempty"`
	// TransferAddress is where this node's agent serves its snapshots'
	// streams to other nodes' agents (host:port, pkg/transfer); empty
	// when it serves none (transfers off, or a pool that cannot stream).
	// +optional
	TransferAddress string `json:"transferAddress,omitempty"`
	// UpdateTime is when the node agent last wrote this status; a stale
	// ThinNode (agent gone) offers no capacity.
	// +optional
	UpdateTime *metav1.Time `json:"updateTime,omitempty"`
}

// ThinNode is the pool of one node; its name is the node's name. It has
// no spec: the node agent creates it and keeps its status current.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=tn,categories=csi-thin
// +kubebuilder:printcolumn:name="Backend",type=string,JSONPath=`.status.backend`
// +kubebuilder:printcolumn:name="Healthy",type=boolean,JSONPath=`.status.healthy`
// +kubebuilder:printcolumn:name="Available",type=integer,JSONPath=`.status.availableBytes`
// +kubebuilder:printcolumn:name="Data%",type=number,JSONPath=`.status.dataPercent`
// +kubebuilder:printcolumn:name="Meta%",type=number,JSONPath=`.status.metadataPercent`
// +kubebuilder:printcolumn:name="Volumes",type=integer,JSONPath=`.status.volumes`
// +kubebuilder:printcolumn:name="Strays",type=integer,JSONPath=`.status.strays`,priority=1
// +kubebuilder:printcolumn:name="Updated",type=date,JSONPath=`.status.updateTime`
type ThinNode struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Status ThinNodeStatus `json:"status,omitempty"`
}

// ThinNodeList is a list of ThinNodes.
//
// +kubebuilder:object:root=true
type ThinNodeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ThinNode `json:"items"`
}

func init() {
	SchemeBuilder.Register(&ThinNode{}, &ThinNodeList{})
}
