package nodeagent

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/k8s/snapshotexport"
)

// TestRestoreReportsProgress: a restore from an export that takes longer
// than the progress interval shows phase Receiving with the bytes read so
// far while it runs, and ends Ready with status.transfer Received, every
// byte of the total read, and a completion time; the progress written
// meanwhile does not make the verdict's status update conflict. Events
// say it started, how far it got, and that it ended.
func TestRestoreReportsProgress(t *testing.T) {
	tv := newVolume(vol1, "n1", backend.GiB)
	tv.Spec.Source = &thinv1.VolumeSource{Kind: thinv1.VolumeSourceExport, ID: vol1 + "/" + snap1,
		Export: &thinv1.SnapshotExport{SecretNamespace: "backup", SecretName: "s3"}}
	e := newEnv(t, tv)
	e.vr.ProgressInterval, e.vr.EventInterval = 10*time.Millisecond, 10*time.Millisecond
	var midway *thinv1.TransferStatus
	e.vr.RestoreExport = func(ctx context.Context, req backend.VolumeRequest, _ *thinv1.VolumeSource, p *snapshotexport.Progress) (*backend.Volume, error) {
		p.SetTotal(3000)
		for i := range 3 {
			p.Add(1000)
			deadline := time.Now().Add(5 * time.Second)
			for i == 0 && midway == nil && time.Now().Before(deadline) {
				// Started, and one progress Event.
				if st := e.volume(vol1).Status.Transfer; st != nil && st.BytesDone > 0 && len(e.rec.Events) >= 2 {
					midway = st
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		return e.pool.CreateVolume(ctx, req)
	}
	e.reconcileVolume(vol1)
	if midway == nil || midway.Phase != thinv1.TransferReceiving || midway.BytesDone != 1000 || midway.BytesTotal != 3000 {
		t.Errorf("progress during the restore %+v; want Receiving, 1000 of 3000 bytes", midway)
	}
	got := e.volume(vol1)
	st := got.Status.Transfer
	if got.Status.Phase != thinv1.PhaseReady || st == nil || st.Phase != thinv1.TransferReceived || st.BytesDone != 3000 || st.BytesTotal != 3000 || st.CompletionTime == nil {
		t.Errorf("after the restore: phase %s, transfer %+v; want Ready, Received 3000 of 3000 bytes with a completion time", got.Status.Phase, st)
	}
	for _, ev := range []string{
		"Normal RestoreStarted restoring export " + vol1 + "/" + snap1,
		"Normal Restoring read 1000 of 3000 bytes of export " + vol1 + "/" + snap1,
		"Normal Restored restored export " + vol1 + "/" + snap1 + ": 3000 of 3000 bytes read in ",
		"Normal Created",
	} {
		e.event(ev)
	}
}

// failingGets fails the Gets it is told to, then reads through.
type failingGets struct {
	client.Reader
	fail int
}

func (f *failingGets) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if f.fail > 0 {
		f.fail--
		return errors.New("connection refused")
	}
	return f.Reader.Get(ctx, key, obj, opts...)
}

// TestRestoreRetriedWhenItsObjectCannotBeReRead: a restore that wrote
// progress and then cannot re-read its ThinVolume writes no verdict (not
// Failed: the reconcile returns the error and is retried); the retry
// finds the volume restored and is Ready, its transfer the first
// attempt's bytes, not the retry's 0 of 0.
func TestRestoreRetriedWhenItsObjectCannotBeReRead(t *testing.T) {
	tv := newVolume(vol1, "n1", backend.GiB)
	tv.Spec.Source = &thinv1.VolumeSource{Kind: thinv1.VolumeSourceExport, ID: vol1 + "/" + snap1,
		Export: &thinv1.SnapshotExport{SecretNamespace: "backup", SecretName: "s3"}}
	e := newEnv(t, tv)
	e.vr.ProgressInterval = time.Millisecond
	reader := &failingGets{Reader: e.c}
	e.vr.APIReader = reader
	restores := 0
	e.vr.RestoreExport = func(ctx context.Context, req backend.VolumeRequest, _ *thinv1.VolumeSource, p *snapshotexport.Progress) (*backend.Volume, error) {
		restores++
		if v, err := e.pool.GetVolume(ctx, req.ID); err == nil {
			return v, nil // as Restorer.Restore: made already
		}
		p.SetTotal(3000)
		p.Add(3000)
		for e.volume(vol1).Status.Transfer == nil {
			time.Sleep(time.Millisecond) // the progress written
		}
		reader.fail = 1 // the re-read after it
		return e.pool.CreateVolume(ctx, req)
	}
	if _, err := e.vr.Reconcile(e.ctx, ctrl.Request{NamespacedName: types.NamespacedName{Name: vol1}}); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("reconcile with the re-read failing: %v, want its error", err)
	}
	if got := e.volume(vol1); got.Status.Phase == thinv1.PhaseFailed {
		t.Fatalf("a failed re-read failed the volume: %s", got.Status.Message)
	}
	e.reconcileVolume(vol1)
	got := e.volume(vol1)
	st := got.Status.Transfer
	if restores != 2 || got.Status.Phase != thinv1.PhaseReady || st == nil || st.Phase != thinv1.TransferReceived || st.BytesDone != 3000 || st.BytesTotal != 3000 {
		t.Errorf("after %d restores: phase %s, transfer %+v; want 2, Ready, Received 3000 of 3000", restores, got.Status.Phase, st)
	}
}
