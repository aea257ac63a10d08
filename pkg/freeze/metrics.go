package freeze

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// frozenWindow is how long filesystems stayed frozen per snapshot,
// registered where the cluster modes' metrics server serves it (local mode
// serves no /metrics).
var frozenWindow = prometheus.NewHistogram(prometheus.HistogramOpts{
	Namespace: "csi_thin",
	Subsystem: "snapshot",
	Name:      "frozen_seconds",
	Help:      "How long a source volume's filesystem was frozen for its snapshot (freeze to thaw).",
	Buckets:   []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
})

func init() { metrics.Registry.MustRegister(frozenWindow) }

// ObserveWindow records a frozen window in the histogram; pass it to New.
func ObserveWindow(d time.Duration) { frozenWindow.Observe(d.Seconds()) }
