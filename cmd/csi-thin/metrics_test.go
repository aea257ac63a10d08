package main

import (
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/csi-thin/csi-thin/pkg/btrfs"
)

// TestBtrfsMetricsServed: the btrfs pools' metrics are in the registry the
// node agent's /metrics endpoint serves (a second registration of each is
// refused as a duplicate).
func TestBtrfsMetricsServed(t *testing.T) {
	for _, c := range btrfs.Collectors() {
		var dup prometheus.AlreadyRegisteredError
		if err := metrics.Registry.Register(c); !errors.As(err, &dup) {
			t.Errorf("registering a btrfs collector again: %v, want it already registered", err)
			if err == nil {
				metrics.Registry.Unregister(c)
			}
		}
	}
}
