package node

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// Mount options reach mount(8) as one comma-joined -o argument, so one
// option with a comma in it would smuggle in others (e.g. "ro,dev=…").
// Only the options below are accepted; anything else is InvalidArgument.
// Each one acts on the volume alone: options whose effect reaches the
// whole node are left out, above all errors=panic (ext4), which turns an
// I/O error of one volume, such as its thin pool running full, into a
// kernel panic of the node; likewise dev/suid, which let a tenant's device
// nodes and setuid files work.
var (
	allowedFlags = map[string]bool{
		"ro": true, "rw": true, "noatime": true, "nodiratime": true, "relatime": true,
		"strictatime": true, "lazytime": true, "nolazytime": true, "nodev": true,
		"nosuid": true, "noexec": true, "sync": true, "dirsync": true,
		"discard": true, "nodiscard": true, "nouuid": true, "nobarrier": true,
		"noauto_da_alloc": true, "inode64": true, "largeio": true, "user_xattr": true,
		"acl": true, "noacl": true,
	}
	allowedKeys = map[string]*regexp.Regexp{
		"commit":    regexp.MustCompile(`^[0-9]{1,5}$`),
		"data":      regexp.MustCompile(`^(ordered|writeback|journal)$`),
		"errors":    regexp.MustCompile(`^(remount-ro|continue)$`),
		"barrier":   regexp.MustCompile(`^[01]$`),
		"allocsize": regexp.MustCompile(`^[0-9]{1,10}[kmgKMG]?$`),
		"logbufs":   regexp.MustCompile(`^[0-9]{1,2}$`),
	}
)

// tenantSafe returns flags with nosuid and nodev added when missing. Every
// filesystem volume is mounted so: a volume belongs to a tenant, whose
// device nodes and setuid files must not work on the node (dev and suid
// are not on the allow-list, so a StorageClass cannot turn them back on).
func tenantSafe(flags []string) []string {
	out := slices.Clone(flags)
	for _, f := range []string{"nosuid", "nodev"} {
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out
}

// checkMountFlags validates StorageClass mountOptions / capability flags.
func checkMountFlags(flags []string) error {
	for _, f := range flags {
		if f == "" || strings.ContainsAny(f, ", \t\n\x00") || strings.HasPrefix(f, "-") {
			return fmt.Errorf("mount option %q: %w", f, backend.ErrInvalid)
		}
		key, value, hasValue := strings.Cut(f, "=")
		if !hasValue {
			if !allowedFlags[f] {
				return fmt.Errorf("mount option %q is not allowed: %w", f, backend.ErrInvalid)
			}
			continue
		}
		re, ok := allowedKeys[key]
		if !ok || !re.MatchString(value) {
			return fmt.Errorf("mount option %q is not allowed: %w", f, backend.ErrInvalid)
		}
	}
	return nil
}

// stageOptions returns the mount options for a filesystem staged from a
// block device. Volumes are thin, so discard is on by default: space a pod
// frees goes back to the pool. "nodiscard" turns it off (then run fstrim).
func stageOptions(fsType string, flags []string) []string {
	opts := []string{}
	discard := true
	for _, f := range flags {
		switch f {
		case "nodiscard":
			discard = false
			continue
		case "discard":
			continue
		}
		opts = append(opts, f)
	}
	if discard {
		opts = append(opts, "discard")
	}
	if fsType == "xfs" && !slices.Contains(opts, "nouuid") {
		// Clones and restores carry their source's XFS UUID; without
		// nouuid the second of them refuses to mount on the same node.
		opts = append(opts, "nouuid")
	}
	return opts
}

// formatOptions: a fresh thin LV reads as zeros already, so mkfs need not
// discard it; lazy init is off so that pool usage figures are honest from
// the first write rather than growing in the background.
func formatOptions(fsType string) []string {
	switch fsType {
	case "ext4", "ext3":
		return []string{"-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0"}
	case "xfs":
		return []string{"-K"}
	}
	return nil
}
