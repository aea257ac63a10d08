// Command rssprobe measures the memory floor of csi-thin's dependencies:
// it links the packages every csi-thin mode needs (CSI spec, gRPC, klog),
// plus controller-runtime when built with -tags ctrl, does nothing, and
// prints its own RSS. hack/rss-floor.sh builds and runs both variants;
// docs/performance.md explains what the difference means for the node
// plugin's RSS goal.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"time"

	_ "github.com/container-storage-interface/spec/lib/go/csi"
	_ "google.golang.org/grpc"
	_ "k8s.io/klog/v2"
)

func main() {
	// Let the runtime settle (background GC workers, scavenger) as an idle
	// driver would.
	time.Sleep(2 * time.Second)
	f, err := os.Open("/proc/self/status")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer f.Close()
	var fields []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		for _, k := range []string{"VmRSS:", "RssAnon:", "RssFile:"} {
			if strings.HasPrefix(s.Text(), k) {
				fields = append(fields, strings.Join(strings.Fields(s.Text()), " "))
			}
		}
	}
	fmt.Println(strings.Join(fields, ", "))
}
