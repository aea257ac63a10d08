package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	thinv1 "github.com/csi-thin/csi-thin/pkg/api/v1alpha1"
	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/controller"
	"github.com/csi-thin/csi-thin/pkg/driver"
	"github.com/csi-thin/csi-thin/pkg/k8s/lifecycle"
	"github.com/csi-thin/csi-thin/pkg/k8s/nodeagent"
	"github.com/csi-thin/csi-thin/pkg/k8s/registration"
	"github.com/csi-thin/csi-thin/pkg/k8s/router"
	"github.com/csi-thin/csi-thin/pkg/k8s/snapshotexport"
	"github.com/csi-thin/csi-thin/pkg/node"
	"github.com/csi-thin/csi-thin/pkg/wellknown"
)

// runController serves the CSI Controller service with the router as its
// backend: every volume operation becomes a resource for a node agent.
// The CSI service runs in every replica (the sidecars elect theirs); the
// watch over lost nodes runs in the replica that holds the lease.
func runController(ctx context.Context, o *options) error {
	mgr, err := newManager(o, cache.Options{}, o.lostAfter > 0)
	if err != nil {
		return err
	}
	if o.lostAfter > 0 {
		m, err := lifecycle.NewMetrics(metrics.Registry)
		if err != nil {
			return fmt.Errorf("lifecycle metrics: %w", err)
		}
		if err := mgr.Add(&lifecycle.Detector{Client: mgr.GetClient(), API: mgr.GetAPIReader(),
			Recorder: mgr.GetEventRecorder("csi-thin-controller"), LostAfter: o.lostAfter, Metrics: m,
			CollectOrphans: o.orphanGrace > 0, OrphanGrace: o.orphanGrace,
			Exports: &snapshotexport.GoneNodeExports{Client: mgr.GetClient(), Secrets: mgr.GetAPIReader(),
				Recorder: mgr.GetEventRecorder("csi-thin-controller")}}); err != nil {
			return err
		}
	}
	var afterSync []runner
	var rcfg router.Config
	if o.transfer {
		signer, err := newTransferSigner(o, mgr.GetConfig())
		if err != nil {
			return err
		}
		afterSync = append(afterSync, signer)
		rcfg.Transfers = signer.Issuer
		copies := &router.Copies{Client: mgr.GetClient(), API: mgr.GetAPIReader(), Recorder: mgr.GetEventRecorder("csi-thin-controller"), Tokens: signer.Issuer}
		if err := copies.SetupWithManager(mgr); err != nil {
			return fmt.Errorf("cross-node copies: %w", err)
		}
	}
	r, err := router.New(ctx, mgr.GetClient(), mgr.GetAPIReader(), mgr.GetCache(), rcfg)
	if err != nil {
		return err
	}
	if err := addProbes(mgr, "router", r.Health); err != nil {
		return err
	}
	synced := new(atomic.Bool)
	ctrlServer := controller.New(r)
	d, err := driver.New(driver.Config{
		Endpoint:        o.endpoint,
		Identity:        driver.NewIdentity(r.Health, driver.WithController),
		Controller:      ctrlServer,
		GroupController: ctrlServer.Groups(),
		Ready:           synced.Load,
	})
	if err != nil {
		return err
	}
	return runAll(ctx, mgr, d, synced, afterSync...)
}

