package backend

import (
	"fmt"
	"strconv"
	"strings"

	mount "k8s.io/mount-utils"
)

// MountInfoPath is the mount table the backends read to refuse deleting a
// volume that is mounted: this process's own. In local mode the process
// stages and publishes the volumes itself; in cluster mode the node agent
// runs in the node plugin's container, which sees kubelet's pod mounts
// through its bidirectional /var/lib/kubelet mount. Tests point it at a
// fixture.
var MountInfoPath = "/proc/self/mountinfo"

// Mount is one line of the mount table, with the octal escapes of its
// paths (\040 for a space, ...) decoded.
type Mount struct {
	Major, Minor int
	// Root is the path inside the filesystem that is mounted: "/" for a
	// whole filesystem, the subvolume or directory for a bind mount.
	Root       string
	MountPoint string
	FsType     string
}

// ReadMounts reads the mount table at MountInfoPath.
func ReadMounts() ([]Mount, error) {
	mis, err := mount.ParseMountInfo(MountInfoPath)
	if err != nil {
		return nil, fmt.Errorf("read mount table %s: %w", MountInfoPath, err)
	}
	out := make([]Mount, 0, len(mis))
	for _, mi := range mis {
		out = append(out, Mount{Major: mi.Major, Minor: mi.Minor, Root: unescapeMountPath(mi.Root),
			MountPoint: unescapeMountPath(mi.MountPoint), FsType: mi.FsType})
	}
	return out, nil
}

// unescapeMountPath decodes the \ooo escapes the kernel writes for space,
// tab, newline and backslash in mountinfo paths.
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
