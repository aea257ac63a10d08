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
