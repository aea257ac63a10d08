package report

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/results"
)

// row is one line of the summary: a measurement, its goal, one cell per run.
type row struct {
	label, goal string
	cells       []string
}

// summaryRows builds the summary table shared by the terminal and the
// Markdown report.
func summaryRows(runs []*results.Run) []row {
	var rows []row
	add := func(label, goal string, cell func(r *results.Run) string) {
		rw := row{label: label, goal: goal}
		for _, r := range runs {
			rw.cells = append(rw.cells, cell(r))
		}
		rows = append(rows, rw)
	}
	find := func(r *results.Run, name string) goalResult {
		for _, g := range evaluate(r) {
			if g.name == name {
				return g
			}
		}
		return goalResult{outcome: unknown}
	}
	latency := func(pick func(results.SizeLatency) (float64, float64)) func(r *results.Run) string {
		return func(r *results.Run) string {
			var parts []string
			for _, l := range sizesOf(r) {
				p50, p95 := pick(l)
				parts = append(parts, fmt.Sprintf("%s: %s / %s", fmtBytes(l.SourceBytes), fmtMs(p50), fmtMs(p95)))
			}
			return strings.Join(parts, "; ")
		}
	}
	add("CreateSnapshot p50 / p95 by source data", "", latency(func(l results.SizeLatency) (float64, float64) { return l.Snapshot.P50, l.Snapshot.P95 }))
	add("clone (CreateVolume from volume) p50 / p95", "", latency(func(l results.SizeLatency) (float64, float64) { return l.Clone.P50, l.Clone.P95 }))
	ratio := func(get func(results.SizeLatency) float64) func(r *results.Run) string {
		return func(r *results.Run) string {
			lo, hi, ok := smallestAndLargest(r)
			if !ok {
				return "–"
			}
			return fmt.Sprintf("%s (%s ÷ %s)", fmtRatio(div(get(hi), get(lo))), fmtBytes(hi.SourceBytes), fmtBytes(lo.SourceBytes))
		}
	}
	add("snapshot p50, largest ÷ empty source", "≤ 1.2", func(r *results.Run) string {
		return ratio(func(l results.SizeLatency) float64 { return l.Snapshot.P50 })(r) + markFor(r, find(r, "snapshot latency O(1)").outcome)
	})
	add("clone p50, largest ÷ empty source", "≤ 1.2", func(r *results.Run) string {
		return ratio(func(l results.SizeLatency) float64 { return l.Clone.P50 })(r) + markFor(r, find(r, "clone latency O(1)").outcome)
	})
	add("full copy (cp) p50 at largest source", "", func(r *results.Run) string {
		if _, hi, ok := smallestAndLargest(r); ok {
			return fmt.Sprintf("%s (%s)", fmtMs(hi.Copy.P50), fmtBytes(hi.SourceBytes))
		}
		return "–"
	})
	add("speedup of clone over full copy, largest source", "≥ 100x", func(r *results.Run) string {
		if _, hi, ok := smallestAndLargest(r); ok {
			return fmtRatio(div(hi.Copy.P50, hi.Clone.P50)) + markFor(r, find(r, "clone vs full copy").outcome)
		}
		return "–"
	})
	add("CSI clone ÷ bare backend command (p50, per size)", "≤ 1.5 (LVM)", func(r *results.Run) string {
		var parts []string
		cmd := ""
		for _, l := range sizesOf(r) {
			parts = append(parts, fmtRatio(div(l.Clone.P50, l.Bare.P50)))
			cmd = l.BareCommand
		}
		if len(parts) == 0 {
			return "–"
		}
		return fmt.Sprintf("%s (vs %s)", strings.Join(parts, ", "), cmd) + markFor(r, find(r, "overhead over the bare command").outcome)
	})
	space := func(get func(*results.Space) (results.Usage, string), goalName string) func(r *results.Run) string {
		return func(r *results.Run) string {
			if r.Space == nil {
				return "–"
			}
			u, of := get(r.Space)
			return fmtBytes(u.PoolBytes) + " " + of + markFor(r, find(r, goalName).outcome)
		}
	}
	add("pool space added by a snapshot", "≤ 1 MiB (of 1 GiB)", space(func(s *results.Space) (results.Usage, string) {
		return s.Snapshot, "(of " + fmtBytes(s.SourceBytes) + ")"
	}, "space of a snapshot"))
	add("pool space added by a clone", "≤ 1 MiB (of 1 GiB)", space(func(s *results.Space) (results.Usage, string) {
		return s.Clone, "(of " + fmtBytes(s.SourceBytes) + ")"
	}, "space of a clone"))
	add("pool space added by overwriting part of a clone", "≈ 64 MiB for 64 MiB", space(func(s *results.Space) (results.Usage, string) {
		return s.CloneWrite, "for " + fmtBytes(s.CloneWriteBytes)
	}, "space of a write into a clone"))
	for i, label := range []string{"space returned after rm, default mount (discard)", "space returned after rm, nodiscard → after fstrim", "space returned by DeleteVolume"} {
		add(label, "reported", func(r *results.Run) string {
			if i >= len(r.Discard) {
				return "–"
			}
			return discardCell(r, r.Discard[i])
		})
	}
	add("CreateVolume ops/s (p95) at concurrency", "", func(r *results.Run) string {
		var parts []string
		for _, t := range r.Throughput {
			parts = append(parts, fmt.Sprintf("c=%d: %s/s (%s)", t.Concurrency, fmtRate(t.CreateOpsPerSec), fmtMs(t.Create.P95)))
		}
		return orDash(strings.Join(parts, "; "))
	})
	add("DeleteVolume ops/s (p95) at concurrency", "", func(r *results.Run) string {
		var parts []string
		for _, t := range r.Throughput {
			parts = append(parts, fmt.Sprintf("c=%d: %s/s (%s)", t.Concurrency, fmtRate(t.DeleteOpsPerSec), fmtMs(t.Delete.P95)))
		}
		return orDash(strings.Join(parts, "; "))
	})
	add("driver peak RSS (controller+node in one process)", "≤ 40 MiB", func(r *results.Run) string {
		if r.Memory.PeakBytes == 0 {
			return "–"
		}
		m := r.Memory
		return fmt.Sprintf("%s (idle %s; anonymous part: peak %s, idle %s)", fmtBytes(m.PeakBytes), fmtBytes(m.IdleRSSBytes), fmtBytes(m.PeakAnonBytes), fmtBytes(m.IdleAnonBytes)) + markFor(r, find(r, "driver peak RSS").outcome)
	})
	add("clone p50 with N other volumes+snapshots", "flat", func(r *results.Run) string {
		var parts []string
		for _, s := range r.Scaling {
			parts = append(parts, fmt.Sprintf("%d: %s (bare %s)", s.ExistingObjects, fmtMs(s.Clone.P50), fmtMs(s.Bare.P50)))
		}
		return orDash(strings.Join(parts, "; "))
	})
	add("frozen window (FIFREEZE→FITHAW) p50 / p99 by load, pkg/freeze on ext4", "reported", func(r *results.Run) string {
		var parts []string
		for _, f := range r.Freeze {
			parts = append(parts, fmt.Sprintf("%s: %s / %s", f.Load, fmtMs(f.Window.P50), fmtMs(f.Window.P99)))
		}
		return orDash(strings.Join(parts, "; "))
	})
	add("run time", "< 20 min", func(r *results.Run) string {
		return fmt.Sprintf("%.1f min", r.Seconds/60)
	})
	return rows
}

