package btrfs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/csi-thin/csi-thin/pkg/command"
)

// cli is the one place that runs the btrfs tool. Each method builds an
// argument list (paths always after "--" is not accepted by every btrfs
// subcommand, so paths are made absolute and validated by the caller
// instead) and returns typed results.
type cli struct {
	run command.Runner
}

func (c cli) btrfs(ctx context.Context, args ...string) ([]byte, error) {
	res, err := c.run.Run(ctx, "btrfs", args...)
	if err != nil {
		return nil, err
	}
	return res.Stdout, nil
}

// step makes a storage operation in-process (ioctl.go) as the btrfs
// command args... would: the runner sees it under that name.
func (c cli) step(ctx context.Context, do func() error, args ...string) error {
	return command.Step(ctx, c.run, do, "btrfs", args...)
}

func (c cli) createSubvolume(ctx context.Context, path string) error {
	return c.step(ctx, func() error { return ioctlCreateSubvolume(path) }, "subvolume", "create", path)
}

// snapshot makes a writable snapshot; read-only snapshots are made
// writable-then-flagged so that they can be renamed out of staging first.
func (c cli) snapshot(ctx context.Context, src, dst string) error {
	return c.step(ctx, func() error { return ioctlSnapshot(src, dst) }, "subvolume", "snapshot", src, dst)
}

func (c cli) deleteSubvolume(ctx context.Context, path string) error {
	_, err := c.btrfs(ctx, "subvolume", "delete", path)
	return err
}

// deleteSubvolumeByID deletes the subvolume with tree id subvolID of the
// filesystem mounted at mountPath. By id, not by path: the path of a
// subvolume nested in a volume runs through directories a tenant controls
// (a symlink swapped in would lead elsewhere); the id is the kernel's.
func (c cli) deleteSubvolumeByID(ctx context.Context, subvolID uint64, mountPath string) error {
	_, err := c.btrfs(ctx, "subvolume", "delete", "-i", strconv.FormatUint(subvolID, 10), mountPath)
	return err
}

// subvolumeEntry is one row of `btrfs subvolume list -p`.
type subvolumeEntry struct {
	ID, Parent uint64
	Path       string
}

// listSubvolumes lists every subvolume of the filesystem with its parent.
func (c cli) listSubvolumes(ctx context.Context, mountPath string) ([]subvolumeEntry, error) {
	out, err := c.btrfs(ctx, "subvolume", "list", "-p", mountPath)
	if err != nil {
		return nil, err
	}
	return parseSubvolumeList(out)
}

// parseSubvolumeList reads rows "ID 258 gen 9 parent 257 top level 257
// path a/b"; the path is the rest of the line and may hold spaces.
func parseSubvolumeList(out []byte) ([]subvolumeEntry, error) {
	var list []subvolumeEntry
	for _, line := range strings.Split(string(out), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 11 || f[0] != "ID" || f[2] != "gen" || f[4] != "parent" || f[6] != "top" || f[9] != "path" {
			return nil, fmt.Errorf("unexpected subvolume list row %q", line)
		}
		id, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("subvolume list row %q: id: %w", line, err)
		}
		parent, err := strconv.ParseUint(f[5], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("subvolume list row %q: parent: %w", line, err)
		}
		_, path, _ := strings.Cut(line, " path ")
		list = append(list, subvolumeEntry{ID: id, Parent: parent, Path: path})
	}
	return list, nil
}

// makeReadOnly flags the subvolume at path read-only. (Only that way: the
// tool's way back to writable also handles a received subvolume's UUID.)
func (c cli) makeReadOnly(ctx context.Context, path string) error {
	return c.step(ctx, func() error { return ioctlMakeReadOnly(path) }, "property", "set", "-ts", path, "ro", "true")
}

func (c cli) isReadOnly(ctx context.Context, path string) (bool, error) {
	out, err := c.btrfs(ctx, "property", "get", "-ts", path, "ro")
	if err != nil {
		return false, err
	}
	switch strings.TrimSpace(string(out)) {
	case "ro=true":
		return true, nil
	case "ro=false":
		return false, nil
	}
	return false, fmt.Errorf("btrfs property get %s ro: unexpected output %q", path, out)
}

