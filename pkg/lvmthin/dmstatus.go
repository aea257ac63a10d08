package lvmthin

import (
	"fmt"
	"strconv"
	"strings"
)

// ThinPoolStatus is the kernel's own report of a thin-pool target, the
// line `dmsetup status` prints for it (format: the kernel's
// Documentation/admin-guide/device-mapper/thin-provisioning.rst):
//
//	<start> <len> thin-pool <transaction id> <used>/<total metadata blocks>
//	<used>/<total data blocks> <held root> rw|ro|out_of_data_space
//	[no_]discard_passdown error|queue_if_no_space needs_check|- [<low watermark>]
//
// or "<start> <len> thin-pool Fail" for a pool in Fail mode. It costs a
// tenth of an lvs (one ioctl, no LVM metadata read), which is why a
// create reads the pool's fill levels from it (see stateForChange in cache.go).
//
// The backend, the benchmark and the reliability tests all read it
// through ParseThinPoolStatus.
type ThinPoolStatus struct {
	Transaction int64
	// Metadata blocks are 4 KiB; data blocks are the pool's chunk size.
	UsedMetadataBlocks, TotalMetadataBlocks int64
	UsedDataBlocks, TotalDataBlocks         int64
	// Mode is "rw", "ro" (read-only metadata, or out of metadata space),
	// "out_of_data_space", "Fail" (all I/O fails) or "Error".
	Mode string
	// HeldMetadataRoot: a metadata snapshot is reserved
	// (reserve_metadata_snap; see stream.go).
	HeldMetadataRoot bool
	ErrorIfNoSpace   bool
	NeedsCheck       bool
}

// healthy reports a pool that takes writes and needs no repair: the only
// state in which its fill levels from this report are used. Any other is
// left to an lvs, whose report names the problem as LVM sees it.
func (s ThinPoolStatus) healthy() bool {
	return s.Mode == "rw" && !s.NeedsCheck && s.TotalDataBlocks > 0 && s.TotalMetadataBlocks > 0
}

func (s ThinPoolStatus) dataPercent() float64 {
	return 100 * float64(s.UsedDataBlocks) / float64(s.TotalDataBlocks)
}

func (s ThinPoolStatus) metadataPercent() float64 {
	return 100 * float64(s.UsedMetadataBlocks) / float64(s.TotalMetadataBlocks)
}

// ParseThinPoolStatus parses `dmsetup status <one thin-pool device>`: one
// line, without the "name: " prefix dmsetup adds when listing devices.
func ParseThinPoolStatus(out []byte) (ThinPoolStatus, error) {
	line := strings.TrimSpace(string(out))
	if strings.Contains(line, "\n") {
		return ThinPoolStatus{}, fmt.Errorf("thin-pool status %q: want one target", line)
	}
	f := strings.Fields(line)
	if len(f) < 4 || f[2] != "thin-pool" {
		return ThinPoolStatus{}, fmt.Errorf("thin-pool status %q: not a thin-pool target", line)
	}
	if f[3] == "Fail" || f[3] == "Error" {
		return ThinPoolStatus{Mode: f[3]}, nil
	}
	if len(f) < 11 {
		return ThinPoolStatus{}, fmt.Errorf("thin-pool status %q: want at least 11 fields", line)
	}
	var s ThinPoolStatus
	var err error
	if s.Transaction, err = strconv.ParseInt(f[3], 10, 64); err != nil {
		return ThinPoolStatus{}, fmt.Errorf("thin-pool status %q: transaction: %w", line, err)
	}
	if s.UsedMetadataBlocks, s.TotalMetadataBlocks, err = usedOfTotal(f[4]); err != nil {
		return ThinPoolStatus{}, fmt.Errorf("thin-pool status %q: metadata: %w", line, err)
	}
	if s.UsedDataBlocks, s.TotalDataBlocks, err = usedOfTotal(f[5]); err != nil {
		return ThinPoolStatus{}, fmt.Errorf("thin-pool status %q: data: %w", line, err)
	}
	s.HeldMetadataRoot = f[6] != "-"
	s.Mode = f[7]
	s.ErrorIfNoSpace = f[9] == "error_if_no_space"
	s.NeedsCheck = f[10] == "needs_check"
	return s, nil
}

func usedOfTotal(s string) (used, total int64, err error) {
	u, t, ok := strings.Cut(s, "/")
	if !ok {
		return 0, 0, fmt.Errorf("%q: want used/total", s)
	}
	if used, err = strconv.ParseInt(u, 10, 64); err != nil {
		return 0, 0, err
	}
	if total, err = strconv.ParseInt(t, 10, 64); err != nil {
		return 0, 0, err
	}
	if used < 0 || total < 0 || used > total {
		return 0, 0, fmt.Errorf("%q: used outside 0..total", s)
	}
	return used, total, nil
}

// DMName is the device-mapper name LVM gives an LV (with a layer suffix
// such as "tpool", the thin-pool target under a pool LV): dashes inside
// names are doubled, and the parts are joined with single dashes.
func DMName(vg, lv, layer string) string {
	esc := func(s string) string { return strings.ReplaceAll(s, "-", "--") }
	name := esc(vg) + "-" + esc(lv)
	if layer != "" {
		name += "-" + layer
	}
	return name
}
