package stats

import (
	"testing"
	"time"
)

func TestNearestRank(t *testing.T) {
	var s []time.Duration
	for i := 20; i >= 1; i-- { // unsorted on purpose
		s = append(s, time.Duration(i)*time.Millisecond)
	}
	got := Summarize(s)
	want := Summary{N: 20, P50: 10, P95: 19, P99: 20, Min: 1, Max: 20, Mean: 10.5}
	if got != want {
		t.Errorf("Summarize = %+v, want %+v", got, want)
	}
	if one := Summarize([]time.Duration{3 * time.Millisecond}); one.P50 != 3 || one.P95 != 3 {
		t.Errorf("single sample: %+v", one)
	}
	if (Summarize(nil) != Summary{}) {
		t.Error("no samples should give the zero summary")
	}
}
