package node

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/csi-thin/csi-thin/internal/testenv"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/backend/fake"
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

	s := New(fake.New("n1", 1<<30), Options{})
	if err := s.checkDeviceSingleWriter("v", dev, first); err != nil {
		t.Fatalf("the target it is published at: %v", err)
	}
	if err := s.checkDeviceSingleWriter("v", dev, second); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("a second target: want FailedPrecondition, got %v", err)
	}
}

// gatedMounter holds each bind mount onto one of targets until every
// target's mount has arrived (or until a second has passed), so that two
// publishes that both got past the single-writer check mount together.
type gatedMounter struct {
	mount.Interface
	targets map[string]bool
	arrived atomic.Int32
	all     chan struct{}
}

func (g *gatedMounter) Mount(source, target, fstype string, opts []string) error {
	if g.targets[target] {
		if int(g.arrived.Add(1)) == len(g.targets) {
			close(g.all)
		}
		select {
		case <-g.all:
		case <-time.After(time.Second):
		}
	}
	return g.Interface.Mount(source, target, fstype, opts)
}

// TestConcurrentSingleWriterPublish publishes one staged single-writer
// volume at two targets at once, through NodePublishVolume on real bind
// mounts: exactly one may succeed, the other is FailedPrecondition and
// leaves nothing mounted.
func TestConcurrentSingleWriterPublish(t *testing.T) {
	testenv.RequireRoot(t)
	ctx := context.Background()
	dir := t.TempDir()
	src, staging := filepath.Join(dir, "src"), filepath.Join(dir, "staging")
	targets := []string{filepath.Join(dir, "pod-a", "mount"), filepath.Join(dir, "pod-b", "mount")}
	for _, d := range []string{src, staging} {
		if err := os.Mkdir(d, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	real := mount.New("")
	if err := real.Mount(src, staging, "", []string{"bind"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { real.Unmount(staging) })
	for _, p := range targets {
		t.Cleanup(func() { mount.CleanupMountPoint(p, real, true) })
	}

	b := fake.New("n1", 1<<30)
	id := backend.VolumeIDFor("pvc-1")
	if _, err := b.CreateVolume(ctx, backend.VolumeRequest{ID: id, Name: "pvc-1", RequiredBytes: backend.MiB}); err != nil {
		t.Fatal(err)
	}
	g := &gatedMounter{Interface: real, targets: map[string]bool{targets[0]: true, targets[1]: true}, all: make(chan struct{})}
	s := New(b, Options{Mounter: NewMounter(g, utilexec.New())})
	vc := &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER},
	}
	errs := make([]error, len(targets))
	var wg sync.WaitGroup
	for i, target := range targets {
		wg.Go(func() {
			_, errs[i] = s.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
				VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: vc,
			})
		})
	}
	wg.Wait()

	ok, refused := 0, 0
	for i, err := range errs {
		switch status.Code(err) {
		case codes.OK:
			ok++
		case codes.FailedPrecondition:
			refused++
			if mounted, _ := s.mounter.IsMountPoint(targets[i]); mounted {
				t.Errorf("refused publish left %s mounted", targets[i])
			}
		default:
			t.Errorf("publish at %s: %v", targets[i], err)
		}
	}
	if ok != 1 || refused != 1 {
		t.Fatalf("%d publishes succeeded and %d were refused (%v), want 1 and 1", ok, refused, errs)
	}
}
