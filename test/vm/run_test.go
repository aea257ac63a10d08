package vm

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBootRetries runs run.sh twice: with a boot timeout no kernel meets,
// the VM is killed and booted again, three boots in all, and the run fails
// with the harness's own status (98) without the program having run; with
// the default timeout the program runs and its status is the run's.
func TestBootRetries(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	prog := filepath.Join(t.TempDir(), "prog")
	if err := os.WriteFile(prog, []byte("#!/bin/sh\necho vm-program-ran\nexit 7\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name        string
		bootTimeout string // "": run.sh's default
		wantStatus  int
		wantKilled  int
		wantRan     bool
	}{
		{"kernel never in time", "1", 98, 3, false},
		{"kernel in time", "", 7, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command("bash", "run.sh", "--timeout", "300", "--disk", "64M", "--mem", "512", prog)
			cmd.Env = os.Environ()
			if tc.bootTimeout != "" {
				cmd.Env = append(cmd.Env, "CSI_THIN_VM_BOOT_TIMEOUT="+tc.bootTimeout)
			}
			out, err := cmd.CombinedOutput()
			status := 0
			if exitErr, ok := err.(*exec.ExitError); ok {
				status = exitErr.ExitCode()
			} else if err != nil {
				t.Fatalf("run.sh: %v\n%s", err, out)
			}
			killed := strings.Count(string(out), "did not reach its init")
			ran := strings.Contains(string(out), "vm-program-ran")
			if status != tc.wantStatus || killed != tc.wantKilled || ran != tc.wantRan {
				t.Errorf("status %d, %d boots killed, program ran %v; want %d, %d, %v\n%s",
					status, killed, ran, tc.wantStatus, tc.wantKilled, tc.wantRan, out)
			}
		})
	}
}
