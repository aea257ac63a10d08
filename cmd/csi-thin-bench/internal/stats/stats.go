// Package stats summarises latency samples.
package stats

import (
	"math"
	"sort"
	"time"
)

// Summary is a latency distribution in milliseconds (JSON-friendly and
// what the report prints).
type Summary struct {
	N    int     `json:"n"`
	P50  float64 `json:"p50Ms"`
	P95  float64 `json:"p95Ms"`
	P99  float64 `json:"p99Ms"`
	Min  float64 `json:"minMs"`
	Max  float64 `json:"maxMs"`
	Mean float64 `json:"meanMs"`
}

// Summarize returns the distribution of samples; percentiles use the
// nearest-rank method, so p95 of 20 samples is the 19th smallest: one
// outlier in twenty runs does not move it, two do.
func Summarize(samples []time.Duration) Summary {
	if len(samples) == 0 {
		return Summary{}
	}
	ms := make([]float64, len(samples))
	var sum float64
	for i, d := range samples {
		ms[i] = float64(d) / float64(time.Millisecond)
		sum += ms[i]
	}
	sort.Float64s(ms)
	return Summary{
		N: len(ms), P50: rank(ms, 50), P95: rank(ms, 95), P99: rank(ms, 99),
		Min: ms[0], Max: ms[len(ms)-1], Mean: sum / float64(len(ms)),
	}
}

func rank(sorted []float64, p float64) float64 {
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}
