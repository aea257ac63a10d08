// Package hack holds the project's scripts; this test runs test-stages.sh,
// which `make test` is made of, on stages of a makefile of its own.
package hack

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// stagesMakefile's targets are the stages: GNU make reads the files in
// MAKEFILES before the repository's Makefile, so these are added to it.
// burn does a fixed amount of work (~2 s of one core here), whatever the
// machine's load.
const stagesMakefile = `
stage-burn:
	@sh -c 'i=0; while [ $$i -lt 1500000 ]; do i=$$((i+1)); done'
stage-ok:
	@echo fine
stage-fail:
	@echo broken; exit 3
`

func TestStagesTable(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make not installed")
	}
	dir := t.TempDir()
	mk := filepath.Join(dir, "stages.mk")
	if err := os.WriteFile(mk, []byte(stagesMakefile), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "bin")
	cmd := exec.Command("bash", "test-stages.sh", "stage-burn stage-ok", "stage-fail stage-ok")
	cmd.Env = append(os.Environ(), "MAKEFILES="+mk, "TEST_STAGES_BIN="+out, "MAKEFLAGS=")
	output, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !strings.Contains(string(output), "total (wall clock)") || err == nil || !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("test-stages.sh: %v, want exit status 1 (a stage failed) and the table:\n%s", err, output)
	}

	raw, err := os.ReadFile(filepath.Join(out, "test-stages.tsv"))
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		f := strings.Split(line, "\t")
		if len(f) != 5 {
			t.Fatalf("table row %q: want 5 tab-separated fields (stage, lane, seconds, status, cpu-s)", line)
		}
		rows[f[1]+" "+f[0]] = f
	}
	for key, status := range map[string]string{"1 stage-burn": "ok", "1 stage-ok": "ok", "2 stage-fail": "FAIL (2)", "2 stage-ok": "not run"} {
		if got := rows[key]; got == nil || got[3] != status {
			t.Errorf("lane and stage %s: row %q, want status %q", key, got, status)
		}
	}
	if log, _ := os.ReadFile(filepath.Join(out, "stage-stage-fail.log")); !strings.Contains(string(log), "broken") {
		t.Errorf("stage-stage-fail.log = %q, want the stage's output", log)
	}

	// The CPU column: the burn's ~2 s of CPU when each stage can have a
	// cgroup (root, cgroup v1), else "-".
	burn := rows["1 stage-burn"][4]
	if !cgroupsWritable() {
		if burn != "-" {
			t.Errorf("burn's CPU = %q without writable cgroups, want -", burn)
		}
		return
	}
	if s, err := strconv.Atoi(burn); err != nil || s < 1 {
		t.Errorf("burn's CPU = %q s, want at least 1 (its loop takes ~2 s of CPU)", burn)
	}
	if ok, _ := strconv.Atoi(rows["1 stage-ok"][4]); ok >= 1 {
		t.Errorf("an echo's CPU = %d s, want 0", ok)
	}
	if !strings.Contains(string(output), "% of the machine") {
		t.Errorf("no CPU summary line in:\n%s", output)
	}
	if left, _ := filepath.Glob("/sys/fs/cgroup/cpuacct/csi-thin-test-*/*-stage-*"); len(left) > 0 {
		t.Errorf("stage cgroups left behind: %v", left)
	}
}

// cgroupsWritable: test-stages.sh can account CPU here (cgroup v1's
// cpuacct hierarchy, writable: root).
func cgroupsWritable() bool {
	probe, err := os.MkdirTemp("/sys/fs/cgroup/cpuacct", "csi-thin-probe-")
	if err != nil {
		return false
	}
	os.Remove(probe)
	return true
}
