// Package results is the benchmark's raw output: one Run per backend,
// written as JSON by `csi-thin-bench run` and read by `csi-thin-bench
// report`, so a run inside the VM and a run on the host can be merged
// into one report.
package results

import (
	"time"

	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/stats"
)

// Run is everything one benchmark run measured on one backend.
type Run struct {
	Backend string `json:"backend"`
	// Pool describes the storage (e.g. "btrfs on a sparse loop file").
	Pool string `json:"pool"`
	// Emulated is true when the run was inside a QEMU VM under software
	// emulation (TCG): absolute times are then much slower than hardware,
	// ratios measured within the run still mean something.
	Emulated bool      `json:"emulated"`
	Machine  Machine   `json:"machine"`
	Started  time.Time `json:"started"`
	Seconds  float64   `json:"seconds"`
	Config   Config    `json:"config"`

	Latency    []SizeLatency `json:"latency"`
	Space      *Space        `json:"space,omitempty"`
	Discard    []Discard     `json:"discard"`
	Throughput []Throughput  `json:"throughput"`
	Memory     Memory        `json:"memory"`
	Scaling    []Scaling     `json:"scaling"`
	Freeze     []Freeze      `json:"freeze,omitempty"`
	// Notes are caveats the run found (e.g. a phase skipped and why).
	Notes []string `json:"notes,omitempty"`
}

// Machine is where the run happened.
type Machine struct {
	CPU            string            `json:"cpu"`
	Cores          int               `json:"cores"`
	MemoryBytes    int64             `json:"memoryBytes"`
	Kernel         string            `json:"kernel"`
	Virtualization string            `json:"virtualization"`
	Storage        string            `json:"storage"`
	Tools          map[string]string `json:"tools"`
}

// Config is what the run was asked to do.
type Config struct {
	Runs         int     `json:"runs"`
	CopyRuns     int     `json:"copyRuns"`
	ScaleRuns    int     `json:"scaleRuns"`
	SizesBytes   []int64 `json:"sizesBytes"`
	ThroughputN  int     `json:"throughputN"`
	Concurrency  []int   `json:"concurrency"`
	ScaleCounts  []int   `json:"scaleCounts"`
	DiscardBytes int64   `json:"discardBytes"`
	Smoke        bool    `json:"smoke"`
	FreezeRuns   int     `json:"freezeRuns,omitempty"`
}

// SizeLatency is measurement 1-3 at one source data size. All latencies
// are client-side, through the CSI gRPC API, except Bare (the backend
// command alone) and Copy (cp of the data into a new volume).
type SizeLatency struct {
	SourceBytes int64         `json:"sourceBytes"`
	Snapshot    stats.Summary `json:"snapshot"`
	Clone       stats.Summary `json:"clone"`
	Restore     stats.Summary `json:"restore"`
	// Bare is the one backend command a clone wraps (btrfs subvolume
	// snapshot, lvcreate --snapshot), run interleaved with the clones.
	Bare stats.Summary `json:"bare"`
	// BareCommand names it.
	BareCommand string `json:"bareCommand"`
	// Copy is a full copy of the source's files into a new empty volume
	// (cp --reflink=never --sparse=always, then syncfs).
	Copy stats.Summary `json:"copy"`
}

// Usage is physical pool space at one moment.
type Usage struct {
	PoolBytes     int64 `json:"poolBytes"`
	MetadataBytes int64 `json:"metadataBytes"`
	// HostBytes is the loop file's allocation on the host, when HasHost.
	HostBytes int64 `json:"hostBytes"`
	HasHost   bool  `json:"hasHost"`
}

// Minus is the change from b to u.
func (u Usage) Minus(b Usage) Usage {
	return Usage{
		PoolBytes: u.PoolBytes - b.PoolBytes, MetadataBytes: u.MetadataBytes - b.MetadataBytes,
		HostBytes: u.HostBytes - b.HostBytes, HasHost: u.HasHost && b.HasHost,
	}
}

