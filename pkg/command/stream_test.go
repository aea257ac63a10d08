package command

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestPipeSizeChild is the command of TestStreamGrowsPipes: this test
// binary run again, printing the capacity of the pipes on its stdin and
// stdout. Run on its own, it skips.
func TestPipeSizeChild(t *testing.T) {
	if os.Getenv("CSI_THIN_PIPE_SIZE_CHILD") != "1" {
		t.Skip("the command TestStreamGrowsPipes runs")
	}
	in, _ := unix.FcntlInt(os.Stdin.Fd(), unix.F_GETPIPE_SZ, 0)
	out, _ := unix.FcntlInt(os.Stdout.Fd(), unix.F_GETPIPE_SZ, 0)
	if _, err := io.Copy(io.Discard, os.Stdin); err != nil {
		os.Exit(2)
	}
	fmt.Printf("stdin=%d stdout=%d\n", in, out)
	os.Exit(0) // before the test framework prints to stdout
}

// TestStreamGrowsPipes: the pipes between this process and a streaming
// command hold StreamChunkBytes, not the kernel's default 64 KiB.
func TestStreamGrowsPipes(t *testing.T) {
	var out bytes.Buffer
	h := &Host{Env: []string{"CSI_THIN_PIPE_SIZE_CHILD=1"}}
	if _, err := h.Stream(context.Background(), strings.NewReader("x"), &out, os.Args[0], "-test.run=^TestPipeSizeChild$"); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("stdin=%d stdout=%d\n", StreamChunkBytes, StreamChunkBytes); out.String() != want {
		t.Errorf("the command saw %q, want %q", out.String(), want)
	}
}

type failingIO struct{ err error }

func (f failingIO) Read([]byte) (int, error)  { return 0, f.err }
func (f failingIO) Write([]byte) (int, error) { return 0, f.err }

// TestStreamCopies: data goes through a command byte for byte, in both
// directions at once; a reader or writer that fails fails the stream.
func TestStreamCopies(t *testing.T) {
	data := make([]byte, 5*StreamChunkBytes+3)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if _, err := (&Host{}).Stream(context.Background(), bytes.NewReader(data), &out, "cat"); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), data) {
		t.Errorf("cat gave back %d bytes, not the %d given", out.Len(), len(data))
	}

	boom := errors.New("boom")
	if _, err := (&Host{}).Stream(context.Background(), failingIO{boom}, &out, "cat"); !errors.Is(err, boom) {
		t.Errorf("a failing stdin: %v, want %v", err, boom)
	}
	// The command dies of the closed pipe (SIGPIPE), but the error names
	// the cause: the writer's.
	if _, err := (&Host{}).Stream(context.Background(), bytes.NewReader(data), failingIO{boom}, "cat"); !errors.Is(err, boom) {
		t.Errorf("a failing stdout: %v, want %v", err, boom)
	}
}