// runNode serves the CSI Node service on the kubelet's plugin socket over
// this node's pool, registers it with the kubelet, reconciles this node's
// ThinVolumes and ThinSnapshots, and keeps its ThinNode current.
func runNode(ctx context.Context, o *options) error {
	tuneGC()
	pool, err := openLocal(ctx, o)
	if err != nil {
		return fmt.Errorf("open pool: %w", err)
	}
	nodeName := pool.NodeName()
	mgr, err := newManager(o, cache.Options{ByObject: nodeagent.CacheOptions(nodeName)}, false)
	if err != nil {
		return err
	}
	poolMetrics, err := nodeagent.NewPoolMetrics(nil)
	if err != nil {
		return fmt.Errorf("pool metrics: %w", err)
	}
	var transfers *transferAgent
	agentOpts := []nodeagent.Option{nodeagent.WithLeftoverStagingGrace(o.leftoverGrace)}
	if o.transfer {
		if transfers, err = newTransferAgent(o, mgr.GetConfig(), nodeName, pool); err != nil {
			return err
		}
		if transfers != nil {
			tm, err := nodeagent.NewTransferMetrics(nil)
			if err != nil {
				return fmt.Errorf("transfer metrics: %w", err)
			}
			agentOpts = append(agentOpts, nodeagent.WithTransfers(transfers.Client, tm))
		}
	}
	status, err := nodeagent.Setup(mgr, pool, 0, poolMetrics.Observe(nodeName), agentOpts...)
	if err != nil {
		return err
	}
	health := poolHealth(pool)
	if err := addProbes(mgr, "pool", health); err != nil {
		return err
	}

	csiSocket, err := driver.SocketPath(o.endpoint)
	if err != nil {
		return err
	}
	nodeServer := node.New(pool, node.Options{MaxVolumes: o.maxVolumes})
	synced := new(atomic.Bool)
	d, err := driver.New(driver.Config{
		Endpoint: o.endpoint,
		Identity: driver.NewIdentity(health, driver.WithoutController),
		Node:     nodeServer,
		Ready:    synced.Load,
	})
	if err != nil {
		return err
	}
	regSocket := o.registration
	if regSocket == "" {
		regSocket = filepath.Join(o.kubeletDir, "plugins_registry", wellknown.DriverName+"-reg.sock")
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	reg := &registration.Server{
		DriverName: wellknown.DriverName,
		Endpoint:   csiSocket, // the pod mounts the kubelet dir at the host's path
		Socket:     regSocket,
		// Exit so that the pod restarts and the kubelet sees a new socket.
		Failed: func(err error) { cancel(err) },
	}
	klog.InfoS("node agent starting", "node", nodeName, "backend", pool.Kind(), "endpoint", o.endpoint, "registration", regSocket)
	trimmer := newTrimmer(o, pool, nodeServer, nodeagent.TrimEvents(mgr.GetClient(), mgr.GetEventRecorder("csi-thin-node"), nodeName))
	after := []runner{reg, trimmer}
	if transfers != nil {
		transfers.publish = status.SetTransferAddress
		after = append(after, transfers)
	}
	err = runAll(ctx, mgr, d, synced, after...)
	if cause := context.Cause(ctx); err == nil && cause != nil && !errors.Is(cause, context.Canceled) {
		err = cause
	}
	return err
}

// nodeGCPercent is the node plugin's GOGC unless the environment sets one.
// Its live heap is small (3-4 MiB with controller-runtime's caches and
// client-go's scheme), so collecting at +50% instead of +100% costs little
// CPU and lowers its peak anonymous memory by ~2 MiB (hack/rss-node.sh,
// docs/performance.md): it runs on every node, so its footprint counts.
const nodeGCPercent = 50

func tuneGC() {
	if os.Getenv("GOGC") != "" {
		return
	}
	old := debug.SetGCPercent(nodeGCPercent)
	klog.V(2).InfoS("GC target set", "gcPercent", nodeGCPercent, "was", old)
}

// runner is anything that serves until its context ends.
type runner interface{ Run(context.Context) error }

// runAll runs the manager, the CSI server and the other servers until ctx
// ends or one of them fails, which stops the others. The CSI socket is
// served at once: a sidecar that connected to a socket nobody accepted on
// gave up and restarted ("Lost connection to CSI driver"). Until the
// caches have synced, synced is false, which the CSI server's Ready gate
// and Probe answer (no call is answered from an empty cache); the other
// servers (the kubelet registration, the trimmer) start after the sync.
func runAll(ctx context.Context, mgr ctrl.Manager, csiServer runner, synced *atomic.Bool, afterSync ...runner) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return mgr.Start(ctx) })
	g.Go(func() error { return csiServer.Run(ctx) })
	g.Go(func() error {
		if !mgr.GetCache().WaitForCacheSync(ctx) {
			return ctx.Err()
		}
		synced.Store(true)
		klog.InfoS("caches synced: serving")
		sg, sctx := errgroup.WithContext(ctx)
		for _, s := range afterSync {
			sg.Go(func() error { return s.Run(sctx) })
		}
		return sg.Wait()
	})
	err := g.Wait()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// leaderElectionID names the controller replicas' lease.
