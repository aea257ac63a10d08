package lvm

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"testing"
	"time"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/test/sanity"
)

// sanityChildEnv names the access type a child process of TestSanity runs
// csi-sanity for. Ginkgo, which csi-sanity is built on, runs one suite per
// process, so each access type gets a process of its own.
const sanityChildEnv = "CSI_THIN_SANITY_ACCESS"

var sanitySummary = regexp.MustCompile(`(?m)^(Ran \d+ of \d+ Specs.*|.*\d+ Passed \| \d+ Failed.*)$`)

// sanityRun is one csi-sanity child process.
type sanityRun struct {
	access string
	out    bytes.Buffer
	err    error
	took   time.Duration
	done   chan struct{}
}

var sanityRuns []*sanityRun

// startSanity starts both csi-sanity children. TestMain calls it before
// the other tests so that the children (each on its own pool, so they do
// not disturb the shared pool's numbers) overlap with the whole suite:
// under emulation csi-sanity is the longest part.
func startSanity() {
	if sanityRuns != nil || missingPrereq != "" || !runsTest("TestSanity") {
		return
	}
	exe, err := os.Executable()
	for _, access := range []string{"mount", "block"} {
		r := &sanityRun{access: access, done: make(chan struct{})}
		sanityRuns = append(sanityRuns, r)
		go func() {
			defer close(r.done)
			if err != nil {
				r.err = err
				return
			}
			c, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(c, exe, "-test.run", "^TestSanityChild$", "-test.v", "-ginkgo.no-color")
			cmd.Env = append(os.Environ(), sanityChildEnv+"="+access)
			cmd.Stdout, cmd.Stderr = &r.out, &r.out
			start := time.Now()
			r.err = cmd.Run()
			r.took = time.Since(start)
		}()
	}
}

// runsTest reports whether -test.run selects the top-level test name.
func runsTest(name string) bool {
	pattern := flag.Lookup("test.run").Value.String()
	if pattern == "" {
		return true
	}
	re, err := regexp.Compile(pattern)
	return err == nil && re.MatchString(name)
}

// TestSanity runs csi-sanity (the upstream CSI conformance suite) against
// the driver over real LVM thin pools, with filesystem volumes and with
// raw block volumes, each on its own pool (csi-sanity counts what it lists).
func TestSanity(t *testing.T) {
	requireLVM(t)
	t.Parallel()
	startSanity()
	for _, r := range sanityRuns {
		t.Run(r.access, func(t *testing.T) {
			t.Parallel()
			<-r.done
			// Printed whole when done, so the two runs do not interleave.
			fmt.Printf("----- csi-sanity (%s volumes) output -----\n%s----- end of csi-sanity (%s) -----\n", r.access, r.out.String(), r.access)
			for _, line := range sanitySummary.FindAllString(r.out.String(), -1) {
				t.Logf("csi-sanity %s: %s", r.access, line)
			}
			t.Logf("csi-sanity %s took %s", r.access, r.took.Round(time.Second))
			if r.err != nil {
				t.Fatalf("csi-sanity with %s volumes: %v", r.access, r.err)
			}
		})
	}
}

// TestSanityChild is the body of one TestSanity child process.
func TestSanityChild(t *testing.T) {
	access := os.Getenv(sanityChildEnv)
	if access == "" {
		t.Skip("runs only as a child process of TestSanity")
	}
	b := loopPool(t, "csithin_sanity_"+access, 2*backend.GiB, nil)
	sanity.Run(t, b, sanity.Options{AccessType: access})
}
