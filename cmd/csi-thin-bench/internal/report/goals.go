package report

import (
	"fmt"
	"strings"

	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/results"
)

// Goals of the benchmark (docs/performance.md).
const (
	goalConstantRatio = 1.2      // latency at the largest size ÷ at 0
	goalSpeedup       = 100.0    // full copy ÷ clone at the largest size
	goalOverheadLVM   = 1.5      // CSI clone ÷ lvcreate --snapshot
	goalSpaceBytes    = 1 << 20  // a snapshot or clone of 1 GiB
	goalRSSBytes      = 40 << 20 // peak RSS of the node plugin
	// A write into a clone should cost what was written: within 25% plus
	// 4 MiB of metadata and chunk rounding.
	goalWriteSlack      = 0.25
	goalWriteSlackBytes = 4 << 20
)

// verdict is a goal's outcome for one run.
type verdict int

const (
	noGoal verdict = iota
	met
	missed
	unknown
)

// markFor hides verdicts of smoke runs, whose tiny sizes judge nothing.
func markFor(r *results.Run, v verdict) string {
	if r.Config.Smoke {
		return ""
	}
	return v.mark()
}

func (v verdict) mark() string {
	switch v {
	case met:
		return " ✅"
	case missed:
		return " ❌"
	}
	return ""
}

func atMost(v, limit float64) verdict {
	if v <= 0 {
		return unknown
	}
	if v <= limit {
		return met
	}
	return missed
}

func atLeast(v, limit float64) verdict {
	if v <= 0 {
		return unknown
	}
	if v >= limit {
		return met
	}
	return missed
}

// goalResult is one line of the goals list.
type goalResult struct {
	run     *results.Run
	name    string
	outcome verdict
	detail  string
}

// evaluate checks every goal on one run.
func evaluate(r *results.Run) []goalResult {
	var out []goalResult
	add := func(name string, v verdict, format string, args ...any) {
		out = append(out, goalResult{run: r, name: name, outcome: v, detail: fmt.Sprintf(format, args...)})
	}
	if lo, hi, ok := smallestAndLargest(r); ok {
		cr := div(hi.Clone.P50, lo.Clone.P50)
		sr := div(hi.Snapshot.P50, lo.Snapshot.P50)
		add("clone latency O(1)", atMost(cr, goalConstantRatio), "p50 at %s ÷ at %s = %s (goal ≤ %.1f)", fmtBytes(hi.SourceBytes), fmtBytes(lo.SourceBytes), fmtRatio(cr), goalConstantRatio)
		add("snapshot latency O(1)", atMost(sr, goalConstantRatio), "p50 at %s ÷ at %s = %s (goal ≤ %.1f)", fmtBytes(hi.SourceBytes), fmtBytes(lo.SourceBytes), fmtRatio(sr), goalConstantRatio)
		sp := div(hi.Copy.P50, hi.Clone.P50)
		add("clone vs full copy", atLeast(sp, goalSpeedup), "full copy ÷ clone at %s = %s (goal ≥ %.0fx)", fmtBytes(hi.SourceBytes), fmtRatio(sp), goalSpeedup)
	}
	if s := sizesOf(r); len(s) > 0 {
		worst := 0.0
		for _, l := range s {
			worst = max(worst, div(l.Clone.P50, l.Bare.P50))
		}
		v := noGoal
		goal := "reported"
		if r.Backend == "lvmthin" {
			v, goal = atMost(worst, goalOverheadLVM), fmt.Sprintf("goal ≤ %.1fx", goalOverheadLVM)
		}
		add("overhead over the bare command", v, "CSI clone ÷ %s, worst size: %s (%s)", s[0].BareCommand, fmtRatio(worst), goal)
	}
	if sp := r.Space; sp != nil {
		add("space of a snapshot", atMost(float64(max(1, sp.Snapshot.PoolBytes)), goalSpaceBytes), "%s for a snapshot of %s (goal ≤ 1 MiB)", fmtBytes(sp.Snapshot.PoolBytes), fmtBytes(sp.SourceBytes))
		add("space of a clone", atMost(float64(max(1, sp.Clone.PoolBytes)), goalSpaceBytes), "%s for a clone of %s (goal ≤ 1 MiB)", fmtBytes(sp.Clone.PoolBytes), fmtBytes(sp.SourceBytes))
		w := float64(sp.CloneWrite.PoolBytes)
		limit := float64(sp.CloneWriteBytes)*(1+goalWriteSlack) + goalWriteSlackBytes
		v := missed
		if w >= float64(sp.CloneWriteBytes)*(1-goalWriteSlack) && w <= limit {
			v = met
		}
		add("space of a write into a clone", v, "%s for %s overwritten (goal ≈ what was written, not the source's %s)", fmtBytes(sp.CloneWrite.PoolBytes), fmtBytes(sp.CloneWriteBytes), fmtBytes(sp.SourceBytes))
	}
	if r.Memory.PeakBytes > 0 {
		add("driver peak RSS", atMost(float64(r.Memory.PeakBytes), goalRSSBytes), "%s VmHWM of the %s (goal ≤ 40 MiB for the node plugin)", fmtBytes(r.Memory.PeakBytes), r.Memory.Services)
	}
	return out
}

// goalsMarkdown lists every goal of every run.
func goalsMarkdown(runs []*results.Run) string {
	var b strings.Builder
	for _, r := range runs {
		for _, g := range evaluate(r) {
			mark := map[verdict]string{met: "met", missed: "**missed**", noGoal: "reported", unknown: "not measured"}[g.outcome]
			fmt.Fprintf(&b, "- %s — %s: %s — %s\n", backendLabel(r), g.name, mark, g.detail)
		}
	}
	return b.String()
}