// createQgroup makes qgroup id (e.g. "1/257"); one that exists already is
// fine, so that a retry after a crash goes on.
func (c cli) createQgroup(ctx context.Context, id, mountPath string) error {
	err := c.step(ctx, func() error { return ioctlCreateQgroup(mountPath, id) }, "qgroup", "create", id, mountPath)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

// assignQgroup makes child a member of parent; a relation that exists
// already is fine.
func (c cli) assignQgroup(ctx context.Context, child, parent, mountPath string) error {
	err := c.step(ctx, func() error { return ioctlAssignQgroup(mountPath, child, parent) }, "qgroup", "assign", child, parent, mountPath)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

// limitQgroup sets the referenced-bytes limit of qgroup id; bytes 0
// removes the limit.
func (c cli) limitQgroup(ctx context.Context, id string, bytes int64, mountPath string) error {
	n := "none"
	if bytes > 0 {
		n = strconv.FormatInt(bytes, 10)
	}
	return c.step(ctx, func() error { return ioctlLimitQgroup(mountPath, id, bytes) }, "qgroup", "limit", n, id, mountPath)
}

func (c cli) enableQuota(ctx context.Context, mountPath string) error {
	_, err := c.btrfs(ctx, "quota", "enable", mountPath)
	return err
}

func (c cli) destroyQgroup(ctx context.Context, subvolID uint64, mountPath string) error {
	_, err := c.btrfs(ctx, "qgroup", "destroy", fmt.Sprintf("0/%d", subvolID), mountPath)
	return err
}

// qgroup is one row of `btrfs --format json qgroup show`.
type qgroup struct {
	ID            string
	Referenced    int64
	Exclusive     int64
	MaxReferenced int64 // 0: no limit
	Path          string
}

// qgroupOf reports qgroup want (the volume's level-1 qgroup, or 0/<id> of
// a volume not yet migrated) among those that charge the subvolume at
// path. Text output, because btrfs-progs 6.2 aborts in its JSON printer
// once a qgroup has a limit ("unknown unit base"); the parser is
// fixture-tested.
func (c cli) qgroupOf(ctx context.Context, path, want string) (qgroup, error) {
	out, err := c.btrfs(ctx, "qgroup", "show", "--raw", "-r", "-e", "-F", path)
	if err != nil {
		return qgroup{}, err
	}
	groups, err := parseQgroups(out)
	if err != nil {
		return qgroup{}, fmt.Errorf("btrfs qgroup show %s: %w", path, err)
	}
	for _, g := range groups {
		if g.ID == want {
			return g, nil
		}
	}
	return qgroup{}, fmt.Errorf("btrfs qgroup show %s: qgroup %s missing (quota disabled?)", path, want)
}

// parseQgroups reads `btrfs qgroup show --raw -r -e` text: a header, a
// dashed rule, then rows "id referenced exclusive max_rfer max_excl [path]".
func parseQgroups(out []byte) ([]qgroup, error) {
	var groups []qgroup
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || !strings.Contains(f[0], "/") || strings.HasPrefix(f[0], "-") {
			continue
		}
		g := qgroup{ID: f[0]}
		if len(f) > 5 {
			g.Path = strings.Join(f[5:], " ")
		}
		var err error
		if g.Referenced, err = parseBytes(f[1]); err != nil {
			return nil, fmt.Errorf("qgroup %s referenced %q: %w", f[0], f[1], err)
		}
		if g.Exclusive, err = parseBytes(f[2]); err != nil {
			return nil, fmt.Errorf("qgroup %s exclusive %q: %w", f[0], f[2], err)
		}
		if g.MaxReferenced, err = parseBytes(f[3]); err != nil {
			return nil, fmt.Errorf("qgroup %s max referenced %q: %w", f[0], f[3], err)
		}
		groups = append(groups, g)
	}
	if len(groups) == 0 {
		return nil, fmt.Errorf("no qgroup rows in %q", strings.TrimSpace(string(out)))
	}
	return groups, nil
}

// parseBytes reads btrfs' raw byte counts; "none" means no limit (0). A
// negative count is garbage, not a size.
func parseBytes(s string) (int64, error) {
	if s == "none" || s == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err == nil && n < 0 {
		err = fmt.Errorf("negative byte count %d", n)
	}
	return n, err
}

// spaceUsage is the logical bytes in use by kind of block group.
type spaceUsage struct {
	Data, Metadata, System int64
}

type dfReport struct {
	Groups []struct {
		Type string `json:"bg-type"`
		Used string `json:"used"`
	} `json:"filesystem-df"`
}

// usage reports `btrfs filesystem df`: what is really allocated, as
// opposed to statfs, which also counts reserved chunk space.
func (c cli) usage(ctx context.Context, mountPath string) (spaceUsage, error) {
	out, err := c.btrfs(ctx, "--format", "json", "filesystem", "df", "-b", mountPath)
	if err != nil {
		return spaceUsage{}, err
	}
	return parseUsage(out)
}

func parseUsage(out []byte) (spaceUsage, error) {
	var rep dfReport
	if err := json.Unmarshal(out, &rep); err != nil {
		return spaceUsage{}, fmt.Errorf("parse filesystem df: %w", err)
	}
	var u spaceUsage
	for _, g := range rep.Groups {
		n, err := parseBytes(g.Used)
		if err != nil {
			return spaceUsage{}, fmt.Errorf("filesystem df %s used: %w", g.Type, err)
		}
		switch g.Type {
		case "Data":
			u.Data += n
		case "Metadata":
			u.Metadata += n
		case "System":
			u.System += n
		}
	}
	return u, nil
}
