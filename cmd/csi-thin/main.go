// Command csi-thin is the csi-thin CSI driver: one binary that runs as the
// all-in-one local driver (controller and node services over one local
// pool), as the cluster controller, or as the per-node agent.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/klog/v2"

	"github.com/csi-thin/csi-thin/pkg/backend"
	"github.com/csi-thin/csi-thin/pkg/controller"
	"github.com/csi-thin/csi-thin/pkg/driver"
	"github.com/csi-thin/csi-thin/pkg/freeze"
	"github.com/csi-thin/csi-thin/pkg/k8s/lifecycle"
	"github.com/csi-thin/csi-thin/pkg/k8s/nodeagent"
	"github.com/csi-thin/csi-thin/pkg/node"
)

// options are the command-line flags of every mode.
type options struct {
	mode       string
	endpoint   string
	nodeID     string
	maxVolumes int64

	backend       string
	poolPath      string
	loopFile      string
	loopSize      string
	vg            string
	thinPool      string
	devices       string
	overprovision float64
	fullPercent   float64
	metaFull      float64
	quotaMode     string
	lvmConfig     string
	lvmZero       bool
	cmdPrefix     string

	snapshotFreeze bool
	freezeStateDir string
	freezeTimeout  time.Duration
	trimInterval   time.Duration
	leftoverGrace  time.Duration

	kubeconfig   string
	healthAddr   string
	metricsAddr  string
	registration string
	kubeletDir   string
	lostAfter    time.Duration
	orphanGrace  time.Duration
	version      bool

	transfer          bool
	transferAddr      string
	transferStateDir  string
	transferNamespace string
	transferAgentSA   string
	transferHost      string
}

func parseFlags(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("csi-thin", flag.ContinueOnError)
	klog.InitFlags(fs)
	fs.StringVar(&o.mode, "mode", "local", "local (controller+node on one local pool), controller (cluster controller, routes through CRDs) or node (per-node agent)")
	fs.StringVar(&o.endpoint, "endpoint", "unix:///run/csi-thin/csi.sock", "CSI endpoint (unix socket)")
	fs.StringVar(&o.nodeID, "node-id", "", "this node's name (default: the host name)")
	fs.Int64Var(&o.maxVolumes, "max-volumes-per-node", 0, "volumes the scheduler may place on this node (0: unlimited)")
	fs.StringVar(&o.backend, "backend", "btrfs", "storage backend: btrfs or lvmthin")
	fs.StringVar(&o.poolPath, "pool-path", "/var/lib/csi-thin/btrfs", "btrfs: mount point of the pool filesystem")
	fs.StringVar(&o.loopFile, "loop-file", "", "embedded pool: a sparse file the driver creates, attaches and (if blank) formats")
	fs.StringVar(&o.loopSize, "loop-size", "10Gi", "size of a new loop file (e.g. 10Gi)")
	fs.StringVar(&o.vg, "vg", "csi-thin", "lvmthin: volume group")
	fs.StringVar(&o.thinPool, "thin-pool", "thinpool", "lvmthin: thin pool LV in the volume group")
	fs.StringVar(&o.devices, "devices", "", "lvmthin: comma-separated block devices to build the VG from if it does not exist")
	fs.Float64Var(&o.overprovision, "overprovision-ratio", 10, "sum of volume sizes allowed, as a multiple of the pool size")
	fs.Float64Var(&o.fullPercent, "data-full-percent", 90, "refuse new volumes once the pool's data is this full (percent)")
	fs.Float64Var(&o.metaFull, "metadata-full-percent", 80, "lvmthin: refuse new volumes once thin-pool metadata is this full (percent)")
	fs.StringVar(&o.quotaMode, "btrfs-quota", "auto", "btrfs: size limits by simple quotas (simple), classic qgroups (full), or simple where supported (auto)")
	fs.BoolVar(&o.lvmZero, "lvm-zero-new-blocks", true, "lvmthin: a pool created by the driver zeroes a new chunk before a partial first write (--zero y, LVM's default); false is faster for small first writes but lets raw block volumes read stale data of deleted volumes, and exhausted metadata then fails all I/O instead of going read-only")
	fs.StringVar(&o.lvmConfig, "lvm-config", "", "lvmthin: passed as --config to every LVM command (e.g. 'activation{udev_sync=0 udev_rules=0}' where the node has no udev)")
	fs.BoolVar(&o.snapshotFreeze, "snapshot-freeze", false, "lvmthin: also freeze a mounted source filesystem (FIFREEZE) around its snapshot; off because lvcreate's own suspend of the origin freezes it, and on kernel 6.1 that suspend fails (busy) on a filesystem frozen already, after which snapshots are taken unfrozen (docs/consistency.md)")
	fs.StringVar(&o.freezeStateDir, "freeze-state-dir", "/var/lib/csi-thin/freeze", "lvmthin: where a freeze is recorded until the thaw, so a restart thaws what a killed process left frozen")
	fs.DurationVar(&o.freezeTimeout, "freeze-timeout", freeze.DefaultTimeout, "lvmthin: longest a filesystem stays frozen; a slower snapshot finishes unfrozen (crash-consistent)")
	fs.DurationVar(&o.trimInterval, "trim-interval", 0, "trim (FITRIM) the filesystems that do not discard online every interval, one at a time, plus up to 10% jitter: a btrfs pool mounted without discard, LVM thin volumes staged with mount option nodiscard (0: off; docs/consistency.md)")
	fs.DurationVar(&o.leftoverGrace, "leftover-staging-grace", nodeagent.DefaultLeftoverStagingGrace, "node: how long after a volume's deletion began the kubelet has to unstage it, before the agent unmounts a staging mount the kubelet left behind (its node was away; docs/kubernetes.md \"Node lost\")")
	fs.StringVar(&o.cmdPrefix, "command-prefix", "", "prefix for storage commands, space-separated (e.g. 'nsenter -t 1 -m -u -i -n -p --' to run LVM in the host's namespaces)")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "controller/node: kubeconfig (default: in-cluster)")
	fs.StringVar(&o.healthAddr, "health-address", ":9808", "controller/node: address of the /healthz (liveness) and /readyz (readiness) endpoints (empty: off)")
	fs.StringVar(&o.metricsAddr, "metrics-address", ":9809", "controller/node: address of the Prometheus /metrics endpoint (empty: off)")
	fs.StringVar(&o.registration, "registration-socket", "", "node: kubelet plugin-registration socket (default: <kubelet-dir>/plugins_registry/csi-thin.io-reg.sock)")
	fs.StringVar(&o.kubeletDir, "kubelet-dir", "/var/lib/kubelet", "node: the kubelet's root directory")
	fs.DurationVar(&o.lostAfter, "lost-after", lifecycle.DefaultLostAfter, "controller: a node deleted from the cluster, or whose agent has not reported for this long, is lost: its resources are marked Lost and deleted without waiting for it (0: off; the replicas elect one to judge)")
	fs.DurationVar(&o.orphanGrace, "orphan-grace", lifecycle.DefaultOrphanGrace, "controller: a ThinVolume that no PV stands for this long after its creation (claim deleted mid-provisioning, provisioner crash) is deleted; one whose Retain PV is gone is only reported (0: off; needs --lost-after > 0)")
	fs.BoolVar(&o.transfer, "transfer", false, "controller/node: node-to-node transfers (docs/mobility.md): the controller keeps the transfer CA and token key and signs the node agents' certificate requests; a node agent gets its certificate and serves its snapshots at --transfer-address")
	fs.StringVar(&o.transferAddr, "transfer-address", ":9810", "node: address of the transfer server (with --transfer)")
	fs.StringVar(&o.transferHost, "transfer-advertise-host", os.Getenv("POD_IP"), "node: the host (IP) other nodes' agents reach this agent's transfer server at, published in its ThinNode (default: $POD_IP; empty: the --transfer-address host if it names one)")
	fs.StringVar(&o.transferStateDir, "transfer-state-dir", "/var/lib/csi-thin/transfer", "node: the transfer key, certificate and used tokens (with --transfer)")
	fs.StringVar(&o.transferNamespace, "transfer-namespace", "", "controller/node: namespace of the transfer CA Secret and trust ConfigMap (default: the pod's)")
	fs.StringVar(&o.transferAgentSA, "transfer-agent-service-account", "csi-thin-node", "controller: the node agents' service account ([namespace:]name), the only requester whose certificate requests are signed")
	fs.BoolVar(&o.version, "version", false, "print the version (set at build time) and exit")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if o.version {
		return o, nil
	}
	if o.nodeID == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("node id: %w", err)
		}
		o.nodeID = h
	}
	return o, nil
}

