package report

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/results"
	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/stats"
)

// sampleRun is a plausible btrfs run: flat clones, a slow copy, a thin
// snapshot, an overhead of 2x.
func sampleRun() *results.Run {
	lat := func(bytes int64, clone, copyMs float64) results.SizeLatency {
		return results.SizeLatency{SourceBytes: bytes, BareCommand: "btrfs subvolume snapshot",
			Snapshot: stats.Summary{N: 20, P50: clone, P95: clone * 1.5}, Clone: stats.Summary{N: 20, P50: clone, P95: clone * 2},
			Restore: stats.Summary{N: 20, P50: clone}, Bare: stats.Summary{N: 20, P50: clone / 2}, Copy: stats.Summary{N: 3, P50: copyMs}}
	}
	return &results.Run{
		Backend: "btrfs", Pool: "btrfs on a loop file", Seconds: 600,
		Config:  results.Config{Runs: 20, CopyRuns: 3, ThroughputN: 100, DiscardBytes: 1 << 30},
		Latency: []results.SizeLatency{lat(4<<30, 11, 40000), lat(0, 10, 5)},
		Space: &results.Space{SourceBytes: 1 << 30, CloneWriteBytes: 64 << 20,
			Snapshot: results.Usage{PoolBytes: 32 << 10, HasHost: true}, Clone: results.Usage{PoolBytes: 48 << 10, HasHost: true},
			CloneWrite: results.Usage{PoolBytes: 65 << 20, HasHost: true}},
		Discard: []results.Discard{{Mode: "default (discard)", Delete: "rm", WrittenBytes: 1 << 30,
			AfterWrite:  results.Usage{PoolBytes: 2 << 30, HostBytes: 2 << 30, HasHost: true},
			AfterDelete: results.Usage{PoolBytes: 1 << 30, HostBytes: 1 << 30, HasHost: true}}},
		Throughput: []results.Throughput{{Concurrency: 8, N: 100, CreateOpsPerSec: 50, DeleteOpsPerSec: 80}},
		Memory:     results.Memory{PeakBytes: 30 << 20, IdleRSSBytes: 25 << 20},
		Scaling:    []results.Scaling{{ExistingObjects: 0, Clone: stats.Summary{P50: 10}}, {ExistingObjects: 500, Clone: stats.Summary{P50: 12}}},
	}
}

func TestGoalsJudgeTheRightFigures(t *testing.T) {
	got := map[string]verdict{}
	for _, g := range evaluate(sampleRun()) {
		got[g.name] = g.outcome
	}
	want := map[string]verdict{
		"clone latency O(1)": met, "snapshot latency O(1)": met, "clone vs full copy": met,
		"overhead over the bare command": noGoal, // btrfs: reported only
		"space of a snapshot":            met, "space of a clone": met, "space of a write into a clone": met,
		"driver peak RSS": met,
	}
	for name, v := range want {
		if got[name] != v {
			t.Errorf("%s: verdict %v, want %v", name, got[name], v)
		}
	}
	r := sampleRun()
	r.Backend = "lvmthin"
	r.Space.CloneWrite.PoolBytes = 1 << 30 // a clone that copied everything
	for _, g := range evaluate(r) {
		if (g.name == "overhead over the bare command" || g.name == "space of a write into a clone") && g.outcome != missed {
			t.Errorf("lvmthin %s: %v, want missed (%s)", g.name, g.outcome, g.detail)
		}
	}
}

func TestReportsRender(t *testing.T) {
	runs := []*results.Run{sampleRun()}
	text := Text(runs)
	for _, want := range []string{"1.10x (4 GiB ÷ 0 B) ✅", "3636x", "32 KiB (of 1 GiB) ✅", "pool 1 GiB, host file 1 GiB of 1 GiB"} {
		if !strings.Contains(text, want) {
			t.Errorf("summary lacks %q:\n%s", want, text)
		}
	}
	md := Markdown(runs, "chart.png")
	if !strings.Contains(md, "![") || !strings.Contains(md, "### 5. Discard") {
		t.Errorf("markdown lacks the chart or a section:\n%s", md)
	}
	path := filepath.Join(t.TempDir(), "chart.png")
	if err := Chart(runs, path); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() < 1000 {
		t.Errorf("chart not written: %v", err)
	}
}

// A run of phases without latency (e.g. --phases freeze) still gets its
// report and a chart whose latency panel says it has no data.
func TestReportWithoutLatency(t *testing.T) {
	run := sampleRun()
	run.Latency, run.Scaling = nil, nil
	path := filepath.Join(t.TempDir(), "chart.png")
	if err := Chart([]*results.Run{run}, path); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() < 1000 {
		t.Errorf("chart not written: %v", err)
	}
	if text := Text([]*results.Run{run}); text == "" {
		t.Error("no summary")
	}
}
