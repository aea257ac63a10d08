package nodeagent

import (
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/metrics"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
)

// agentStageCount is how many samples the registry the agent serves on
// /metrics holds for one operation and stage of csi_thin_agent_stage_seconds.
func agentStageCount(t *testing.T, operation, stage string) uint64 {
	t.Helper()
	families, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "csi_thin_agent_stage_seconds" {
			continue
		}
		for _, m := range f.GetMetric() {
			var op, st string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "operation":
					op = l.GetValue()
				case "stage":
					st = l.GetValue()
				}
			}
			if op == operation && st == stage {
				return m.GetHistogram().GetSampleCount()
			}
		}
	}
	return 0
}

// The stages docs/kubernetes.md names for a create on the node: a fresh
// create records finalizer, backend and status once each; the re-read
// past the cache happens only when the finalizer was already held (a
// retry), and then it is recorded instead of the finalizer.
func TestCreateRecordsAgentStages(t *testing.T) {
	count := func() map[string]uint64 {
		out := map[string]uint64{}
		for _, st := range []string{stageFinalizer, stageRecheck, stageBackend, stageStatus} {
			out[st] = agentStageCount(t, "create_volume", st)
		}
		return out
	}
	e := newEnv(t, newVolume(vol1, "n1", backend.GiB))
	before := count()
	e.reconcileVolume(vol1)
	after := count()
	for st, want := range map[string]uint64{stageFinalizer: 1, stageRecheck: 0, stageBackend: 1, stageStatus: 1} {
		if got := after[st] - before[st]; got != want {
			t.Errorf("fresh create: stage %s recorded %d times, want %d", st, got, want)
		}
	}

	// A retry of a failed attempt: the finalizer is held, the cache is
	// re-read.
	retry := newVolume(backend.VolumeIDFor("retry"), "n1", backend.GiB)
	retry.Finalizers = []string{"csi-thin.io/node-cleanup"}
	retry.Status.Phase = thinv1.PhasePending
	e = newEnv(t, retry)
	before = count()
	e.reconcileVolume(retry.Name)
	after = count()
	for st, want := range map[string]uint64{stageFinalizer: 0, stageRecheck: 1, stageBackend: 1, stageStatus: 1} {
		if got := after[st] - before[st]; got != want {
			t.Errorf("retry: stage %s recorded %d times, want %d", st, got, want)
		}
	}
}
