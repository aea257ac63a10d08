package report

import (
	"fmt"
	"strings"

	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/results"
)

// Markdown is the full report: summary, goals, the machine, and one
// section per measurement saying what it measured.
func Markdown(runs []*results.Run, chartFile string) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("# csi-thin benchmark\n\n")
	p("Every figure below was measured by `csi-thin-bench run`, which starts the real `csi-thin` binary (`--mode=local`) on a fresh pool and drives it through its CSI gRPC API over the unix socket, as a container orchestrator would. Latencies are client-side (gRPC included). Ratios are computed within one run.\n\n")
	for _, r := range runs {
		p("- **%s**: %s; %s; started %s, took %.1f min%s.\n", backendLabel(r), r.Pool, machineLine(r.Machine), r.Started.Format("2006-01-02 15:04 UTC"), r.Seconds/60, emulationNote(r))
	}
	p("\n## Summary\n\n")
	p("| measurement | goal |")
	for _, r := range runs {
		p(" %s |", backendLabel(r))
	}
	p("\n|---|---|%s\n", strings.Repeat("---|", len(runs)))
	for _, rw := range summaryRows(runs) {
		p("| %s | %s | %s |\n", rw.label, orDash(rw.goal), strings.Join(rw.cells, " | "))
	}
	if chartFile != "" {
		p("\n![latency vs source size and vs pool population](%s)\n", chartFile)
	}
	p("\n## Goals\n\n%s", goalsMarkdown(runs))
	for _, r := range runs {
		writeRunDetails(&b, r)
	}
	return b.String()
}

func machineLine(m results.Machine) string {
	tools := []string{}
	for k, v := range m.Tools {
		tools = append(tools, k+" "+strings.TrimPrefix(v, k+" "))
	}
	return fmt.Sprintf("%d × %s, %s RAM, kernel %s, %s, work dir on %s; %s",
		m.Cores, orDash(m.CPU), fmtBytes(m.MemoryBytes), m.Kernel, m.Virtualization, orDash(m.Storage), strings.Join(tools, ", "))
}

func emulationNote(r *results.Run) string {
	if r.Emulated {
		return "; **under QEMU software emulation (TCG)**: absolute times are many times slower than hardware, compare ratios"
	}
	return ""
}

