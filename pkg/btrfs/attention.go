package btrfs

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// One object that recovery cannot put right must not take the pool down:
// it is left as it is, reported (log, metrics, the volume's condition) and
// refused with a precise error by the calls that would build on it, while
// every other object is served.

var (
	objectsNeedingAttention = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "csi_thin",
		Subsystem: "btrfs",
		Name:      "objects_needing_attention",
		Help:      "Volumes and snapshots of a btrfs pool that the driver could not recover or migrate by itself (the log names each).",
	}, []string{"pool"})
	recoveryFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "csi_thin",
		Subsystem: "btrfs",
		Name:      "recovery_failures_total",
		Help:      "Failures to recover or migrate one object of a btrfs pool (each distinct failure once).",
	}, []string{"pool"})
)

// Collectors returns the pools' metrics for the binary to serve
// (cmd/csi-thin registers them where its /metrics endpoint reads). The
// backend registers nothing itself: a registry of the Kubernetes libraries
// here would pull their hundreds of packages into the backend's build and
// into every input its fuzz target runs.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{objectsNeedingAttention, recoveryFailures}
}

// needsAttention records that id could not be put right, and why.
func (p *Pool) needsAttention(id string, err error) {
	p.attMu.Lock()
	defer p.attMu.Unlock()
	if p.attention[id] == err.Error() {
		return // already reported (an unreadable record is met on every list)
	}
	recoveryFailures.WithLabelValues(p.mountPath).Inc()
	klog.ErrorS(err, "btrfs object needs an operator: left as it is, every other object is served", "volumeID", id, "pool", p.mountPath)
	p.attention[id] = err.Error()
	objectsNeedingAttention.WithLabelValues(p.mountPath).Set(float64(len(p.attention)))
}

// attended clears id once an operation on it succeeded.
func (p *Pool) attended(id string) {
	p.attMu.Lock()
	defer p.attMu.Unlock()
	if _, ok := p.attention[id]; !ok {
		return
	}
	delete(p.attention, id)
	objectsNeedingAttention.WithLabelValues(p.mountPath).Set(float64(len(p.attention)))
	klog.InfoS("btrfs object recovered", "volumeID", id)
}

// attentionError is the error of a call that would build on id while it
// needs attention, nil otherwise.
func (p *Pool) attentionError(id string) error {
	p.attMu.Lock()
	defer p.attMu.Unlock()
	if msg, ok := p.attention[id]; ok {
		return fmt.Errorf("%s needs an operator (%s): %w", id, msg, backend.ErrPrecondition)
	}
	return nil
}

// NeedingAttention returns the objects that need an operator and why.
func (p *Pool) NeedingAttention() map[string]string {
	p.attMu.Lock()
	defer p.attMu.Unlock()
	out := make(map[string]string, len(p.attention))
	for k, v := range p.attention {
		out[k] = v
	}
	return out
}
