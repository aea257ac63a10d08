// Command csi-thin-bench starts the real csi-thin driver on a fresh pool
// and drives it through its CSI gRPC API, like a container orchestrator:
//
//	csi-thin-bench demo   one volume, 1 GiB of data, snapshot, restore,
//	                      clone and a full copy for comparison; a table
//	csi-thin-bench run    the benchmark: latencies, space,
//	                      discard, throughput, scaling; raw JSON
//	csi-thin-bench report merges runs into Markdown + PNG + a table
//	csi-thin-bench stream the volume stream against the bare tool:
//	                      btrfs send | btrfs receive, or for LVM thin
//	                      a full-device dd (bench_stream.go)
//
// It needs root (loop devices, mounts) and cleans up everything it made,
// including after Ctrl-C.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/klog/v2"
)

func usage() {
	fmt.Fprintln(os.Stderr, "usage: csi-thin-bench demo|run|report|stream [flags]   (csi-thin-bench <cmd> -h for flags)")
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	switch os.Args[1] {
	case "demo":
		err = runDemo(ctx, os.Args[2:])
	case "run":
		err = runBench(ctx, os.Args[2:])
	case "report":
		err = runReport(os.Args[2:])
	case "stream":
		err = runStreamBench(ctx, os.Args[2:])
	case "-h", "--help", "help":
		usage()
		return
	default:
		usage()
		os.Exit(2)
	}
	klog.Flush()
	if err != nil {
		fmt.Fprintf(os.Stderr, "csi-thin-bench %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