func (o *options) loopSizeBytes() (int64, error) {
	q, err := resource.ParseQuantity(o.loopSize)
	if err != nil {
		return 0, fmt.Errorf("--loop-size %q: %w", o.loopSize, err)
	}
	return q.Value(), nil
}

func (o *options) commandPrefix() []string { return strings.Fields(o.cmdPrefix) }

func main() {
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if o.version {
		fmt.Println("csi-thin", driver.Version)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	switch o.mode {
	case "local":
		err = runLocal(ctx, o)
	case "controller":
		err = runController(ctx, o)
	case "node":
		err = runNode(ctx, o)
	default:
		err = fmt.Errorf("unknown --mode %q (local, controller or node)", o.mode)
	}
	klog.Flush()
	if err != nil {
		klog.ErrorS(err, "csi-thin failed", "mode", o.mode)
		os.Exit(1)
	}
}

// runLocal serves the Controller and Node services over one local pool:
// a single-node install, csi-sanity and the demo.
func runLocal(ctx context.Context, o *options) error {
	pool, err := openLocal(ctx, o)
	if err != nil {
		return err
	}
	nodeServer := node.New(pool, node.Options{MaxVolumes: o.maxVolumes})
	d, err := driver.New(localDriverConfig(o.endpoint, pool, nodeServer))
	if err != nil {
		return err
	}
	trimmer := newTrimmer(o, pool, nodeServer, nil)
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return d.Run(ctx) })
	g.Go(func() error { return trimmer.Run(ctx) })
	return g.Wait()
}

// localDriverConfig wires the three CSI services to one local pool.
func localDriverConfig(endpoint string, pool backend.Local, nodeServer *node.Server) driver.Config {
	ctrl := controller.New(pool)
	cfg := driver.Config{
		Endpoint:   endpoint,
		Identity:   driver.NewIdentity(pool.Health, driver.WithController),
		Controller: ctrl,
		Node:       nodeServer,
	}
	if groups := ctrl.Groups(); groups != nil {
		cfg.GroupController = groups
	}
	return cfg
}
