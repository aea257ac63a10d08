package driver

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// rpcDuration is the latency of every CSI call by method and final code,
// registered where the controller-runtime metrics server of the cluster
// modes serves it (local mode serves no /metrics).
var rpcDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
	Namespace: "csi_thin",
	Subsystem: "csi",
	Name:      "rpc_duration_seconds",
	Help:      "Latency of CSI calls by method and gRPC code.",
	// Fine between 10 and 50 ms, where a create lands: a p50 read from
	// the histogram is interpolated within one bucket.
	Buckets: []float64{.001, .0025, .005, .0075, .01, .015, .02, .025, .03, .04, .05, .075, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
}, []string{"method", "code"})

func init() { metrics.Registry.MustRegister(rpcDuration) }

func observe(method, code string, d time.Duration) {
	rpcDuration.WithLabelValues(method, code).Observe(d.Seconds())
}
