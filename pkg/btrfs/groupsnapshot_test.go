package btrfs

import (
	"testing"
	"time"
)

func TestNextGroupDelay(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name    string
		delay   time.Duration
		barrier uint64
		members []uint64
		want    time.Duration
	}{
		{"a member joined the barrier's transaction: too early, wait longer", ms, 11, []uint64{11, 12}, 2 * ms},
		{"every member in the barrier's: too early", 4 * ms, 11, []uint64{11, 11}, 8 * ms},
		{"too early, at most the maximum", 48 * ms, 11, []uint64{11, 12}, groupMaximumDelay},
		{"members raced each other after the barrier: too late, wait less", ms, 11, []uint64{12, 13}, ms / 2},
		{"too late, at least the minimum", 150 * time.Microsecond, 11, []uint64{13, 12}, groupMinimumDelay},
		{"the barrier failed: nothing learnt", 2 * ms, 0, []uint64{12, 13}, 2 * ms},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := nextGroupDelay(tt.delay, tt.barrier, tt.members); got != tt.want {
				t.Errorf("nextGroupDelay(%v, %d, %v) = %v, want %v", tt.delay, tt.barrier, tt.members, got, tt.want)
			}
		})
	}
}