const leaderElectionID = "csi-thin-controller.csi-thin.io"

func newManager(o *options, cacheOpts cache.Options, elect bool) (ctrl.Manager, error) {
	ctrl.SetLogger(klog.NewKlogr())
	cfg, err := restConfig(o.kubeconfig)
	if err != nil {
		return nil, err
	}
	scheme, err := newScheme()
	if err != nil {
		return nil, err
	}
	metricsAddr := o.metricsAddr
	if metricsAddr == "" {
		metricsAddr = "0" // off
	}
	healthAddr := o.healthAddr
	if healthAddr == "" {
		healthAddr = "0"
	}
	// Nodes are read once (for the ThinNode's owner) and never cached.
	cacheOpts.Scheme = scheme
	return ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Cache:                  cacheOpts,
		Client:                 client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Node{}}}},
		Metrics:                metricsserver.Options{BindAddress: metricsAddr},
		HealthProbeBindAddress: healthAddr,
		LeaderElection:         elect,
		LeaderElectionID:       leaderElectionID,
		// In a pod, the lease goes in the pod's namespace (found by
		// controller-runtime); outside, in "default".
		LeaderElectionNamespace:       leaderNamespace(o),
		LeaderElectionReleaseOnCancel: true,
	})
}

func leaderNamespace(o *options) string {
	if o.kubeconfig != "" {
		return "default"
	}
	return ""
}

// newScheme holds only the types the controller and the node agent read or
// write: the csi-thin resources and core/v1 (Nodes; events go through
// client-go's own clientset). Registering client-go's built-in groups
// here, as scaffolding does, copied ~60 API groups into a scheme that
// needs two.
func newScheme() (*runtime.Scheme, error) {
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("scheme core/v1: %w", err)
	}
	if err := thinv1.AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("scheme %s: %w", thinv1.GroupVersion, err)
	}
	return scheme, nil
}

// restConfig is the --kubeconfig file, else the in-cluster config.
func restConfig(kubeconfig string) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	cfg.UserAgent = "csi-thin/" + driver.Version
	// The controller waits on many resources at once during bursts of
	// CreateVolume, and each node agent writes three times per create;
	// the defaults (5 qps) would throttle them (make bench-cluster).
	cfg.QPS, cfg.Burst = 100, 200
	return cfg, nil
}

// poolHealthInterval is how long a pool health check's answer is reused
// by /readyz and the CSI Probe (the kubelet probes every 10s by default).
const poolHealthInterval = 5 * time.Second

// poolHealth is the node's pool health as /readyz and Probe ask it: the
// endpoint is unauthenticated and one check of an LVM pool is one lvs,
// so a flood of requests runs one check per interval.
func poolHealth(pool backend.Local) driver.HealthFunc {
	return driver.CachedHealth(pool.Health, poolHealthInterval)
}

// probeServer is where the kubelet's probes are answered: the manager's
// health probe endpoint.
type probeServer interface {
	AddHealthzCheck(name string, check healthz.Checker) error
	AddReadyzCheck(name string, check healthz.Checker) error
}

// addProbes answers liveness (/healthz) as long as the process serves, and
// readiness (/readyz) with check. A pool that has failed, or is slow to
// answer (an lvs on a loaded node) is not fixed by a restart, and a
// restart kills the copies and exports in flight: so its health decides
// readiness, never liveness.
func addProbes(srv probeServer, name string, check driver.HealthFunc) error {
	if err := srv.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return fmt.Errorf("liveness check: %w", err)
	}
	if err := srv.AddReadyzCheck(name, healthCheck(check)); err != nil {
		return fmt.Errorf("readiness check %s: %w", name, err)
	}
	return nil
}

// healthCheck adapts a backend health function to a probe check.
func healthCheck(health driver.HealthFunc) func(*http.Request) error {
	return func(req *http.Request) error {
		if h := health(req.Context()); !h.Healthy {
			return errors.New(h.Message)
		}
		return nil
	}
}
