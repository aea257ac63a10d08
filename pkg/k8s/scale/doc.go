// Package scale holds the simulated many-node run: node agents (in-process,
// each with its own manager, cache and fake pool) and the router against
// one real kube-apiserver + etcd (internal/kubeapi). Its test measures
// CreateVolume through the router and checks that every agent receives
// only its own node's resources. SCALE_NODES sets the node count.
package scale
