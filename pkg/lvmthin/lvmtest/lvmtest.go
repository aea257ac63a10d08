// Package lvmtest holds what the LVM thin integration tests (test/lvm,
// test/reliability/lvm) share: the LVM configuration for a machine
// without udev, and LVM command lines built the way the driver builds
// them.
package lvmtest

import (
	"os"

	"github.com/csi-thin/csi-thin/pkg/lvmthin"
)

// udevOff makes LVM manage device nodes itself: without udev running (the
// test VM, containers) it would wait for udev events that never come.
const udevOff = "devices{obtain_device_list_from_udev=0} activation{udev_sync=0 udev_rules=0 verify_udev_operations=0 monitoring=0}"

// Config is the --config for every LVM command of a test and of the
// backends it makes (lvmthin.Config.LVMConfig): udev off where udev is
// not running, none where it is.
func Config() string {
	if _, err := os.Stat("/run/udev/control"); err == nil {
		return ""
	}
	return udevOff
}

// Args is an LVM command line (args[0] the LVM command, e.g. "lvs") with
// Config placed where the driver places it.
func Args(args ...string) []string { return lvmthin.ConfigArgs(Config(), args) }
