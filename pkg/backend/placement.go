package backend

import "fmt"

// CheckPlacement is the rule every Local backend applies to a new volume:
// a pool holds volumes of its own node only. A request naming another
// node (the CO's topology, or a clone's source elsewhere) is
// ErrPrecondition, so the CO learns the volume cannot be made here rather
// than getting one that lives where it did not ask. An empty Node lets the
// pool take it.
func CheckPlacement(req VolumeRequest, poolNode string) error {
	if req.Node != "" && req.Node != poolNode {
		return fmt.Errorf("volume %s requested on node %q, this pool is on %q: %w", req.ID, req.Node, poolNode, ErrPrecondition)
	}
	return nil
}
