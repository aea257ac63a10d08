package nodeagent

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/events"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/trim"
)

func TestTrimEvents(t *testing.T) {
	e := newEnv(t, &thinv1.ThinVolume{ObjectMeta: metav1.ObjectMeta{Name: "v-1"}}, &thinv1.ThinNode{ObjectMeta: metav1.ObjectMeta{Name: "n1"}})
	rec := &regardingRecorder{FakeRecorder: e.rec}
	report := TrimEvents(e.c, rec, "n1")
	for _, tc := range []struct {
		name   string
		r      trim.Result
		want   string // "" = no event
		object string // what the event is about: ThinVolume/NAME or ThinNode/NAME
	}{
		{"volume", trim.Result{Target: trim.Target{VolumeID: "v-1", Path: "/stage"}, Bytes: 64 << 20, Duration: time.Second},
			"Normal Trimmed discarded 67108864 bytes (64.0 MiB) of free space to the pool (FITRIM of /stage, 1s)", "ThinVolume/v-1"},
		{"pool on the ThinNode", trim.Result{Target: trim.Target{Path: "/pool"}, Bytes: 1 << 20},
			"Normal Trimmed discarded 1048576 bytes (1.0 MiB)", "ThinNode/n1"},
		{"failure", trim.Result{Target: trim.Target{VolumeID: "v-1", Path: "/stage"}, Err: errors.New("EIO")},
			"Warning TrimFailed trim of /stage: EIO", "ThinVolume/v-1"},
		{"nothing discarded", trim.Result{Target: trim.Target{VolumeID: "v-1", Path: "/stage"}}, "", ""},
		{"skipped", trim.Result{Target: trim.Target{VolumeID: "v-1", Path: "/stage"}, Skipped: true}, "", ""},
		{"volume gone", trim.Result{Target: trim.Target{VolumeID: "v-gone", Path: "/stage"}, Bytes: 1}, "", ""},
	} {
		report(e.ctx, tc.r)
		select {
		case got := <-e.rec.Events:
			if tc.want == "" || !strings.HasPrefix(got, tc.want) {
				t.Errorf("%s: event %q, want %q", tc.name, got, tc.want)
			}
			if rec.last != tc.object {
				t.Errorf("%s: event about %s, want %s", tc.name, rec.last, tc.object)
			}
		default:
			if tc.want != "" {
				t.Errorf("%s: no event, want %q", tc.name, tc.want)
			}
		}
	}
}

// regardingRecorder notes what each event is about.
type regardingRecorder struct {
	*events.FakeRecorder
	last string
}

func (r *regardingRecorder) Eventf(regarding, related runtime.Object, eventtype, reason, action, note string, args ...any) {
	switch o := regarding.(type) {
	case *thinv1.ThinVolume:
		r.last = "ThinVolume/" + o.Name
	case *thinv1.ThinNode:
		r.last = "ThinNode/" + o.Name
	default:
		r.last = fmt.Sprintf("%T", regarding)
	}
	r.FakeRecorder.Eventf(regarding, related, eventtype, reason, action, note, args...)
}
