package main

import (
	"bufio"
	"context"
	"os"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"

	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/results"
	"github.com/csi-thin/csi-thin/pkg/command"
)

// inEmulatedVM: test/vm/run.sh sets CSI_THIN_VM=1 in its QEMU guest, which
// runs under TCG software emulation.
func inEmulatedVM() bool { return os.Getenv("CSI_THIN_VM") == "1" }

// describeMachine records what a reader needs to judge the numbers.
func describeMachine(ctx context.Context, backend, workDir string) results.Machine {
	m := results.Machine{Cores: runtime.NumCPU(), CPU: cpuModel(), MemoryBytes: memTotal(), Tools: map[string]string{}}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	m.Virtualization = virtualization(ctx)
	m.Storage = storageOf(workDir)
	run := &command.Host{}
	tools := map[string][]string{"go-runtime": nil}
	if backend == "btrfs" {
		tools["btrfs-progs"] = []string{"btrfs", "--version"}
	} else {
		tools["lvm"] = []string{"lvm", "version"}
	}
	for name, argv := range tools {
		if argv == nil {
			m.Tools[name] = runtime.Version()
			continue
		}
		if res, err := run.Run(ctx, argv[0], argv[1:]...); err == nil {
			m.Tools[name] = firstLine(string(res.Stdout))
		}
	}
	return m
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return strings.Join(strings.Fields(line), " ")
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func memTotal() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// virtualization says what the benchmark's "hardware" is.
func virtualization(ctx context.Context) string {
	if inEmulatedVM() {
		return "QEMU guest under TCG software emulation (test/vm)"
	}
	run := &command.Host{}
	var parts []string
	// Exit status 1 with "none" means no such layer.
	if res, err := run.Run(ctx, "systemd-detect-virt", "--vm"); err == nil {
		parts = append(parts, "VM: "+strings.TrimSpace(string(res.Stdout)))
	}
	if res, err := run.Run(ctx, "systemd-detect-virt", "--container"); err == nil {
		parts = append(parts, "container: "+strings.TrimSpace(string(res.Stdout)))
	}
	if len(parts) > 0 {
		return strings.Join(parts, ", ")
	}
	vendor, _ := os.ReadFile("/sys/class/dmi/id/sys_vendor")
	product, _ := os.ReadFile("/sys/class/dmi/id/product_name")
	if s := strings.TrimSpace(string(vendor) + " " + string(product)); s != "" {
		return s
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil && strings.Contains(string(b), " hypervisor") {
		return "a virtual machine (CPU flag hypervisor)"
	}
	return "unknown"
}

// storageOf names the filesystem and device under dir (where a loop-file
// pool's file lives).
func storageOf(dir string) string {
	mps, err := mount.New("").List()
	if err != nil {
		return ""
	}
	best := mount.MountPoint{}
	for _, mp := range mps {
		if (dir == mp.Path || strings.HasPrefix(dir, strings.TrimSuffix(mp.Path, "/")+"/")) && len(mp.Path) >= len(best.Path) {
			best = mp
		}
	}
	if best.Path == "" {
		return ""
	}
	return best.Type + " on " + best.Device + " (mounted at " + best.Path + ")"
}