func orDash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}

// discardCell says how much of what was written came back: to the pool
// (LVM) or, for a loop-file btrfs pool, to the host under the file.
func discardCell(r *results.Run, d results.Discard) string {
	back := d.AfterWrite.Minus(d.AfterDelete)
	s := "pool " + fmtBytes(back.PoolBytes)
	if back.HasHost {
		s += ", host file " + fmtBytes(back.HostBytes)
	}
	if d.AfterTrim != nil {
		t := d.AfterWrite.Minus(*d.AfterTrim)
		s += " → after fstrim: pool " + fmtBytes(t.PoolBytes)
		if t.HasHost {
			s += ", host file " + fmtBytes(t.HostBytes)
		}
	}
	return s + " of " + fmtBytes(d.WrittenBytes)
}

// Text is the summary table for a terminal.
func Text(runs []*results.Run) string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	header := "measurement\tgoal"
	for _, r := range runs {
		header += "\t" + backendLabel(r)
	}
	fmt.Fprintln(w, header)
	for _, rw := range summaryRows(runs) {
		fmt.Fprintf(w, "%s\t%s\t%s\n", rw.label, orDash(rw.goal), strings.Join(rw.cells, "\t"))
	}
	w.Flush()
	for _, r := range runs {
		for _, n := range r.Notes {
			fmt.Fprintf(&b, "note (%s): %s\n", r.Backend, n)
		}
	}
	return b.String()
}
