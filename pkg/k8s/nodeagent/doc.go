// Package nodeagent is the Kubernetes side of `csi-thin --mode=node`: the
// reconcilers that turn this node's ThinVolume and ThinSnapshot resources
// into calls on the local pool (all idempotent), write the outcome to the
// resource's status (phase, size, gRPC code, message) and emit Events, and
// the ThinNode status writer that reports the pool's space and health.
//
// Finalizers tie each resource to its storage: a resource goes away only
// after the node removed what it stood for.
package nodeagent
