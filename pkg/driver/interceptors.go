package driver

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// idGetter is implemented by every CSI request that names a volume.
type idGetter interface{ GetVolumeId() string }

type snapIDGetter interface{ GetSnapshotId() string }

type nameGetter interface{ GetName() string }

// logCalls logs each call with the volume (or snapshot) it is about, its
// duration and its final code; errors always, successes at V(2) and the
// frequent probes and stats at V(5). Requests are never logged whole:
// secrets ride in them.
func logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	kv := []any{"method", info.FullMethod}
	switch r := req.(type) {
	case idGetter:
		kv = append(kv, "volumeID", bounded(r.GetVolumeId()))
	case snapIDGetter:
		kv = append(kv, "snapshotID", bounded(r.GetSnapshotId()))
	case *csi.CreateSnapshotRequest:
		kv = append(kv, "name", bounded(r.GetName()), "volumeID", bounded(r.GetSourceVolumeId()))
	case nameGetter:
		kv = append(kv, "name", bounded(r.GetName()))
	}
	logger := klog.FromContext(ctx).WithValues(kv...)
	ctx = klog.NewContext(ctx, logger)
	resp, err := handler(ctx, req)
	elapsed := time.Since(start)
	observe(info.FullMethod, status.Code(err).String(), elapsed)
	kv = append(kv, "duration", elapsed)
	if err != nil {
		klog.ErrorS(errors.New(bounded(err.Error())), "CSI call failed", append(kv, "code", status.Code(err))...)
		return resp, err
	}
	level := klog.Level(2)
	switch info.FullMethod {
	case "/csi.v1.Identity/Probe", "/csi.v1.Node/NodeGetVolumeStats", "/csi.v1.Node/NodeGetCapabilities",
		"/csi.v1.Controller/ControllerGetCapabilities", "/csi.v1.Controller/GetCapacity", "/csi.v1.Identity/GetPluginInfo":
		level = 5
	}
	klog.V(level).InfoS("CSI call done", kv...)
	return resp, nil
}

// maxLoggedBytes bounds each request string and error in the call log: a
// caller may send megabytes of ID or path, and the log must not amplify it.
const maxLoggedBytes = 512

func bounded(s string) string {
	if len(s) <= maxLoggedBytes {
		return s
	}
	return fmt.Sprintf("%s…(%d bytes)", strings.ToValidUTF8(s[:maxLoggedBytes], ""), len(s))
}

// recoverPanics turns a panic in a handler into Internal instead of
// killing the node's only storage agent.
func recoverPanics(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			klog.ErrorS(fmt.Errorf("%v", r), "panic in CSI handler", "method", info.FullMethod, "stack", string(debug.Stack()))
			err = status.Errorf(codes.Internal, "internal error in %s", info.FullMethod)
		}
	}()
	return handler(ctx, req)
}

// untilReady fails the calls that read or change volumes with Unavailable
// while ready() is false. What a sidecar asks as it starts (the Identity
// service, capabilities, NodeGetInfo) is answered at once: the sidecars
// exit when those fail.
func untilReady(ready func() bool) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if !answeredWhileStarting(info.FullMethod) && !ready() {
			return nil, status.Errorf(codes.Unavailable, "%s: the driver is starting (caches not synced yet); retry", info.FullMethod)
		}
		return handler(ctx, req)
	}
}

func answeredWhileStarting(method string) bool {
	return strings.HasPrefix(method, "/csi.v1.Identity/") || strings.HasSuffix(method, "GetCapabilities") ||
		method == "/csi.v1.Node/NodeGetInfo"
}
