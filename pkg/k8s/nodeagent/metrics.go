package nodeagent

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
)

// PoolMetrics exports the pool's state as Prometheus gauges on the
// manager's /metrics endpoint. People alert on data% and metadata% of thin
// pools: an exhausted thin pool fails writes inside every volume at once.
type PoolMetrics struct {
	dataPercent, metadataPercent        *prometheus.GaugeVec
	total, used, provisioned, avail     *prometheus.GaugeVec
	overprovision, healthy, vols, snaps *prometheus.GaugeVec
	strays                              *prometheus.GaugeVec
}

// NewPoolMetrics creates the gauges and registers them with reg (nil: the
// controller-runtime registry served by the manager).
func NewPoolMetrics(reg prometheus.Registerer) (*PoolMetrics, error) {
	if reg == nil {
		reg = metrics.Registry
	}
	gauge := func(name, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "csi_thin", Subsystem: "pool", Name: name, Help: help}, []string{"node", "backend"})
	}
	m := &PoolMetrics{
		dataPercent:     gauge("data_percent", "Pool data fill level, percent."),
		metadataPercent: gauge("metadata_percent", "Pool metadata fill level, percent (LVM thin pools)."),
		total:           gauge("total_bytes", "Physical size of the pool."),
		used:            gauge("used_bytes", "Physically allocated bytes."),
		provisioned:     gauge("provisioned_bytes", "Sum of the virtual sizes of all volumes."),
		avail:           gauge("available_bytes", "Largest new volume the pool accepts now."),
		overprovision:   gauge("overprovision_ratio", "Provisioned bytes divided by the pool size."),
		healthy:         gauge("healthy", "1 when the pool can serve requests."),
		vols:            gauge("volumes", "Volumes in the pool."),
		snaps:           gauge("snapshots", "Snapshots in the pool."),
		strays:          gauge("strays", "Volumes and snapshots in the pool that no ThinVolume or ThinSnapshot stands for (kept, never deleted by the agent)."),
	}
	for _, c := range m.all() {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *PoolMetrics) all() []*prometheus.GaugeVec {
	return []*prometheus.GaugeVec{m.dataPercent, m.metadataPercent, m.total, m.used, m.provisioned, m.avail, m.overprovision, m.healthy, m.vols, m.snaps, m.strays}
}

// Observe sets the gauges from a ThinNode status.
func (m *PoolMetrics) Observe(node string) func(thinv1.ThinNodeStatus) {
	return func(s thinv1.ThinNodeStatus) {
		l := prometheus.Labels{"node": node, "backend": s.Backend}
		m.dataPercent.With(l).Set(s.DataPercent)
		m.metadataPercent.With(l).Set(s.MetadataPercent)
		m.total.With(l).Set(float64(s.TotalBytes))
		m.used.With(l).Set(float64(s.UsedBytes))
		m.provisioned.With(l).Set(float64(s.ProvisionedBytes))
		m.avail.With(l).Set(float64(s.AvailableBytes))
		m.overprovision.With(l).Set(s.Overprovision)
		h := 0.0
		if s.Healthy {
			h = 1
		}
		m.healthy.With(l).Set(h)
		m.vols.With(l).Set(float64(s.Volumes))
		m.snaps.With(l).Set(float64(s.Snapshots))
		m.strays.With(l).Set(float64(s.Strays))
	}
}

// TransferMetrics counts this node's cross-node copies as the target.
type TransferMetrics struct {
	received prometheus.Counter
	inFlight prometheus.Gauge
}

// NewTransferMetrics creates the metrics and registers them with reg
// (nil: the controller-runtime registry).
func NewTransferMetrics(reg prometheus.Registerer) (*TransferMetrics, error) {
	if reg == nil {
		reg = metrics.Registry
	}
	m := &TransferMetrics{
		received: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "csi_thin", Subsystem: "transfer", Name: "received_bytes_total",
			Help: "Bytes of volume streams received from other nodes for cross-node copies (framing included)."}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "csi_thin", Subsystem: "transfer", Name: "receives_in_flight",
			Help: "Cross-node copies this node is receiving now."}),
	}
	for _, c := range []prometheus.Collector{m.received, m.inFlight} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
