package freeze

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/csi-thin/csi-thin/internal/testenv"
	"github.com/csi-thin/csi-thin/pkg/backend"
)

// ext4Mount makes a small ext4 filesystem on a loop device and mounts it;
// it returns the mount point and the device.
func ext4Mount(t *testing.T) (mnt, dev string) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommands(t, "mkfs.ext4", "mount", "umount", "losetup")
	dir := t.TempDir()
	img := filepath.Join(dir, "fs.img")
	mnt = filepath.Join(dir, "mnt")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).Output()
	if err != nil {
		testenv.Missing(t, "a loop device: "+err.Error())
	}
	dev = strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d: %v: %s", err, out)
		}
	})
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", dev).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	if err := os.Mkdir(mnt, 0o750); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", dev, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v: %s", err, out)
	}
	t.Cleanup(func() {
		_, _ = thaw(mnt) // never leave a frozen filesystem behind a failed test
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount: %v: %s", err, out)
		}
	})
	return mnt, dev
}

// startWriter writes and fsyncs a file on the filesystem; the channel
// yields the result once the write is through.
func startWriter(path string) <-chan error {
	done := make(chan error, 1)
	go func() {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err == nil {
			_, err = f.Write([]byte("data\n"))
			if err == nil {
				err = f.Sync()
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		done <- err
	}()
	return done
}

// settleWindow is how long a writer on an unfrozen filesystem (a small
// write and its fsync) may take before it counts as held by a freeze:
// long enough for a machine busy with other suites' I/O (300 ms was not),
// well inside DefaultTimeout, so a frozen one is still held.
const settleWindow = 2 * time.Second

// held reports, for each writer, whether it is still blocked
// settleWindow after the call (one deadline for all of them).
func held(t *testing.T, writers ...<-chan error) []bool {
	t.Helper()
	deadline := time.Now().Add(settleWindow)
	out := make([]bool, len(writers))
	for i, w := range writers {
		out[i] = blocked(t, w, time.Until(deadline))
	}
	return out
}

// blocked reports whether the writer is still held after d.
func blocked(t *testing.T, done <-chan error, d time.Duration) bool {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("writer: %v", err)
		}
		return false
	case <-time.After(d):
		return true
	}
}

func wantResumes(t *testing.T, what string, done <-chan error) {
	t.Helper()
	if blocked(t, done, 10*time.Second) {
		t.Fatalf("%s: the writer is still blocked 10 s later: the filesystem stayed frozen", what)
	}
}

