package nodeagent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Stages of a create on the node agent, in order: hold the finalizer (an
// API write), re-read past the cache (an API read), the pool's own work,
// and the status write that tells the controller. The router's "node"
// stage is their sum plus the watch hops either side.
const (
	stageFinalizer = "finalizer"
	stageRecheck   = "recheck"
	stageBackend   = "backend"
	stageStatus    = "status"
)

var stageSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
	Namespace: "csi_thin",
	Subsystem: "agent",
	Name:      "stage_seconds",
	Help:      "Time of each stage of a create on the node agent, by operation and stage (finalizer, recheck, backend, status).",
	Buckets:   []float64{.0005, .001, .002, .003, .005, .0075, .01, .015, .02, .03, .05, .075, .1, .2, .5, 1, 2, 5, 10, 30},
}, []string{"operation", "stage"})

func init() { metrics.Registry.MustRegister(stageSeconds) }

// observeStage records a stage that began at start.
func observeStage(operation, stage string, start time.Time) {
	stageSeconds.WithLabelValues(operation, stage).Observe(time.Since(start).Seconds())
}
