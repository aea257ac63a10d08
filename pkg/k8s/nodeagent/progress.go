package nodeagent

import (
	"context"
	"encoding/json"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
)

// progressReporter reports the bytes of a transfer into a ThinVolume (a
// cross-node copy or a restore from an export) while it runs: into
// status.transfer every interval while they change, and as an Event
// every eventInterval.
type progressReporter struct {
	interval      time.Duration // 0: DefaultProgressInterval
	eventInterval time.Duration // 0: no progress Events
	bytes         func() (done, total int64)
	write         func(ctx context.Context, done, total int64) error
	event         func(done, total int64)
	// final writes the bytes once more at stop, for a caller that writes
	// no verdict with them (a transfer faster than interval reports its
	// bytes too).
	final bool
}

// run reports until stop is closed or ctx ends, and says whether it
// wrote any bytes.
func (p progressReporter) run(ctx context.Context, stop <-chan struct{}) bool {
	interval := p.interval
	if interval <= 0 {
		interval = DefaultProgressInterval
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var written int64 = -1
	lastEvent := time.Now()
	for {
		last := false
		select {
		case <-stop:
			if !p.final {
				return written >= 0
			}
			last = true
		case <-ctx.Done():
			return written >= 0
		case <-tick.C:
		}
		done, total := p.bytes()
		if done != written {
			if err := p.write(ctx, done, total); err != nil {
				klog.FromContext(ctx).V(2).Info("write a transfer's progress", "err", err.Error())
			} else {
				written = done
			}
		}
		if last {
			return written >= 0
		}
		if p.eventInterval > 0 && p.event != nil && time.Since(lastEvent) >= p.eventInterval {
			lastEvent = time.Now()
			p.event(done, total)
		}
	}
}

// patchTransfer merges fields into ThinVolume id's status.transfer: a
// copy's or a restore's progress, written without reading the object.
func patchTransfer(ctx context.Context, c client.Client, id string, fields map[string]any) error {
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"transfer": fields}})
	if err != nil {
		return err
	}
	return c.Status().Patch(ctx, &thinv1.ThinVolume{ObjectMeta: metav1.ObjectMeta{Name: id}}, client.RawPatch(types.MergePatchType, patch))
}
