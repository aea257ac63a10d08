package v1alpha1

// Phase is where a ThinVolume or ThinSnapshot is in its life on the node.
// +kubebuilder:validation:Enum=Pending;Ready;Failed;Lost
type Phase string

const (
	// PhasePending: the node has not (yet) made the object.
	PhasePending Phase = "Pending"
	// PhaseReady: the object exists on the node.
	PhaseReady Phase = "Ready"
	// PhaseFailed: the node could not make the object; Code and Message
	// say why. The controller deletes a failed object so a retry starts
	// afresh.
	PhaseFailed Phase = "Failed"
	// PhaseLost: the node is gone from the cluster, or its agent stopped
	// reporting for longer than the controller's grace period, so nobody
	// can reach the storage. The controller sets it; the node's agent,
	// back, sets Ready again once it finds the storage. Deleting a lost
	// object does not wait for the node (see the router).
	PhaseLost Phase = "Lost"
)

// Condition types.
const (
	// ConditionReady mirrors Phase with a reason (the gRPC code name) and
	// the node's message.
	ConditionReady = "Ready"
	// ConditionHealthy is the backend's volume condition (CSI
	// VolumeCondition): False when the volume is abnormal.
	ConditionHealthy = "Healthy"
	// ConditionExported: a ThinSnapshot's export (spec.export) is complete
	// (True) or its last attempt failed (False, with the reason).
	ConditionExported = "Exported"
)

// OperationStatus is the outcome of the node's last attempt at the
// resource's spec: the gRPC code the node-side error maps to, so the
// controller can hand the caller exactly the code the node would have
// returned, and the node's own message.
type OperationStatus struct {
	// Code is the gRPC status code name (e.g. "ResourceExhausted"); empty
	// or "OK" when the last attempt succeeded.
	// +optional
	Code string `json:"code,omitempty"`
	// Message is the node's error message.
	// +optional
	Message string `json:"message,omitempty"`
}

// Condition reasons besides the gRPC code names.
const (
	// ReasonCreated: the node made the object.
	ReasonCreated = "Created"
	// ReasonDeleteFailed: the object is being deleted and the node could
	// not remove the storage yet; Code and Message say why.
	ReasonDeleteFailed = "DeleteFailed"
	// ReasonNodeLost: the Ready condition of an object whose node is lost.
	ReasonNodeLost = "NodeLost"
	// ReasonStorageMissing: the node came back without the object's
	// storage (e.g. a replaced disk).
	ReasonStorageMissing = "StorageMissing"
	// ReasonRecovered: the node came back with the storage.
	ReasonRecovered = "Recovered"
	// ReasonResumed: the node came back, and the object it had not made
	// yet when it was judged lost is being made now.
	ReasonResumed = "Resumed"
)
