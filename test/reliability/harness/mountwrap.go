package harness

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/csi-thin/csi-thin/pkg/command"
)

// The Node service mounts through k8s.io/mount-utils, which runs mount(8)
// and umount(8) itself rather than through command.Runner, and one of its
// bind mounts is two mount(8) calls (bind, then remount with the options).
// Its FormatAndMount and ResizeFs likewise run blkid, fsck, mkfs.<type>,
// resize2fs and xfs_growfs themselves. To crash between any two of these,
// a child started with MountFaults gets a directory first on its PATH in
// which each of them is this test binary: MaybeServe recognises the name
// it was called by and stands in for the tool. Unarmed, it execs the real
// tool; armed, it counts the call in a file (each call is a new process)
// and at the faulted step SIGKILLs the driver before or after running the
// real tool. Neither the driver nor mount-utils is changed.
const (
	envMountDir  = "CSI_THIN_RELIABILITY_MOUNT_DIR"  // the stand-in's state: faults, calls, bin/
	envRealTool  = "CSI_THIN_RELIABILITY_REAL_TOOL_" // + the tool's name, upper case, "." as "_"
	envDriverPID = "CSI_THIN_RELIABILITY_DRIVER_PID" // set by the driver child on itself
)

// standInTools are the tools the stand-in replaces: every program
// mount-utils runs on the Node calls' path. One missing on the host (no
// xfsprogs, say) is left out; a test that faults it sees its fault never
// fire.
var standInTools = []string{"mount", "umount", "blkid", "fsck", "mkfs.ext4", "mkfs.xfs", "resize2fs", "xfs_growfs"}

func realToolEnv(tool string) string {
	return envRealTool + strings.ToUpper(strings.ReplaceAll(tool, ".", "_"))
}

// setupMountTool prepares the stand-ins in dir and returns the
// environment a child needs to run them in place of the real tools.
func setupMountTool(dir string) ([]string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("test binary: %w", err)
	}
	bin := filepath.Join(dir, "bin")
	if err := os.MkdirAll(bin, 0o700); err != nil {
		return nil, err
	}
	// State of an earlier child must not arm this one: its startup
	// probes (mount-utils runs umount once to learn its behaviour) must
	// reach the real tool uncounted.
	for _, f := range []string{"faults", "calls"} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	env := []string{envMountDir + "=" + dir, "PATH=" + bin + string(os.PathListSeparator) + os.Getenv("PATH")}
	for _, tool := range standInTools {
		real, err := exec.LookPath(tool)
		if err != nil {
			continue
		}
		link := filepath.Join(bin, tool)
		if err := os.Remove(link); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		if err := os.Symlink(exe, link); err != nil {
			return nil, err
		}
		env = append(env, realToolEnv(tool)+"="+real)
	}
	return env, nil
}

// armMountTool runs in the driver child when a mutating call arrives: the
// stand-ins count from the next call on.
func armMountTool(faults []command.Fault) error {
	dir := os.Getenv(envMountDir)
	if err := os.WriteFile(filepath.Join(dir, "calls"), nil, 0o600); err != nil {
		return fmt.Errorf("reset mount call count: %w", err)
	}
	tmp := filepath.Join(dir, "faults.tmp")
	if err := os.WriteFile(tmp, []byte(command.FormatFaults(faults)), 0o600); err != nil {
		return fmt.Errorf("arm mount faults: %w", err)
	}
	return os.Rename(tmp, filepath.Join(dir, "faults"))
}

// MountCalls returns the command lines the tool stand-ins
// of the child started in dir saw since the last call armed them.
func MountCalls(dir string) []string {
	b, _ := os.ReadFile(filepath.Join(dir, "mount-tool", "calls"))
	return lines(b)
}

func lines(b []byte) []string {
	s := strings.TrimSuffix(string(b), "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

func maybeBeMountTool() {
	dir := os.Getenv(envMountDir)
	tool := filepath.Base(os.Args[0])
	if dir == "" || !slices.Contains(standInTools, tool) {
		return
	}
	os.Exit(runMountTool(dir, tool, os.Args[1:]))
}

// mountFailure is mount(8)'s exit status for "mount failure".
const mountFailure = 32

func runMountTool(dir, tool string, args []string) int {
	real := os.Getenv(realToolEnv(tool))
	fault, hit, err := countMountCall(dir, strings.Join(append([]string{tool}, args...), " "))
	if err != nil || real == "" {
		fmt.Fprintf(os.Stderr, "%s stand-in: real tool %q: %v\n", tool, real, err)
		return mountFailure
	}
	if !hit {
		err := syscall.Exec(real, append([]string{real}, args...), os.Environ())
		fmt.Fprintf(os.Stderr, "%s stand-in: exec %s: %v\n", tool, real, err)
		return mountFailure
	}
	switch fault.Kind {
	case command.FaultCrashBefore:
		killDriver()
		return mountFailure
	case command.FaultCrashAfter:
		cmd := exec.Command(real, args...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		err := cmd.Run()
		killDriver()
		if err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				return ee.ExitCode()
			}
			return mountFailure
		}
		return 0
	}
	fmt.Fprintf(os.Stderr, "%s stand-in: fault kind %q is not supported for mount tools\n", tool, fault.Kind)
	return mountFailure
}

// countMountCall appends line to the calls since arming, under a lock,
// and returns the fault it triggers. Unarmed (no faults file), nothing is
// counted.
func countMountCall(dir, line string) (command.Fault, bool, error) {
	spec, err := os.ReadFile(filepath.Join(dir, "faults"))
	if errors.Is(err, os.ErrNotExist) {
		return command.Fault{}, false, nil
	}
	if err != nil {
		return command.Fault{}, false, err
	}
	faults, err := command.ParseFaults(string(spec))
	if err != nil {
		return command.Fault{}, false, err
	}
	f, err := os.OpenFile(filepath.Join(dir, "calls"), os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		return command.Fault{}, false, err
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return command.Fault{}, false, fmt.Errorf("lock call count: %w", err)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return command.Fault{}, false, err
	}
	if _, err := f.WriteString(line + "\n"); err != nil {
		return command.Fault{}, false, err
	}
	fault, hit := command.Triggered(faults, append(lines(b), line))
	return fault, hit, nil
}

// killDriver delivers the crash to the driver child that ran this tool.
func killDriver() {
	pid, err := strconv.Atoi(os.Getenv(envDriverPID))
	if err != nil {
		pid = os.Getppid()
	}
	syscall.Kill(pid, syscall.SIGKILL)
}
