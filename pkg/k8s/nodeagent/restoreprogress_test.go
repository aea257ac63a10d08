package nodeagent

import (
	"context"
	"testing"
	"time"

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
