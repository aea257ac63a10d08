package lvmthin

import "fmt"

// LVAttr is lv_attr, the ten-character summary `lvs` prints, with the
// characters we act on given names (see lvs(8), "lv_attr bits").
type LVAttr struct {
	// Type is bit 1: 't' thin pool, 'V' thin volume, 'T' pool data,
	// 'e' pool metadata or spare, '-' plain linear, ...
	Type byte
	// Permission is bit 2: 'w' writeable, 'r' read-only, 'R' read-only
	// activation of a writeable LV.
	Permission byte
	// State is bit 5: 'a' active, '-' inactive, 's' suspended, ...
	State byte
	// Open is bit 6: the device is open (mounted, or held by a process).
	Open bool
	// TargetType is bit 7: 't' thin, ...
	TargetType byte
	// Health is bit 9: '-' fine; 'p' partial, 'X' unknown; for thin pools
	// 'F' failed, 'D' out of data space, 'M' metadata read-only; for thin
	// volumes 'F' failed (the pool is).
	Health byte
	// SkipActivation is bit 10 'k': plain `lvchange -ay` leaves the LV
	// inactive (the default for thin snapshots); activation needs -K.
	SkipActivation bool
}

// ParseLVAttr parses an lv_attr string.
func ParseLVAttr(s string) (LVAttr, error) {
	if len(s) < 10 {
		return LVAttr{}, fmt.Errorf("lv_attr %q: want 10 characters", s)
	}
	return LVAttr{
		Type:           s[0],
		Permission:     s[1],
		State:          s[4],
		Open:           s[5] == 'o',
		TargetType:     s[6],
		Health:         s[8],
		SkipActivation: s[9] == 'k',
	}, nil
}

// IsThinPool reports a thin pool LV.
func (a LVAttr) IsThinPool() bool { return a.Type == 't' }

// IsThinVolume reports a thin volume or thin snapshot.
func (a LVAttr) IsThinVolume() bool { return a.Type == 'V' }

// Active reports an active (device-mapper table loaded) LV.
func (a LVAttr) Active() bool { return a.State == 'a' }

// Writeable reports whether the LV may be written.
func (a LVAttr) Writeable() bool { return a.Permission == 'w' }

// Problem describes a health bit that makes the LV unusable, or "".
func (a LVAttr) Problem() string {
	switch a.Health {
	case '-', 0:
		return ""
	case 'F':
		return "failed"
	case 'D':
		return "out of data space"
	case 'M':
		return "metadata read-only"
	case 'p':
		return "partial (a physical volume is missing)"
	case 'X':
		return "state unknown"
	case 'E':
		return "dm-integrity errors"
	case 'r':
		return "needs refresh"
	case 'm':
		return "mismatches"
	case 'w':
		return "" // writemostly: a RAID setting, not a fault
	}
	return fmt.Sprintf("health bit %q", a.Health)
}
