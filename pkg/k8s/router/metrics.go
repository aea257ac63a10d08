package router

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Stages of a routed create, in the order they happen. Their sum is the
// router's share of the CSI call; "node" includes the node agent's work
// (the agent's own csi_thin_agent_stage_seconds splits it further) and the
// two watch hops between the agent and the controller.
const (
	stagePlace  = "place"  // choose the node (informer cache reads)
	stageSubmit = "submit" // write the resource to the API server
	stageNode   = "node"   // until the node's verdict is seen in the cache
)

// stageSeconds is where the time of a routed create goes. Buckets are fine
// below 50 ms, where a create on an idle node spends its time.
var stageSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
	Namespace: "csi_thin",
	Subsystem: "router",
	Name:      "stage_seconds",
	Help:      "Time of each stage of a create routed to a node agent, by operation and stage (place, submit, node).",
	Buckets:   []float64{.0005, .001, .002, .003, .005, .0075, .01, .015, .02, .03, .05, .075, .1, .2, .5, 1, 2, 5, 10, 30},
}, []string{"operation", "stage"})

func init() { metrics.Registry.MustRegister(stageSeconds) }

// stageClock times the consecutive stages of one operation.
type stageClock struct {
	operation string
	last      time.Time
}

func startStages(operation string) *stageClock {
	return &stageClock{operation: operation, last: time.Now()}
}

// done records the stage that just ended and starts the next.
func (c *stageClock) done(stage string) {
	now := time.Now()
	stageSeconds.WithLabelValues(c.operation, stage).Observe(now.Sub(c.last).Seconds())
	c.last = now
}
