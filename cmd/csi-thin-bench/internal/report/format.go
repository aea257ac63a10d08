// Package report turns benchmark runs into the summary table printed at
// the end of a run, a Markdown report and a PNG chart. Every figure is
// computed from one run's own measurements, so ratios never mix runs.
package report

import (
	"fmt"
	"sort"

	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/pools"
	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/results"
)

func fmtMs(ms float64) string {
	switch {
	case ms <= 0:
		return "–"
	case ms < 1:
		return fmt.Sprintf("%.2f ms", ms)
	case ms < 100:
		return fmt.Sprintf("%.1f ms", ms)
	case ms < 10000:
		return fmt.Sprintf("%.0f ms", ms)
	}
	return fmt.Sprintf("%.1f s", ms/1000)
}

func fmtBytes(n int64) string { return pools.HumanBytes(n) }

func fmtRatio(r float64) string {
	switch {
	case r <= 0:
		return "–"
	case r >= 100:
		return fmt.Sprintf("%.0fx", r)
	}
	return fmt.Sprintf("%.2fx", r)
}

// backendLabel names a run's column: backend plus where it ran.
func backendLabel(r *results.Run) string {
	if r.Emulated {
		return r.Backend + " (VM, emulated)"
	}
	return r.Backend + " (host)"
}

// sizesOf returns a run's latency rows sorted by source size.
func sizesOf(r *results.Run) []results.SizeLatency {
	out := append([]results.SizeLatency(nil), r.Latency...)
	sort.Slice(out, func(i, j int) bool { return out[i].SourceBytes < out[j].SourceBytes })
	return out
}

// smallestAndLargest are the latency rows the O(1) ratio compares.
func smallestAndLargest(r *results.Run) (lo, hi results.SizeLatency, ok bool) {
	s := sizesOf(r)
	if len(s) < 2 {
		return lo, hi, false
	}
	return s[0], s[len(s)-1], true
}

func div(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return a / b
}

// fmtRate keeps two significant digits for slow (emulated) rates.
func fmtRate(r float64) string {
	if r < 10 {
		return fmt.Sprintf("%.2g", r)
	}
	return fmt.Sprintf("%.0f", r)
}
