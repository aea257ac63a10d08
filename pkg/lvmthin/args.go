package lvmthin

import (
	"strconv"
	"strings"
)

// Argument-list builders for every LVM command the backend runs. They are
// pure so that unit tests can assert the exact argv; lvm.run adds the
// --config option after the command name.

func reportArgs(cmd string, fields []string, targets []string) []string {
	args := []string{cmd, "--reportformat", "json", "--units", "b", "--nosuffix",
		"-o", strings.Join(fields, ",")}
	return append(args, targets...)
}

func lvsArgs(targets ...string) []string { return reportArgs("lvs", lvFields, targets) }

func vgsArgs(vg string) []string { return reportArgs("vgs", vgFields, []string{vg}) }

func pvsArgs(device string) []string { return reportArgs("pvs", pvFields, []string{device}) }

func bytesArg(n int64) string { return strconv.FormatInt(n, 10) + "b" }

func addTagArgs(tags []string) []string {
	var args []string
	for _, t := range tags {
		args = append(args, "--addtag", t)
	}
	return args
}

// createThinArgs makes a new thin volume of size bytes in vg/pool.
func createThinArgs(vg, pool, name string, size int64, tags []string) []string {
	args := []string{"lvcreate", "--type", "thin", "--virtualsize", bytesArg(size),
		"--thinpool", pool, "--name", name}
	args = append(args, addTagArgs(tags)...)
	return append(args, vg)
}

// createSnapshotArgs makes a read-only thin snapshot of vg/origin. No size
// is given: with a size LVM would make an old-style COW snapshot instead
// of a thin one. Activation is skipped (-ky): a snapshot is only read when
// restored or cloned, and that makes a new LV.
func createSnapshotArgs(vg, origin, name string, tags []string) []string {
	args := []string{"lvcreate", "--snapshot", "--name", name,
		"--permission", "r", "--setactivationskip", "y"}
	args = append(args, addTagArgs(tags)...)
	return append(args, lvPath(vg, origin))
}

// createWritableSnapshotArgs makes a clone or a restore: a writeable thin
// snapshot of vg/source that activates like any volume (-kn).
func createWritableSnapshotArgs(vg, source, name string, tags []string) []string {
	args := []string{"lvcreate", "--snapshot", "--name", name,
		"--permission", "rw", "--setactivationskip", "n", "--activate", "n"}
	args = append(args, addTagArgs(tags)...)
	return append(args, lvPath(vg, source))
}

func extendArgs(vg, lv string, size int64) []string {
	return []string{"lvextend", "--size", bytesArg(size), lvPath(vg, lv)}
}

func removeArgs(vg, lv string) []string {
	return []string{"lvremove", "--yes", lvPath(vg, lv)}
}

// activateArgs activates an LV even when it carries the skip flag.
func activateArgs(vg, lv string) []string {
	return []string{"lvchange", "--activate", "y", "--ignoreactivationskip", lvPath(vg, lv)}
}

func deactivateArgs(vg, lv string) []string {
	return []string{"lvchange", "--activate", "n", lvPath(vg, lv)}
}

func pvcreateArgs(device string) []string { return []string{"pvcreate", device} }

func vgcreateArgs(vg string, devices []string, tags []string) []string {
	args := append([]string{"vgcreate"}, addTagArgs(tags)...)
	return append(append(args, vg), devices...)
}

// createPoolArgs makes the thin pool. --zero y (unless Config.SkipZeroing):
// a new chunk is zeroed before a first write that covers only part of it
// (see docs/lvmthin.md, Zeroing). --discards passdown: a discard frees the
// pool chunk and is passed to the disk below.
func createPoolArgs(vg, pool string, dataBytes, metadataBytes, chunkBytes int64, zero bool, tags []string) []string {
	z := "n"
	if zero {
		z = "y"
	}
	args := []string{"lvcreate", "--type", "thin-pool", "--size", bytesArg(dataBytes),
		"--poolmetadatasize", bytesArg(metadataBytes), "--chunksize", bytesArg(chunkBytes),
		"--zero", z, "--discards", "passdown", "--name", pool}
	args = append(args, addTagArgs(tags)...)
	return append(args, vg)
}

// errorWhenFullArgs makes a full pool fail writes at once instead of
// queueing them (for up to no_space_timeout, 60 s by default, forever with
// 0): a hung write under a kubelet is worse than an I/O error.
func errorWhenFullArgs(vg, pool string) []string {
	return []string{"lvchange", "--errorwhenfull", "y", lvPath(vg, pool)}
}

func vgremoveArgs(vg string) []string { return []string{"vgremove", "--yes", "--force", vg} }

func pvremoveArgs(device string) []string { return []string{"pvremove", "--yes", device} }
