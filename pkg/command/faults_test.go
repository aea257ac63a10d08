package command

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

func scriptedFake() *Fake {
	f := &Fake{}
	f.On("btrfs subvolume create", "", 0, "")
	f.On("btrfs inspect-internal rootid", "257\n", 0, "")
	f.On("btrfs qgroup limit", "", 0, "")
	return f
}

func TestFaultRunnerKinds(t *testing.T) {
	cases := []struct {
		name       string
		fault      Fault
		wantErr    string
		wantStdout string
		wantCrash  bool
		wantRan    int // commands that reached the wrapped runner
	}{
		{name: "fail the 2nd command", fault: Fault{Kind: FaultFail, Nth: 2, ExitCode: 3, Stderr: "ERROR: boom"},
			wantErr: "btrfs inspect-internal rootid /p: exit status 3 (injected): ERROR: boom", wantRan: 2},
		{name: "fail matching prefix only", fault: Fault{Kind: FaultFail, Nth: 1, Match: "btrfs qgroup"},
			wantErr: "btrfs qgroup limit 1 /p", wantStdout: "257\n", wantRan: 2},
		{name: "garble output", fault: Fault{Kind: FaultGarbage, Nth: 2, Stdout: "???"},
			wantStdout: "???", wantRan: 3},
		{name: "crash before", fault: Fault{Kind: FaultCrashBefore, Nth: 3},
			wantErr: "crashed before", wantStdout: "257\n", wantCrash: true, wantRan: 2},
		{name: "crash after", fault: Fault{Kind: FaultCrashAfter, Nth: 3},
			wantErr: "crashed after", wantStdout: "257\n", wantCrash: true, wantRan: 3},
		{name: "nth beyond the operation", fault: Fault{Kind: FaultCrashAfter, Nth: 4}, wantStdout: "257\n", wantRan: 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fake := scriptedFake()
			crashed := false
			r := &FaultRunner{Next: fake, Faults: []Fault{tc.fault}, Crash: func() { crashed = true }}
			var errs []error
			var stdout string
			for _, args := range [][]string{{"subvolume", "create", "/p"}, {"inspect-internal", "rootid", "/p"}, {"qgroup", "limit", "1", "/p"}} {
				res, err := r.Run(context.Background(), "btrfs", args...)
				if err != nil {
					errs = append(errs, err)
				}
				if args[0] == "inspect-internal" {
					stdout = string(res.Stdout)
				}
			}
			err := errors.Join(errs...)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want it to contain %q", err, tc.wantErr)
			}
			if stdout != tc.wantStdout {
				t.Errorf("rootid stdout %q, want %q", stdout, tc.wantStdout)
			}
			if crashed != tc.wantCrash {
				t.Errorf("crashed = %v, want %v", crashed, tc.wantCrash)
			}
			if got := len(fake.Lines()); got != tc.wantRan {
				t.Errorf("wrapped runner ran %d commands, want %d: %v", got, tc.wantRan, fake.Lines())
			}
			if got := len(r.Lines()); got != 3 {
				t.Errorf("recorded %d lines, want 3", got)
			}
		})
	}
}

// A hang is a real sleeping process that the Host runner must kill at its
// timeout: the fault proves the deadline path, not a simulated one.
func TestFaultHangIsKilledByHostTimeout(t *testing.T) {
	if _, err := (&Host{}).Run(context.Background(), "true"); err != nil {
		t.Skipf("no true(1): %v", err)
	}
	r := &FaultRunner{Next: &Host{Timeout: 300 * time.Millisecond}, Faults: []Fault{{Kind: FaultHang, Nth: 1}}}
	start := time.Now()
	_, err := r.Run(context.Background(), "btrfs", "subvolume", "list", "/")
	elapsed := time.Since(start)
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hang: error %v, want a deadline error", err)
	}
	if !strings.HasPrefix(err.Error(), "btrfs subvolume list /:") {
		t.Errorf("hang error %q does not name the hung command", err)
	}
	if elapsed > 3*time.Second {
		t.Errorf("hang returned after %s, want about the 300ms timeout", elapsed)
	}
}

func TestDisarm(t *testing.T) {
	r := &FaultRunner{Next: scriptedFake(), Faults: []Fault{{Kind: FaultFail, Nth: 1}}}
	r.Disarm()
	if _, err := r.Run(context.Background(), "btrfs", "subvolume", "create", "/p"); err != nil {
		t.Fatalf("disarmed runner injected: %v", err)
	}
	if r.Hits() != 0 {
		t.Errorf("hits = %d after disarm", r.Hits())
	}
}

func TestArmRestartsCounts(t *testing.T) {
	r := &FaultRunner{Next: scriptedFake()}
	run := func() error {
		_, err := r.Run(context.Background(), "btrfs", "subvolume", "create", "/p")
		return err
	}
	for i := 0; i < 3; i++ {
		if err := run(); err != nil {
			t.Fatalf("unarmed runner failed: %v", err)
		}
	}
	r.Arm(Fault{Kind: FaultFail, Nth: 2})
	if err := run(); err != nil {
		t.Fatalf("1st command after Arm failed: %v", err)
	}
	if err := run(); err == nil {
		t.Fatalf("2nd command after Arm did not fail")
	}
	if r.Hits() != 1 {
		t.Errorf("hits = %d, want 1", r.Hits())
	}
}

