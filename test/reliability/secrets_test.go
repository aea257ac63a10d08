package reliability

import (
	"bytes"
	"context"
	"flag"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/btrfs"
	"github.com/csi-thin/csi-thin/pkg/btrfs/btrfstest"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// captureLogs sends everything klog writes, at the highest verbosity, to
// a buffer until the test ends.
func captureLogs(t *testing.T) *lockedBuffer {
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	buf := &lockedBuffer{}
	for k, v := range map[string]string{"logtostderr": "false", "alsologtostderr": "false", "v": "10", "stderrthreshold": "FATAL"} {
		if err := fs.Set(k, v); err != nil {
			t.Fatal(err)
		}
	}
	klog.SetOutput(buf)
	t.Cleanup(func() {
		klog.Flush()
		fs.Set("logtostderr", "true")
		fs.Set("v", "0")
	})
	return buf
}

// TestNoSecretsInLogs sends a secret in every call that can carry one,
// on a real pool with logging at -v=10 (every storage command is logged),
// in calls that succeed and calls that fail, and searches the log and the
// errors for it. It also checks that a megabyte of hostile ID does not
// turn into a megabyte of log.
func TestNoSecretsInLogs(t *testing.T) {
	const secret = "s3cr3t-T0KEN-must-never-be-logged"
	pool := btrfstest.NewPool(t, backend.GiB, btrfs.Config{})
	c := serve(t, pool)
	logs := captureLogs(t)
	ctx := context.Background()
	secrets := map[string]string{"password": secret, "token": secret, secret: "as-a-key"}
	vc := &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
	dir := t.TempDir()
	staging, target := filepath.Join(dir, "staging"), filepath.Join(dir, "target")
	var errs []error
	call := func(_ any, err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	for _, name := range []string{"with-secrets", "with-secrets"} { // the second is an idempotent replay
		call(c.Controller.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, Secrets: secrets, VolumeCapabilities: []*csi.VolumeCapability{vc},
			CapacityRange: &csi.CapacityRange{RequiredBytes: crashVolumeBytes}}))
	}
	id := backend.VolumeIDFor("with-secrets")
	call(c.Controller.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: id, Secrets: secrets, VolumeCapabilities: []*csi.VolumeCapability{vc}}))
	call(c.Controller.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id, Secrets: secrets, CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * crashVolumeBytes}}))
	call(c.Node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, Secrets: secrets, VolumeCapability: vc}))
	call(c.Node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, Secrets: secrets, VolumeCapability: vc}))
	call(c.Node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: target, Secrets: secrets}))
	call(c.Node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}))
	call(c.Node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}))
	call(c.Controller.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-with-secrets", SourceVolumeId: id, Secrets: secrets}))
	call(c.Controller.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: backend.SnapshotIDFor("snap-with-secrets"), Secrets: secrets}))
	call(c.Controller.ListSnapshots(ctx, &csi.ListSnapshotsRequest{Secrets: secrets}))
	call(c.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: secrets}))
	if len(errs) > 0 {
		t.Fatalf("calls with secrets failed: %v", errs)
	}
	// Failing calls log their error: the secret must not ride along.
	var failures []error
	fail := func(_ any, err error) {
		if err == nil {
			t.Errorf("a call that should fail succeeded")
		}
		failures = append(failures, err)
	}
	fail(c.Controller.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "bad", Secrets: secrets}))
	fail(c.Controller.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "bad", SourceVolumeId: "v-nope", Secrets: secrets}))
	fail(c.Controller.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: "v-nope", Secrets: secrets, CapacityRange: &csi.CapacityRange{RequiredBytes: 1}}))
	fail(c.Node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "v-nope", StagingTargetPath: staging, Secrets: secrets, VolumeCapability: vc}))
	fail(c.Controller.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "bad-params", Parameters: map[string]string{"k": "v"}, Secrets: secrets,
		VolumeCapabilities: []*csi.VolumeCapability{{AccessType: vc.AccessType, AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER}}}}))

	before := len(logs.String())
	huge := strings.Repeat("v", 1<<20)
	call(c.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: huge}))
	fail(c.Controller.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: huge}))
	klog.Flush()
	out := logs.String()
	if grew := len(out) - before; grew > 16<<10 {
		t.Errorf("two calls with a 1 MiB ID wrote %d bytes of log", grew)
	}
	if strings.Contains(out, secret) {
		i := strings.Index(out, secret)
		t.Errorf("secret found in the log: …%s…", out[max(0, i-200):i])
	}
	for _, err := range append(errs, failures...) {
		if err != nil && strings.Contains(err.Error(), secret) {
			t.Errorf("secret found in an error returned to the caller: %.300v", err)
		}
	}
	if !strings.Contains(out, "btrfs") || !strings.Contains(out, id) {
		t.Fatalf("the log did not capture the calls (%d bytes): the test proves nothing", len(out))
	}
	t.Logf("secrets: %d calls with secrets, %d bytes of -v=10 log searched, no secret found", 13+len(failures), len(out))
}