func writeRunDetails(b *strings.Builder, r *results.Run) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	c := r.Config
	p("\n## %s in detail\n\n", backendLabel(r))
	if c.Smoke {
		p("**Smoke run**: tiny sizes and single iterations; these numbers only show the benchmark works.\n\n")
	}
	p("Pool: %s.%s\n\n", r.Pool, emulationNote(r))
	var sizes []string
	for _, n := range c.SizesBytes {
		sizes = append(sizes, fmtBytes(n))
	}
	p("Counts: %d latency runs per size (sources of %s), %d full copies per size, %d volumes per throughput batch at concurrency %v, populations %v with %d runs each, %s for discard.\n\n",
		c.Runs, strings.Join(sizes, ", "), c.CopyRuns, c.ThroughputN, c.Concurrency, c.ScaleCounts, c.ScaleRuns, fmtBytes(c.DiscardBytes))
	if len(r.Latency) > 0 {
		p("### 1–3. Snapshot, clone and restore latency, full copy, bare command\n\n")
		p("One volume per source size is filled with random data (fsynced) and stays published. Each of %d runs then visits every source, in an order rotating from run to run (so load changes on the machine over time cannot pass for a size effect), and times CreateSnapshot (then DeleteSnapshot, untimed), CreateVolume from the volume (clone) and from a snapshot (restore) (each deleted, untimed), and the bare `%s` of the source, which is what a clone wraps. The full copy is `cp -a --reflink=never --sparse=always` of the source's files into a new empty volume plus `syncfs`, %d times (source data likely in the page cache, which favours the copy). Milliseconds, p50 / p95.\n\n", c.Runs, r.Latency[0].BareCommand, c.CopyRuns)
		p("| source data | CreateSnapshot | clone | restore | bare `%s` | clone ÷ bare | full copy | copy ÷ clone |\n|---|---|---|---|---|---|---|---|\n", r.Latency[0].BareCommand)
		for _, l := range sizesOf(r) {
			p("| %s | %s / %s | %s / %s | %s / %s | %s / %s | %s | %s | %s |\n", fmtBytes(l.SourceBytes),
				fmtMs(l.Snapshot.P50), fmtMs(l.Snapshot.P95), fmtMs(l.Clone.P50), fmtMs(l.Clone.P95),
				fmtMs(l.Restore.P50), fmtMs(l.Restore.P95), fmtMs(l.Bare.P50), fmtMs(l.Bare.P95),
				fmtRatio(div(l.Clone.P50, l.Bare.P50)), fmtMs(l.Copy.P50), fmtRatio(div(l.Copy.P50, l.Clone.P50)))
		}
	}
	if s := r.Space; s != nil {
		p("\n### 4. Space\n\n")
		p("Physical pool usage (%s) read after a sync, before and after each step, on a source holding %s of random data.\n\n", usageMeaning(r), fmtBytes(s.SourceBytes))
		p("| step | pool space added |%s\n|---|---|%s\n", hostHeader(r), hostSep(r))
		for _, st := range []struct {
			name string
			u    results.Usage
		}{{"CreateSnapshot", s.Snapshot}, {"clone (CreateVolume from the volume)", s.Clone}, {"stage + publish the clone", s.CloneMount}, {fmt.Sprintf("overwrite %s of the clone's data in place + fsync", fmtBytes(s.CloneWriteBytes)), s.CloneWrite}} {
			p("| %s | %s |%s\n", st.name, fmtBytes(st.u.PoolBytes), hostCell(r, st.u))
		}
	}
	if len(r.Discard) > 0 {
		p("\n### 5. Discard\n\n")
		p("A volume gets %s of random data, which is then deleted; the table shows usage after the write, after the delete (once the pool stopped moving: btrfs frees extents at commit and `discard=async` issues discards after a delay), and after `fstrim` where it ran. On a loop-file btrfs pool the pool's own \"Used\" drops at once; whether the host gets the space back (the loop file's allocated blocks) is what discard decides. fstrim discards all free space, including space freed earlier and not yet discarded, so it can return more than this step wrote.\n\n", fmtBytes(r.Config.DiscardBytes))
		p("| mode | how | delete | pool after write | pool after delete | pool after fstrim |%s\n|---|---|---|---|---|---|%s\n", discardHostHeader(r), discardHostSep(r))
		for _, d := range r.Discard {
			trimPool, trimHost := "–", "–" // fstrim also returns older free space not yet discarded
			if d.AfterTrim != nil {
				trimPool, trimHost = fmtBytes(d.AfterTrim.PoolBytes), fmtBytes(d.AfterTrim.HostBytes)
			}
			p("| %s | %s | %s | %s | %s | %s |", d.Mode, d.How, d.Delete, fmtBytes(d.AfterWrite.PoolBytes), fmtBytes(d.AfterDelete.PoolBytes), trimPool)
			if hasHost(r) {
				p(" %s | %s | %s |", fmtBytes(d.AfterWrite.HostBytes), fmtBytes(d.AfterDelete.HostBytes), trimHost)
			}
			p("\n")
		}
	}
	if len(r.Throughput) > 0 {
		p("\n### 6. Throughput and memory\n\n")
		p("%d CreateVolume calls (%s volumes, no source), then %d DeleteVolume calls, from c concurrent gRPC clients sharing one connection. ops/s is successful calls ÷ wall time of the batch.\n\n", c.ThroughputN, "64 MiB", c.ThroughputN)
		p("| concurrency | create ops/s | create p50 / p95 | delete ops/s | delete p50 / p95 | errors |\n|---|---|---|---|---|---|\n")
		for _, t := range r.Throughput {
			p("| %d | %s | %s / %s | %s | %s / %s | %d |\n", t.Concurrency, fmtRate(t.CreateOpsPerSec), fmtMs(t.Create.P50), fmtMs(t.Create.P95), fmtRate(t.DeleteOpsPerSec), fmtMs(t.Delete.P50), fmtMs(t.Delete.P95), t.Errors)
		}
		m := r.Memory
		p("\nDriver memory (%s): RSS %s when idle after start, peak (VmHWM) %s after the throughput phase and %s at the end of the run. Of that, the anonymous part (heap, stacks, Go runtime; RssAnon sampled every 100 ms) was %s idle and %s at peak; the rest is the binary's file-backed pages, which the kernel can reclaim.\n",
			m.Services, fmtBytes(m.IdleRSSBytes), fmtBytes(m.PeakAfterThroughputBytes), fmtBytes(m.PeakBytes), fmtBytes(m.IdleAnonBytes), fmtBytes(m.PeakAnonBytes))
	}
	if len(r.Scaling) > 0 {
		p("\n### 7. Scaling with the pool's population\n\n")
		p("The pool is filled with pairs of a 64 MiB volume and a snapshot of it; at each population, %d runs of CreateVolume (empty), CreateSnapshot and clone of one small source volume, and the bare backend command on the same source. p50 / p95.\n\n", c.ScaleRuns)
		p("| other volumes+snapshots | CreateVolume | CreateSnapshot | clone | bare command | clone ÷ bare |\n|---|---|---|---|---|---|\n")
		for _, s := range r.Scaling {
			p("| %d | %s / %s | %s / %s | %s / %s | %s / %s | %s |\n", s.ExistingObjects, fmtMs(s.Create.P50), fmtMs(s.Create.P95), fmtMs(s.Snapshot.P50), fmtMs(s.Snapshot.P95),
				fmtMs(s.Clone.P50), fmtMs(s.Clone.P95), fmtMs(s.Bare.P50), fmtMs(s.Bare.P95), fmtRatio(div(s.Clone.P50, s.Bare.P50)))
		}
	}
	if len(r.Freeze) > 0 {
		p("\n### 8. Frozen window\n\n")
		p("How long `pkg/freeze` (what `--snapshot-freeze` wraps around a block snapshot) holds a filesystem frozen, from before `FIFREEZE` (which first writes out the dirty data) to after `FITHAW`, with an empty snapshot step: the cost of freezing itself, which a snapshot's own time adds to while the tenant's writes wait. %d freezes per load, 50 ms apart, on %s.\n\n", r.Config.FreezeRuns, r.Freeze[0].Filesystem)
		p("| load | window p50 | p95 | p99 | max | the writer's append+fdatasync p50 / p99 / max |\n|---|---|---|---|---|---|\n")
		for _, f := range r.Freeze {
			w := "–"
			if f.WriterOps != nil {
				w = fmt.Sprintf("%s / %s / %s (%d ops)", fmtMs(f.WriterOps.P50), fmtMs(f.WriterOps.P99), fmtMs(f.WriterOps.Max), f.WriterOps.N)
			}
			p("| %s | %s | %s | %s | %s | %s |\n", f.Load, fmtMs(f.Window.P50), fmtMs(f.Window.P95), fmtMs(f.Window.P99), fmtMs(f.Window.Max), w)
		}
	}
	if len(r.Notes) > 0 {
		p("\nNotes from the run:\n\n")
		for _, n := range r.Notes {
			p("- %s\n", n)
		}
	}
}

func usageMeaning(r *results.Run) string {
	if r.Backend == "btrfs" {
		return "btrfs `filesystem usage` \"Used\": data plus both DUP copies of metadata; and the loop file's allocated blocks on the host"
	}
	return "the thin pool's mapped data chunks from `dmsetup status`"
}

func hasHost(r *results.Run) bool {
	if r.Space != nil {
		return r.Space.Snapshot.HasHost
	}
	for _, d := range r.Discard {
		return d.AfterWrite.HasHost
	}
	return false
}

func hostHeader(r *results.Run) string {
	if hasHost(r) {
		return " host file added |"
	}
	return ""
}

func hostSep(r *results.Run) string {
	if hasHost(r) {
		return "---|"
	}
	return ""
}

func hostCell(r *results.Run, u results.Usage) string {
	if hasHost(r) {
		return " " + fmtBytes(u.HostBytes) + " |"
	}
	return ""
}

func discardHostHeader(r *results.Run) string {
	if hasHost(r) {
		return " host file after write | after delete | after fstrim |"
	}
	return ""
}

func discardHostSep(r *results.Run) string {
	if hasHost(r) {
		return "---|---|---|"
	}
	return ""
}
