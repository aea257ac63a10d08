package nodeagent

import (
	"errors"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/trim"
)

func TestTrimEvents(t *testing.T) {
	e := newEnv(t, &thinv1.ThinVolume{ObjectMeta: metav1.ObjectMeta{Name: "v-1"}}, &thinv1.ThinNode{ObjectMeta: metav1.ObjectMeta{Name: "n1"}})
	report := TrimEvents(e.c, e.rec, "n1")
	for _, tc := range []struct {
		name string
		r    trim.Result
		want string // "" = no event
	}{
		{"volume", trim.Result{Target: trim.Target{VolumeID: "v-1", Path: "/stage"}, Bytes: 64 << 20, Duration: time.Second},
			"Normal Trimmed discarded 67108864 bytes (64.0 MiB) of free space to the pool (FITRIM of /stage, 1s)"},
		{"pool on the ThinNode", trim.Result{Target: trim.Target{Path: "/pool"}, Bytes: 1 << 20},
			"Normal Trimmed discarded 1048576 bytes (1.0 MiB)"},
		{"failure", trim.Result{Target: trim.Target{VolumeID: "v-1", Path: "/stage"}, Err: errors.New("EIO")},
			"Warning TrimFailed trim of /stage: EIO"},
		{"nothing discarded", trim.Result{Target: trim.Target{VolumeID: "v-1", Path: "/stage"}}, ""},
		{"skipped", trim.Result{Target: trim.Target{VolumeID: "v-1", Path: "/stage"}, Skipped: true}, ""},
		{"volume gone", trim.Result{Target: trim.Target{VolumeID: "v-gone", Path: "/stage"}, Bytes: 1}, ""},
	} {
		report(e.ctx, tc.r)
		select {
		case got := <-e.rec.Events:
			if tc.want == "" || !strings.HasPrefix(got, tc.want) {
				t.Errorf("%s: event %q, want %q", tc.name, got, tc.want)
			}
		default:
			if tc.want != "" {
				t.Errorf("%s: no event, want %q", tc.name, tc.want)
			}
		}
	}
}
