package command

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A step (an in-process storage operation) meets faults as a command does:
// counted and matched by its command line among the commands, failed,
// hung or crashed before or after it ran.
func TestFaultRunnerSteps(t *testing.T) {
	cases := []struct {
		name      string
		fault     Fault
		wantErr   string
		wantCrash bool
		wantRan   bool // the step's operation ran
	}{
		{name: "no fault", fault: Fault{Kind: FaultFail, Nth: 3}, wantRan: true},
		{name: "fail by number", fault: Fault{Kind: FaultFail, Nth: 2, Stderr: "ERROR: boom"},
			wantErr: "btrfs qgroup limit 1 /p: exit status 1 (injected): ERROR: boom"},
		{name: "fail by match", fault: Fault{Kind: FaultFail, Nth: 1, Match: "btrfs qgroup limit"}, wantErr: "(injected)"},
		{name: "garbage runs it", fault: Fault{Kind: FaultGarbage, Nth: 2}, wantRan: true},
		{name: "crash before", fault: Fault{Kind: FaultCrashBefore, Nth: 2}, wantErr: "crashed before", wantCrash: true},
		{name: "crash after", fault: Fault{Kind: FaultCrashAfter, Nth: 2}, wantErr: "crashed after", wantCrash: true, wantRan: true},
		{name: "hang until the deadline", fault: Fault{Kind: FaultHang, Nth: 2}, wantErr: "deadline exceeded"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			crashed, ran := false, false
			r := &FaultRunner{Next: &Host{Timeout: 200 * time.Millisecond}, Faults: []Fault{tc.fault}, Crash: func() { crashed = true }}
			ctx := context.Background()
			if _, err := r.Run(ctx, "true"); err != nil {
				t.Skipf("no true(1): %v", err)
			}
			err := Step(ctx, r, func() error { ran = true; return nil }, "btrfs", "qgroup", "limit", "1", "/p")
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want it to contain %q", err, tc.wantErr)
			}
			if ran != tc.wantRan || crashed != tc.wantCrash {
				t.Errorf("ran %v, crashed %v; want %v, %v", ran, crashed, tc.wantRan, tc.wantCrash)
			}
			if got := r.Lines(); len(got) != 2 || got[1] != "btrfs qgroup limit 1 /p" {
				t.Errorf("recorded %q, want the step as its command line", got)
			}
		})
	}
}

// Outside a fault injector a step just runs; its failure carries the
// errno (for errors.Is) and names the operation.
func TestStepErrorKeepsErrno(t *testing.T) {
	ran := 0
	if err := Step(context.Background(), &Host{}, func() error { ran++; return nil }, "btrfs", "qgroup", "create", "1/5", "/p"); err != nil || ran != 1 {
		t.Fatalf("step: %v, ran %d times", err, ran)
	}
	err := Step(context.Background(), &Host{}, func() error { return syscall.EDQUOT }, "btrfs", "qgroup", "create", "1/5", "/p")
	if !errors.Is(err, syscall.EDQUOT) || !strings.HasPrefix(err.Error(), "btrfs qgroup create 1/5 /p: ") || StderrOf(err) == "" {
		t.Fatalf("step error %v: want EDQUOT, named, with a stderr", err)
	}
}

// A Fake answers a step as scripted for its command line, without running it.
func TestFakeAnswersSteps(t *testing.T) {
	f := &Fake{}
	f.On("btrfs qgroup", "", 1, "ERROR: File exists")
	ran := false
	err := Step(context.Background(), f, func() error { ran = true; return nil }, "btrfs", "qgroup", "create", "1/5", "/p")
	if ran || StderrOf(err) != "ERROR: File exists" {
		t.Fatalf("ran %v, err %v: want the scripted failure and no run", ran, err)
	}
	if got := f.Lines(); len(got) != 1 || got[0] != "btrfs qgroup create 1/5 /p" {
		t.Errorf("fake saw %q", got)
	}
}