func TestParseFaultsRoundTrip(t *testing.T) {
	good := []string{"crash-after@3", "fail@1:btrfs qgroup limit", "hang@2;garbage@1:btrfs inspect-internal", "crash-before@10"}
	for _, s := range good {
		fs, err := ParseFaults(s)
		if err != nil {
			t.Fatalf("ParseFaults(%q): %v", s, err)
		}
		if got := FormatFaults(fs); got != s {
			t.Errorf("round trip %q → %q", s, got)
		}
	}
	for _, s := range []string{"crash@1", "fail", "fail@0", "fail@-1", "fail@x", "@1"} {
		if _, err := ParseFaults(s); err == nil {
			t.Errorf("ParseFaults(%q) accepted a bad spec", s)
		}
	}
	if fs, err := ParseFaults(""); err != nil || len(fs) != 0 {
		t.Errorf("empty spec: %v %v", fs, err)
	}
}

// Triggered must count exactly as FaultRunner does: a tool stand-in that
// keeps its count in a file fires on the same command as the runner.
func TestTriggeredAgreesWithFaultRunner(t *testing.T) {
	lines := [][]string{
		{"mount", "-o", "bind", "/a", "/b"},
		{"mount", "-o", "bind,remount,ro", "/a", "/b"},
		{"umount", "/b"},
		{"mount", "-o", "bind", "/a", "/c"},
	}
	cases := []struct {
		name   string
		faults []Fault
		want   int // index in lines of the command that fires, -1 for none
	}{
		{"2nd of all", []Fault{{Kind: FaultCrashAfter, Nth: 2}}, 1},
		{"1st umount", []Fault{{Kind: FaultCrashBefore, Nth: 1, Match: "umount"}}, 2},
		{"3rd mount: umount is not a mount", []Fault{{Kind: FaultCrashBefore, Nth: 3, Match: "mount"}}, 3},
		{"the earlier of two faults", []Fault{{Kind: FaultCrashAfter, Nth: 3}, {Kind: FaultCrashBefore, Nth: 1, Match: "mount -o bind,remount"}}, 1},
		{"beyond the commands", []Fault{{Kind: FaultCrashAfter, Nth: 5}}, -1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fake := &Fake{}
			fake.On("mount", "", 0, "")
			fake.On("umount", "", 0, "")
			fired, hits := -1, 0
			r := &FaultRunner{Next: fake, Faults: tc.faults, Crash: func() {}}
			var seen []string
			for i, argv := range lines {
				r.Run(context.Background(), argv[0], argv[1:]...)
				seen = append(seen, strings.Join(argv, " "))
				_, hit := Triggered(tc.faults, seen)
				if runnerHit := r.Hits() > hits; hit != runnerHit {
					t.Fatalf("command %d: Triggered says %v, FaultRunner %v", i, hit, runnerHit)
				}
				hits = r.Hits()
				if hit && fired == -1 {
					fired = i
				}
			}
			if fired != tc.want {
				t.Errorf("fired at command %d, want %d", fired, tc.want)
			}
		})
	}
}

// echoStreamer streams stdin to stdout, counting the commands it ran.
type echoStreamer struct {
	Fake
	streamed []string
}

func (e *echoStreamer) Stream(_ context.Context, stdin io.Reader, stdout io.Writer, name string, args ...string) (Result, error) {
	e.streamed = append(e.streamed, strings.Join(append([]string{name}, args...), " "))
	_, err := io.Copy(stdout, stdin)
	return Result{}, err
}

func TestFaultRunnerStreams(t *testing.T) {
	cases := []struct {
		name      string
		fault     Fault
		wantErr   string
		wantOut   string
		wantCrash bool
		wantRan   int
	}{
		{name: "no fault", fault: Fault{Kind: FaultFail, Nth: 2}, wantOut: "data", wantRan: 1},
		{name: "fail", fault: Fault{Kind: FaultFail, Nth: 1, Match: "btrfs receive"}, wantErr: "exit status 1 (injected)"},
		{name: "crash before", fault: Fault{Kind: FaultCrashBefore, Nth: 1}, wantErr: "crashed before", wantCrash: true},
		{name: "crash after", fault: Fault{Kind: FaultCrashAfter, Nth: 1}, wantErr: "crashed after", wantOut: "data", wantCrash: true, wantRan: 1},
		{name: "another command's fault", fault: Fault{Kind: FaultCrashBefore, Nth: 1, Match: "btrfs send"}, wantOut: "data", wantRan: 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			next := &echoStreamer{}
			crashed := false
			r := &FaultRunner{Next: next, Faults: []Fault{tc.fault}, Crash: func() { crashed = true }}
			var out strings.Builder
			_, err := r.Stream(context.Background(), strings.NewReader("data"), &out, "btrfs", "receive", "-e", "/p")
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want it to contain %q", err, tc.wantErr)
			}
			if out.String() != tc.wantOut {
				t.Errorf("streamed %q, want %q", out.String(), tc.wantOut)
			}
			if crashed != tc.wantCrash {
				t.Errorf("crashed = %v, want %v", crashed, tc.wantCrash)
			}
			if len(next.streamed) != tc.wantRan {
				t.Errorf("wrapped streamer ran %v, want %d commands", next.streamed, tc.wantRan)
			}
			if got := r.Lines(); len(got) != 1 || got[0] != "btrfs receive -e /p" {
				t.Errorf("recorded %q, want the stream's command line", got)
			}
		})
	}
	if _, err := (&FaultRunner{Next: &Fake{}}).Stream(context.Background(), nil, nil, "btrfs", "receive"); err == nil || !strings.Contains(err.Error(), "cannot stream") {
		t.Errorf("a FaultRunner over a runner that cannot stream: %v, want its refusal", err)
	}
}
