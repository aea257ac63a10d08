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

// The stages docs/kubernetes.md names for a create on the node: a
// resource without the agent's finalizer records finalizer, backend and
// status once each; one the router created with the finalizer skips the
// finalizer write, and the re-read past the cache happens only when this
// agent has seen the resource before (a retry).
func TestCreateRecordsAgentStages(t *testing.T) {
	count := func() map[string]uint64 {
		out := map[string]uint64{}
		for _, st := range []string{stageFinalizer, stageRecheck, stageBackend, stageStatus} {
			out[st] = agentStageCount(t, "create_volume", st)
		}
		return out
	}
	check := func(what string, e *env, name string, want map[string]uint64) {
		t.Helper()
		before := count()
		e.reconcileVolume(name)
		after := count()
		for st, n := range want {
			if got := after[st] - before[st]; got != n {
				t.Errorf("%s: stage %s recorded %d times, want %d", what, st, got, n)
			}
		}
	}
	e := newEnv(t, newVolume(vol1, "n1", backend.GiB))
	check("without the finalizer", e, vol1, map[string]uint64{stageFinalizer: 1, stageRecheck: 0, stageBackend: 1, stageStatus: 1})

	routed := newVolume(backend.VolumeIDFor("routed"), "n1", backend.GiB)
	routed.Finalizers = []string{"csi-thin.io/node-cleanup"}
	e = newEnv(t, routed)
	check("finalizer set by the router", e, routed.Name, map[string]uint64{stageFinalizer: 0, stageRecheck: 0, stageBackend: 1, stageStatus: 1})

	// A retry (here: the status went back to Pending): seen before, so the
	// cache is re-read.
	tv := e.volume(routed.Name)
	tv.Status.Phase = thinv1.PhasePending
	if err := e.c.Status().Update(e.ctx, tv); err != nil {
		t.Fatal(err)
	}
	check("retry", e, routed.Name, map[string]uint64{stageFinalizer: 0, stageRecheck: 1, stageBackend: 1, stageStatus: 1})
}
