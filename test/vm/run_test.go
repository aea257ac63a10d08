package vm

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBootRetries runs run.sh three times: with a boot timeout no kernel
// meets, the VM is killed and booted again, three boots in all, and the run
// fails with the harness's own status (98) without the program having run;
// with the default timeout the program runs and its status is the run's.
// The program reports the VM's CPUs: one by default, of QEMU's baseline
// model (no AVX), and as many as --cpus asks.
func TestBootRetries(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	prog := filepath.Join(t.TempDir(), "prog")
	if err := os.WriteFile(prog, []byte("#!/bin/sh\necho vm-program-ran cpus=$(nproc) avx=$(grep -c -w avx /proc/cpuinfo)\nexit 7\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name        string
		bootTimeout string   // "": run.sh's default
		args        []string // more of run.sh's options
		wantStatus  int
		wantKilled  int
		wantRan     string // the program's line; "": it must not run
	}{
		{"kernel never in time", "1", nil, 98, 3, ""},
		{"kernel in time", "", nil, 7, 0, "vm-program-ran cpus=1 avx=0"},
		{"two cpus asked", "", []string{"--cpus", "2"}, 7, 0, "vm-program-ran cpus=2 avx=0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"run.sh", "--timeout", "300", "--disk", "64M", "--mem", "512"}, tc.args...)
			cmd := exec.Command("bash", append(args, prog)...)
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
			// The program's line, from its first word: the console may
			// print the firmware's last words on the same line.
			ran := ""
			for _, line := range strings.Split(string(out), "\n") {
				if i := strings.Index(line, "vm-program-ran"); i >= 0 {
					ran = strings.TrimSpace(line[i:])
				}
			}
			if status != tc.wantStatus || killed != tc.wantKilled || ran != tc.wantRan {
				t.Errorf("status %d, %d boots killed, program said %q; want %d, %d, %q\n%s",
					status, killed, ran, tc.wantStatus, tc.wantKilled, tc.wantRan, out)
			}
		})
	}
}
