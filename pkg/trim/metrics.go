package trim

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Registered where the cluster modes' metrics server serves them (local
// mode serves no /metrics). kind is "volume" (a volume's own
// filesystem) or "pool" (a btrfs pool's filesystem).
var (
	trimmedBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "csi_thin",
		Subsystem: "trim",
		Name:      "discarded_bytes_total",
		Help:      "Bytes the scheduled trim discarded (FITRIM): free space returned to the pool below the filesystem.",
	}, []string{"kind"})
	trims = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "csi_thin",
		Subsystem: "trim",
		Name:      "runs_total",
		Help:      "Scheduled trims of one filesystem by result: trimmed, failed, or skipped (the volume was busy).",
	}, []string{"kind", "result"})
)

func init() { metrics.Registry.MustRegister(trimmedBytes, trims) }