// Space is measurement 4: pool usage added by thin copies of a volume.
type Space struct {
	SourceBytes int64 `json:"sourceBytes"`
	Snapshot    Usage `json:"snapshot"`
	Clone       Usage `json:"clone"`
	// CloneMount is what staging the clone added (a block backend's
	// filesystem writes its superblock and journal on mount).
	CloneMount Usage `json:"cloneMount"`
	// CloneWrite is what overwriting CloneWriteBytes of the clone's
	// (shared) data added.
	CloneWrite      Usage `json:"cloneWrite"`
	CloneWriteBytes int64 `json:"cloneWriteBytes"`
}

// Discard is measurement 5 in one mount mode.
type Discard struct {
	// Mode is e.g. "default (discard)" or "nodiscard + fstrim".
	Mode string `json:"mode"`
	// How says where the knob was (pool remount, volume mount option).
	How          string `json:"how"`
	WrittenBytes int64  `json:"writtenBytes"`
	// Delete is "rm" (file deleted inside the volume) or "DeleteVolume".
	Delete      string `json:"delete"`
	Before      Usage  `json:"before"`
	AfterWrite  Usage  `json:"afterWrite"`
	AfterDelete Usage  `json:"afterDelete"`
	// AfterTrim is set when fstrim ran.
	AfterTrim *Usage `json:"afterTrim,omitempty"`
}

// Throughput is measurement 6 at one concurrency.
type Throughput struct {
	Concurrency     int           `json:"concurrency"`
	N               int           `json:"n"`
	CreateOpsPerSec float64       `json:"createOpsPerSec"`
	DeleteOpsPerSec float64       `json:"deleteOpsPerSec"`
	Create          stats.Summary `json:"create"`
	Delete          stats.Summary `json:"delete"`
	Errors          int           `json:"errors"`
}

// Memory is the driver process's resident set (measurement 6).
type Memory struct {
	IdleRSSBytes int64 `json:"idleRSSBytes"`
	// PeakAfterThroughputBytes is VmHWM right after the throughput phase.
	PeakAfterThroughputBytes int64 `json:"peakAfterThroughputBytes"`
	// PeakBytes is VmHWM at the end of the run.
	PeakBytes int64 `json:"peakBytes"`
	// PeakAnonBytes is the highest RssAnon sampled during the run (every
	// 100 ms): heap and stacks, without the binary's file-backed pages.
	PeakAnonBytes int64 `json:"peakAnonBytes"`
	// IdleAnonBytes is RssAnon when idle after start.
	IdleAnonBytes int64 `json:"idleAnonBytes"`
	// Services says what the measured process served: in --mode=local it
	// is controller and node together, an upper bound for a node plugin.
	Services string `json:"services"`
}

// Scaling is measurement 7 at one pool population.
type Scaling struct {
	ExistingObjects int           `json:"existingObjects"`
	Clone           stats.Summary `json:"clone"`
	Snapshot        stats.Summary `json:"snapshot"`
	Create          stats.Summary `json:"create"`
	// Bare is the bare backend command at the same population: whether a
	// slowdown is ours or the storage's.
	Bare stats.Summary `json:"bare"`
}

// Freeze is measurement 8 in one load: the window pkg/freeze holds a
// filesystem frozen (FIFREEZE to FITHAW, the flush of dirty data
// included), around an empty snapshot step.
type Freeze struct {
	// Load is what ran on the filesystem, e.g. "idle".
	Load string `json:"load"`
	// Filesystem says what was frozen (e.g. "ext4 on a loop device").
	Filesystem string        `json:"filesystem"`
	Window     stats.Summary `json:"window"`
	// WriterOps is the writer's write+fdatasync latency over the whole
	// load, when a writer ran: its longest op is what a freeze stalls.
	WriterOps *stats.Summary `json:"writerOps,omitempty"`
}
