package command

import (
	"context"
	"fmt"
	"strings"
	"sync"
)

// Call is one command a Fake saw.
type Call struct {
	Name string
	Args []string
}

// String renders the call as a single line, for assertions.
func (c Call) String() string { return strings.TrimSpace(c.Name + " " + strings.Join(c.Args, " ")) }

// Fake is a scripted Runner for unit tests: each response is matched by the
// command line's prefix; unmatched commands fail loudly.
type Fake struct {
	mu        sync.Mutex
	Calls     []Call
	responses []fakeResponse
}

type fakeResponse struct {
	prefix string
	result Result
	err    error
}

// On scripts the result for commands whose line starts with prefix. Later
// scripts win over earlier ones for the same prefix.
func (f *Fake) On(prefix string, stdout string, exitCode int, stderr string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := fakeResponse{prefix: prefix, result: Result{Stdout: []byte(stdout), Stderr: []byte(stderr), ExitCode: exitCode}}
	if exitCode != 0 {
		r.err = &Error{Cmd: strings.Fields(prefix), ExitCode: exitCode, Stderr: stderr, Err: fmt.Errorf("exit status %d", exitCode)}
	}
	f.responses = append([]fakeResponse{r}, f.responses...)
}

// Run implements Runner.
func (f *Fake) Run(_ context.Context, name string, args ...string) (Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := Call{Name: name, Args: append([]string(nil), args...)}
	f.Calls = append(f.Calls, c)
	line := c.String()
	for _, r := range f.responses {
		if strings.HasPrefix(line, r.prefix) {
			return r.result, r.err
		}
	}
	return Result{ExitCode: 127}, &Error{Cmd: append([]string{name}, args...), ExitCode: 127, Err: fmt.Errorf("fake runner: no response scripted for %q", line)}
}

// Lines returns every call as a line, in order.
func (f *Fake) Lines() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, len(f.Calls))
	for i, c := range f.Calls {
		out[i] = c.String()
	}
	return out
}
