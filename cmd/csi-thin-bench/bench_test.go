package main

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestSmokePresetKeepsExplicitFlags(t *testing.T) {
	c, err := parseBenchFlags([]string{"--smoke", "--runs", "3"})
	if err != nil {
		t.Fatal(err)
	}
	if c.runs != 3 {
		t.Errorf("runs = %d: the explicit flag lost to the smoke preset", c.runs)
	}
	if !reflect.DeepEqual(c.sizes, []int64{0, 4 << 20}) || c.throughputN != 4 || c.copyRuns != 1 {
		t.Errorf("smoke preset not applied: sizes %v, n %d, copies %d", c.sizes, c.throughputN, c.copyRuns)
	}
	if _, err := parseBenchFlags([]string{"--phases", "latency,bogus"}); err == nil {
		t.Error("an unknown phase was accepted")
	}
	if _, err := parseBenchFlags([]string{"--sizes", "0,1Zq"}); err == nil {
		t.Error("a bad size was accepted")
	}
}

func TestReadRunFromConsoleLog(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "vm.log")
	console := "SeaBIOS...\n[ 1.0] kernel line\n" + jsonBegin + "\n{\"backend\": \"lvmthin\", \"emulated\": true}\n" + jsonEnd + "\nVM-EXIT-STATUS=0\n"
	if err := os.WriteFile(log, []byte(console), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := readRun(log)
	if err != nil {
		t.Fatal(err)
	}
	if r.Backend != "lvmthin" || !r.Emulated {
		t.Errorf("readRun = %+v", r)
	}
	cut := filepath.Join(dir, "cut.log")
	os.WriteFile(cut, []byte(jsonBegin+"\n{\"backend\":"), 0o644)
	if _, err := readRun(cut); err == nil {
		t.Error("a log cut short was accepted")
	}
}

func TestClosestTo(t *testing.T) {
	if got := closestTo([]int64{0, 256 << 20, 1 << 30, 4 << 30}, 1<<30); got != 1<<30 {
		t.Errorf("closestTo = %d", got)
	}
	if got := closestTo([]int64{0}, 1<<30); got != 0 {
		t.Errorf("closestTo with only 0 = %d", got)
	}
}

func TestSpreadExtentsLeaveHolesAndChangesFillThem(t *testing.T) {
	const mib = 1 << 20
	data := spreadExtents(4096*mib, 256*mib, 4, 0)
	changes := spreadExtents(4096*mib, 16*mib+1, 4, 1)
	var sum int64
	for i, e := range data {
		sum += e.n
		if e.off%mib != 0 || e.off+e.n > 4096*mib || (i > 0 && e.off < data[i-1].off+data[i-1].n) {
			t.Errorf("data extent %d = %+v: unaligned, past the volume or overlapping", i, e)
		}
	}
	if sum != 256*mib || len(data) != 4 || data[1].off-(data[0].off+data[0].n) < 512*mib {
		t.Errorf("data extents %+v: want 4 of 64 MiB with holes between", data)
	}
	sum = 0
	for i, e := range changes {
		sum += e.n
		for _, d := range data {
			if e.off < d.off+d.n && d.off < e.off+e.n {
				t.Errorf("change extent %d = %+v overlaps data %+v: it should map new chunks", i, e, d)
			}
		}
	}
	if sum != 16*mib+1 {
		t.Errorf("changes sum to %d, want %d", sum, 16*mib+1)
	}
	if got := spreadExtents(256*mib, 0, 4, 0); len(got) != 0 {
		t.Errorf("no data: extents %+v", got)
	}
}

func TestParseDDBytes(t *testing.T) {
	out := "4096+0 records in\n4096+0 records out\n4294967296 bytes (4.3 GB, 4.0 GiB) copied, 41.2 s, 104 MB/s\n"
	if n, err := parseDDBytes(out); err != nil || n != 4<<30 {
		t.Errorf("parseDDBytes = %d, %v; want %d", n, err, 4<<30)
	}
	if _, err := parseDDBytes("dd: failed to open\n"); err == nil {
		t.Error("no report parsed as a count")
	}
}
