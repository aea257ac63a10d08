package lvmthin

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/command"
)

// lvm is the one place that runs LVM. Callers pass argument lists built by
// the pure functions in args.go; lvm adds --config, runs `lvm <command>`,
// retries LVM's own lock contention and turns failures into backend
// sentinel errors while keeping the command and stderr in the message.
// It also runs the one device-mapper read the backend needs (dmsetup
// status of the pool), so that every command of the pool goes through it.
type lvm struct {
	runner command.Runner
	// config is passed as --config to every command (e.g. the udev
	// settings a node without udev needs); empty uses lvm.conf alone.
	config string
	// lockRetries bounds retries when LVM reports a lock it could not
	// take (it normally waits for its file locks, but a lock held by a
	// hung process or a lvmlockd setup returns instead).
	lockRetries int
	retryDelay  time.Duration
}

func newLVM(runner command.Runner, config string) *lvm {
	return &lvm{runner: runner, config: config, lockRetries: 3, retryDelay: 500 * time.Millisecond}
}

// run runs `lvm <args[0]> [--config C] <args[1:]...>` and returns stdout.
func (l *lvm) run(ctx context.Context, args ...string) ([]byte, error) {
	argv := l.argv(args)
	for attempt := 0; ; attempt++ {
		res, err := l.runner.Run(ctx, "lvm", argv...)
		if err == nil {
			return res.Stdout, nil
		}
		if attempt < l.lockRetries && lockContention.MatchString(command.StderrOf(err)) && ctx.Err() == nil {
			select {
			case <-time.After(l.retryDelay * time.Duration(attempt+1)):
				continue
			case <-ctx.Done():
			}
		}
		return nil, classify(err)
	}
}

func (l *lvm) argv(args []string) []string { return ConfigArgs(l.config, args) }

// ConfigArgs places --config config right after the LVM command (args[0],
// e.g. "lvcreate"), where every LVM command takes it; an empty config
// adds nothing.
func ConfigArgs(config string, args []string) []string {
	if config == "" || len(args) == 0 {
		return args
	}
	out := make([]string, 0, len(args)+2)
	out = append(out, args[0], "--config", config)
	return append(out, args[1:]...)
}

// lvs reports the named LVs ("vg/lv") or all LVs of a VG ("vg").
func (l *lvm) lvs(ctx context.Context, targets ...string) ([]LV, error) {
	out, err := l.run(ctx, lvsArgs(targets...)...)
	if err != nil {
		return nil, err
	}
	return ParseLVs(out)
}

// thinPoolStatus reads the thin-pool target of vg/pool from the kernel
// (`dmsetup status`), without LVM: see ThinPoolStatus.
func (l *lvm) thinPoolStatus(ctx context.Context, vg, pool string) (ThinPoolStatus, error) {
	res, err := l.runner.Run(ctx, "dmsetup", "status", DMName(vg, pool, "tpool"))
	if err != nil {
		return ThinPoolStatus{}, err
	}
	return ParseThinPoolStatus(res.Stdout)
}

// vg reports one VG, or an error wrapping backend.ErrNotFound.
func (l *lvm) vg(ctx context.Context, name string) (*VG, error) {
	out, err := l.run(ctx, vgsArgs(name)...)
	if err != nil {
		if vgNotFound.MatchString(command.StderrOf(err)) {
			return nil, fmt.Errorf("volume group %s: %w", name, backend.ErrNotFound)
		}
		return nil, err
	}
	vgs, err := ParseVGs(out)
	if err != nil {
		return nil, err
	}
	for i := range vgs {
		if vgs[i].Name == name {
			return &vgs[i], nil
		}
	}
	return nil, fmt.Errorf("volume group %s: %w", name, backend.ErrNotFound)
}

// pv reports one device as a PV, or an error wrapping backend.ErrNotFound
// when the device is not a PV.
func (l *lvm) pv(ctx context.Context, device string) (*PV, error) {
	out, err := l.run(ctx, pvsArgs(device)...)
	if err != nil {
		return nil, err
	}
	pvs, err := ParsePVs(out)
	if err != nil {
		return nil, err
	}
	if len(pvs) == 0 {
		return nil, fmt.Errorf("physical volume %s: %w", device, backend.ErrNotFound)
	}
	return &pvs[0], nil
}

// Error classification. LVM exits 5 for nearly every failure, so the
// message decides; these patterns are from lvm2 2.03 (see testdata/).
var (
	lvNotFound = regexp.MustCompile(`Failed to find logical volume|Snapshot origin LV .* not found|Logical volume .* not found`)
	pvNotFound = regexp.MustCompile(`Failed to find physical volume|No physical volume found|Cannot use .*: device not found`)
	vgNotFound = regexp.MustCompile(`Volume group "[^"]*" not found|Pool .* not found in Volume group`)
	noSpace    = regexp.MustCompile(`(?i)insufficient free space|insufficient suitable|free space in thin pool .* reached threshold|out of data space|not enough free`)
	exists     = regexp.MustCompile(`already exists in volume group`)
	inUse      = regexp.MustCompile(`(?i)in use|is open|device or resource busy`)
	// A pool LVM cannot change: read-only metadata, a pool needing
	// repair, or one in dm-thin's Fail mode, where LVM's transaction ID
	// and the kernel's disagree and queued messages cannot be sent.
	poolDown = regexp.MustCompile(`(?i)read[- ]only|needs repair|failed mode|Check of pool .* failed|transaction_id is [0-9]+, while expected|with queued messages`)
	invalid  = regexp.MustCompile(`Invalid argument for|Invalid logical volume name|Error during parsing of command line`)

	lockContention = regexp.MustCompile(`(?i)can't get lock|could not get lock|resource temporarily unavailable`)
)

// classify wraps an LVM failure with the sentinel that says what it means.
// The original error (command line, exit code, stderr) stays in the chain.
func classify(err error) error {
	if err == nil {
		return nil
	}
	var ee *command.Error
	if !errors.As(err, &ee) || ee.ExitCode <= 0 {
		// Did not start, or killed by the deadline: nothing to classify.
		return err
	}
	msg := ee.Stderr
	var sentinel error
	switch {
	case invalid.MatchString(msg):
		sentinel = backend.ErrInvalid
	case lvNotFound.MatchString(msg), pvNotFound.MatchString(msg):
		sentinel = backend.ErrNotFound
	case vgNotFound.MatchString(msg):
		// A missing VG or pool is not "no such volume": the pool itself
		// is gone and nothing can be served.
		sentinel = backend.ErrUnavailable
	case noSpace.MatchString(msg):
		sentinel = backend.ErrNoSpace
	case exists.MatchString(msg):
		sentinel = backend.ErrExists
	case poolDown.MatchString(msg):
		sentinel = backend.ErrUnavailable
	case inUse.MatchString(msg):
		sentinel = backend.ErrBusy
	default:
		return err
	}
	return fmt.Errorf("%w: %w", err, sentinel)
}

// lvPath is "vg/lv", the form LVM commands take.
func lvPath(vg, lv string) string { return vg + "/" + lv }

// devicePath is the device node LVM maintains for an active LV.
func devicePath(vg, lv string) string { return "/dev/" + vg + "/" + lv }

// mapperPath is the device-mapper node of an active LV: dashes in VG and
// LV names are doubled, and the two are joined with a single dash.
func mapperPath(vg, lv string) string { return "/dev/mapper/" + DMName(vg, lv, "") }
