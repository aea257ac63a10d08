package lvmthin

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/command"
)

// fixtureError rebuilds the command.Error a captured failing command gave.
func fixtureError(t *testing.T, name string) error {
	t.Helper()
	code, err := strconv.Atoi(strings.TrimSpace(string(readFixture(t, name+".exit"))))
	if err != nil {
		t.Fatal(err)
	}
	stderr := strings.TrimSpace(string(readFixture(t, name+".stderr")))
	return &command.Error{Cmd: []string{"lvm", name}, ExitCode: code, Stderr: stderr, Err: fmt.Errorf("exit status %d", code)}
}

func TestClassifyCapturedErrors(t *testing.T) {
	for _, tc := range []struct {
		fixture string
		want    error
	}{
		{"lvs-missing", backend.ErrNotFound},
		{"lvchange-missing", backend.ErrNotFound},
		{"lvextend-missing", backend.ErrNotFound},
		{"snapshot-noorigin", backend.ErrNotFound},
		{"pvs-notpv", backend.ErrNotFound},
		{"vgs-missing", backend.ErrUnavailable},
		{"lvcreate-nopool", backend.ErrUnavailable},
		{"lvcreate-pool-nospace", backend.ErrNoSpace},
		{"lvcreate-full", backend.ErrNoSpace},
		{"lvcreate-exists", backend.ErrExists},
		{"lvremove-inuse", backend.ErrBusy},
		{"lvremove-poolfailed", backend.ErrUnavailable},
	} {
		t.Run(tc.fixture, func(t *testing.T) {
			raw := fixtureError(t, tc.fixture)
			got := classify(raw)
			if !errors.Is(got, tc.want) {
				t.Fatalf("classify(%q) = %v, want %v", command.StderrOf(raw), got, tc.want)
			}
			// The command and stderr stay in the message.
			if !strings.Contains(got.Error(), command.StderrOf(raw)) || !strings.Contains(got.Error(), "lvm "+tc.fixture) {
				t.Errorf("message %q lost the command or stderr", got)
			}
		})
	}
}

func TestClassifyLeavesOthersAlone(t *testing.T) {
	timeout := &command.Error{Cmd: []string{"lvm", "lvs"}, ExitCode: -1, Err: errors.New("context deadline exceeded")}
	if got := classify(timeout); got != timeout {
		t.Errorf("a timeout was reclassified: %v", got)
	}
	odd := &command.Error{Cmd: []string{"lvm", "lvs"}, ExitCode: 5, Stderr: "something new", Err: errors.New("exit status 5")}
	if got := classify(odd); got != odd {
		t.Errorf("an unknown failure was reclassified: %v", got)
	}
}

func TestLockContentionIsRetried(t *testing.T) {
	f := &command.Fake{}
	f.On("lvm lvchange", "", 5, "  Can't get lock for vgcap")
	l := newLVM(f, "")
	l.retryDelay = 0
	_, err := l.run(t.Context(), activateArgs("vgcap", "v-1")...)
	if err == nil {
		t.Fatal("no error")
	}
	if n := len(f.Lines()); n != 4 {
		t.Errorf("%d attempts, want 1 + 3 retries", n)
	}
}
