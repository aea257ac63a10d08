// Package tenant acts as a tenant's pod in the integration tests: an
// unprivileged uid without capabilities or supplementary groups, the way
// kubelet runs a non-root container over a published volume.
package tenant

import (
	"os/exec"
	"strconv"
	"strings"
)

// UID is the user (and group) a tenant's pod runs as.
const UID = 1000

// Run runs argv as UID (an argument list, no shell) and returns its
// combined output, trimmed; the error is the command's failure.
func Run(argv ...string) (string, error) {
	id := strconv.Itoa(UID)
	args := append([]string{"--reuid=" + id, "--regid=" + id, "--clear-groups", "--"}, argv...)
	out, err := exec.Command("setpriv", args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}
