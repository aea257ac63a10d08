package lvm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	osexec "os/exec"
	"regexp"
	"testing"
	"time"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/test/sanity"
)

// sanityChildEnv names the access type a child process of TestSanity runs
// csi-sanity for. Ginkgo, which csi-sanity is built on, runs one suite per
// process, so each access type gets a process of its own; the two also
// run at the same time that way.
const sanityChildEnv = "CSI_THIN_SANITY_ACCESS"

var sanitySummary = regexp.MustCompile(`(?m)^(Ran \d+ of \d+ Specs.*|.*\d+ Passed \| \d+ Failed.*)$`)

// TestSanity runs csi-sanity (the upstream CSI conformance suite) against
// the driver over real LVM thin pools, with filesystem volumes and with
// raw block volumes, each on its own pool (csi-sanity counts what it lists).
func TestSanity(t *testing.T) {
	requireLVM(t)
	t.Parallel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, access := range []string{"mount", "block"} {
		t.Run(access, func(t *testing.T) {
			t.Parallel()
			c, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
			defer cancel()
			cmd := osexec.CommandContext(c, exe, "-test.run", "^TestSanityChild$", "-test.v", "-ginkgo.no-color")
			cmd.Env = append(os.Environ(), sanityChildEnv+"="+access)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			start := time.Now()
			err := cmd.Run()
			// Printed whole when done, so the two runs do not interleave.
			fmt.Printf("----- csi-sanity (%s volumes) output -----\n%s----- end of csi-sanity (%s) -----\n", access, out.String(), access)
			for _, line := range sanitySummary.FindAllString(out.String(), -1) {
				t.Logf("csi-sanity %s: %s", access, line)
			}
			t.Logf("csi-sanity %s took %s", access, time.Since(start).Round(time.Second))
			if err != nil {
				t.Fatalf("csi-sanity with %s volumes: %v", access, err)
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
