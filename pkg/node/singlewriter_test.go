package node

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	mount "k8s.io/mount-utils"

	"github.com/csi-thin/csi-thin/internal/testenv"
)

// TestDeviceSingleWriter publishes a real loop device node onto one file
// and checks that a second target is refused while the first is accepted.
func TestDeviceSingleWriter(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "losetup")
	dir := t.TempDir()
	img := filepath.Join(dir, "img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).Output()
	if err != nil {
		testenv.Missing(t, "a loop device: "+err.Error())
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	first, second := filepath.Join(dir, "first"), filepath.Join(dir, "second")
	for _, p := range []string{first, second} {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	m := mount.New("")
	if err := m.Mount(dev, first, "", []string{"bind"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Unmount(first) })

	if err := checkDeviceSingleWriter("v", dev, first); err != nil {
		t.Fatalf("the target it is published at: %v", err)
	}
	if err := checkDeviceSingleWriter("v", dev, second); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("a second target: want FailedPrecondition, got %v", err)
	}
}