func TestFrozenHoldsWritersForTheSnapshotOnly(t *testing.T) {
	mnt, _ := ext4Mount(t)
	var windows []time.Duration
	f, err := New(t.TempDir(), 0, func(d time.Duration) { windows = append(windows, d) })
	if err != nil {
		t.Fatal(err)
	}
	var writer <-chan error
	err = f.Frozen(context.Background(), "s-1", []string{mnt}, func(context.Context) error {
		if _, err := os.Stat(f.markerPath("s-1")); err != nil {
			t.Errorf("no marker while frozen: %v", err)
		}
		writer = startWriter(filepath.Join(mnt, "f"))
		if !blocked(t, writer, 300*time.Millisecond) {
			t.Error("a writer got through while the filesystem was frozen")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	wantResumes(t, "after the snapshot", writer)
	if _, err := os.Stat(f.markerPath("s-1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("marker left after the thaw: %v", err)
	}
	if len(windows) != 1 || windows[0] < 300*time.Millisecond {
		t.Errorf("frozen windows observed: %v, want one of at least 300ms", windows)
	}
}

func TestThawedOnSnapshotError(t *testing.T) {
	mnt, _ := ext4Mount(t)
	f, err := New(t.TempDir(), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("lvcreate failed")
	if err := f.Frozen(context.Background(), "s-1", []string{mnt}, func(context.Context) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("Frozen: %v, want the snapshot's error", err)
	}
	wantResumes(t, "after a failed snapshot", startWriter(filepath.Join(mnt, "f")))
}

func TestThawedAtTimeout(t *testing.T) {
	mnt, _ := ext4Mount(t)
	f, err := New(t.TempDir(), 200*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = f.Frozen(context.Background(), "s-1", []string{mnt}, func(context.Context) error {
		// The snapshot hangs; writers must not wait for it.
		wantResumes(t, "past the freeze timeout", startWriter(filepath.Join(mnt, "f")))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The timeout runs from the first freeze, not from the last: freezing the
// next filesystem writes its dirty data first, and the ones frozen before
// it wait through that. Freezes that outlast the timeout leave a snapshot
// that is not held (it runs thawed), and every filesystem is thawed.
func TestTimeoutCountsFromTheFirstFreeze(t *testing.T) {
	mntA, _ := ext4Mount(t)
	mntB, _ := ext4Mount(t)
	f, err := New(t.TempDir(), 100*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	realFreeze := f.freeze
	f.freeze = func(path string) error {
		if path == mntB {
			time.Sleep(500 * time.Millisecond) // a long sync of B's dirty data
		}
		return realFreeze(path)
	}
	ran := false
	held, err := f.FrozenHeld(context.Background(), "s-1", []string{mntA, mntB}, func(context.Context) error {
		ran = true
		return nil
	})
	if err != nil || !ran {
		t.Fatalf("FrozenHeld: %v, snapshot ran: %v", err, ran)
	}
	if held {
		t.Error("held = true: the timeout started only after the last freeze")
	}
	wantResumes(t, "member A", startWriter(filepath.Join(mntA, "f")))
	wantResumes(t, "member B", startWriter(filepath.Join(mntB, "f")))
}

func TestFreezeFailureFreezesNothing(t *testing.T) {
	mnt, _ := ext4Mount(t)
	f, err := New(t.TempDir(), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	ran := false
	err = f.Frozen(context.Background(), "s-1", []string{mnt, filepath.Join(mnt, "no-such-dir")}, func(context.Context) error {
		ran = true
		return nil
	})
	if err == nil || ran {
		t.Fatalf("Frozen with an unfreezable path: err %v, snapshot ran %v; want an error and no snapshot", err, ran)
	}
	wantResumes(t, "after a failed freeze", startWriter(filepath.Join(mnt, "f")))
}

// A second snapshot of a filesystem that is frozen already is told to
// retry, and does not thaw the first one's freeze.
func TestFrozenTwiceIsBusy(t *testing.T) {
	mnt, _ := ext4Mount(t)
	f, err := New(t.TempDir(), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	var held <-chan error
	err = f.Frozen(context.Background(), "s-1", []string{mnt}, func(context.Context) error {
		err := f.Frozen(context.Background(), "s-2", []string{mnt}, func(context.Context) error {
			t.Error("the second snapshot ran")
			return nil
		})
		if !errors.Is(err, backend.ErrBusy) {
			t.Errorf("second freeze: %v, want ErrBusy", err)
		}
		held = startWriter(filepath.Join(mnt, "f"))
		if !blocked(t, held, 300*time.Millisecond) {
			t.Error("the refused second freeze thawed the first")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The held writer finishes too, before the cleanup unmounts (an open
	// file would make the unmount busy).
	wantResumes(t, "the writer held by the first freeze", held)
	wantResumes(t, "after the first snapshot", startWriter(filepath.Join(mnt, "g")))
}

// TestRecoverAfterKillWhileFrozen kills a process inside the frozen window
// (SIGKILL: no deferred thaw runs), shows the filesystem still frozen, and
// that Recover in the next process thaws it and the writer resumes.
func TestRecoverAfterKillWhileFrozen(t *testing.T) {
	if mnt := os.Getenv("FREEZE_TEST_CHILD_MOUNT"); mnt != "" {
		f, err := New(os.Getenv("FREEZE_TEST_CHILD_STATE"), time.Hour, nil)
		if err != nil {
			t.Fatal(err)
		}
		_ = f.Frozen(context.Background(), "s-killed", []string{mnt}, func(context.Context) error {
			os.Stdout.WriteString("FROZEN\n")
			select {} // killed here
		})
		return
	}
	mnt, _ := ext4Mount(t)
	state := t.TempDir()
	child := exec.Command(os.Args[0], "-test.run=^TestRecoverAfterKillWhileFrozen$", "-test.v")
	child.Env = append(os.Environ(), "FREEZE_TEST_CHILD_MOUNT="+mnt, "FREEZE_TEST_CHILD_STATE="+state)
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	for sc.Scan() && !strings.Contains(sc.Text(), "FROZEN") {
	}
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()

	writer := startWriter(filepath.Join(mnt, "f"))
	if !blocked(t, writer, 500*time.Millisecond) {
		t.Fatal("the filesystem was not frozen when the process was killed: the test proves nothing")
	}
	f, err := New(state, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	thawed, err := f.Recover()
	if err != nil {
		t.Fatal(err)
	}
	if len(thawed) != 1 || thawed[0] != mnt {
		t.Errorf("Recover thawed %v, want [%s]", thawed, mnt)
	}
	wantResumes(t, "after Recover", writer)
	if m, _ := filepath.Glob(filepath.Join(state, "*")); len(m) != 0 {
		t.Errorf("state left after Recover: %v", m)
	}
	if thawed, err := f.Recover(); err != nil || len(thawed) != 0 {
		t.Errorf("a second Recover: %v %v, want nothing to do", thawed, err)
	}
}
