package report

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/csi-thin/csi-thin/cmd/csi-thin-bench/internal/results"
)

// Chart draws two panels into a PNG: p50 latency of snapshot, clone and
// full copy against source size (log scale: the copy grows by orders of
// magnitude, the thin operations should stay flat), and clone latency
// against the pool's population.
func Chart(runs []*results.Run, path string) error {
	bySize, err := sizePanel(runs)
	if err != nil {
		return err
	}
	byPop, err := populationPanel(runs)
	if err != nil {
		return err
	}
	const w, h = 26 * vg.Centimeter, 11 * vg.Centimeter
	img := vgimg.New(w, h)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Centimeter, PadTop: vg.Millimeter * 3, PadBottom: vg.Millimeter * 3, PadLeft: vg.Millimeter * 3, PadRight: vg.Millimeter * 3}
	plots := [][]*plot.Plot{{bySize, byPop}}
	canvases := plot.Align(plots, tiles, dc)
	bySize.Draw(canvases[0][0])
	byPop.Draw(canvases[0][1])
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	defer f.Close()
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		return fmt.Errorf("chart %s: %w", path, err)
	}
	return f.Close()
}

var palette = []color.Color{
	color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 255},
	color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 255},
	color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 255},
	color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 255},
}

// series is one line of a panel.
type series struct {
	label string
	pts   plotter.XYs
	color color.Color
	dash  []vg.Length
}

func addSeries(p *plot.Plot, all []series) error {
	for _, s := range all {
		if len(s.pts) == 0 {
			continue
		}
		line, points, err := plotter.NewLinePoints(s.pts)
		if err != nil {
			return fmt.Errorf("chart series %s: %w", s.label, err)
		}
		line.Color, points.Color = s.color, s.color
		line.Dashes = s.dash
		line.Width = vg.Points(1.5)
		p.Add(line, points)
		p.Legend.Add(s.label, line, points)
	}
	return nil
}

func sizePanel(runs []*results.Run) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "p50 latency vs data in the source"
	p.X.Label.Text = "source data (GiB)"
	p.X.Tick.Marker = plainTicks{}
	p.Y.Label.Text = "ms (log scale)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Legend.Top, p.Legend.Left = true, true
	var all []series
	lo, hi := math.Inf(1), 0.0
	for i, r := range runs {
		col := palette[i%len(palette)]
		var snap, clone, cp plotter.XYs
		for _, l := range sizesOf(r) {
			x := float64(l.SourceBytes) / (1 << 30)
			snap = appendPositive(snap, x, l.Snapshot.P50)
			clone = appendPositive(clone, x, l.Clone.P50)
			cp = appendPositive(cp, x, l.Copy.P50)
		}
		for _, pts := range []plotter.XYs{snap, clone, cp} {
			for _, pt := range pts {
				lo, hi = math.Min(lo, pt.Y), math.Max(hi, pt.Y)
			}
		}
		all = append(all,
			series{backendLabel(r) + " clone", clone, col, nil},
			series{backendLabel(r) + " snapshot", snap, col, []vg.Length{vg.Points(2), vg.Points(2)}},
			series{backendLabel(r) + " full copy (cp)", cp, col, []vg.Length{vg.Points(6), vg.Points(3)}},
		)
	}
	if hi == 0 {
		// A log scale cannot draw an empty axis (gonum/plot panics).
		p.Title.Text += " (no latency in these runs)"
		p.Y.Label.Text = "ms"
		p.Y.Scale, p.Y.Tick.Marker = plot.LinearScale{}, plainTicks{}
		p.Y.Min, p.Y.Max = 0, 1
		return p, nil
	}
	// Two empty decades on top hold the legend clear of the lines.
	p.Y.Min, p.Y.Max = lo/2, hi*100
	return p, addSeries(p, all)
}

// populationPanel normalises each backend to its own empty pool, so an
// emulated LVM (seconds) and btrfs (milliseconds) share one axis and the
// question "does it grow with the population?" reads directly.
func populationPanel(runs []*results.Run) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "clone p50 vs objects already in the pool"
	p.X.Label.Text = "other volumes + snapshots"
	p.X.Tick.Marker, p.Y.Tick.Marker = plainTicks{}, plainTicks{}
	p.Y.Label.Text = "p50 ÷ p50 with an empty pool"
	p.Y.Min = 0
	p.Legend.Top, p.Legend.Left = true, true
	var all []series
	top := 1.0
	for i, r := range runs {
		if len(r.Scaling) == 0 {
			continue
		}
		base, bareBase := r.Scaling[0].Clone.P50, r.Scaling[0].Bare.P50
		var clone, bare plotter.XYs
		for _, s := range r.Scaling {
			clone = appendPositive(clone, float64(s.ExistingObjects), div(s.Clone.P50, base))
			bare = appendPositive(bare, float64(s.ExistingObjects), div(s.Bare.P50, bareBase))
		}
		for _, pts := range []plotter.XYs{clone, bare} {
			for _, pt := range pts {
				top = math.Max(top, pt.Y)
			}
		}
		col := palette[i%len(palette)]
		all = append(all,
			series{backendLabel(r) + " CSI clone", clone, col, nil},
			series{backendLabel(r) + " bare command", bare, col, []vg.Length{vg.Points(2), vg.Points(2)}},
		)
	}
	p.Y.Max = top * 1.6 // room for the legend
	return p, addSeries(p, all)
}

// plainTicks labels ticks like 250 rather than 250.00.
type plainTicks struct{}

func (plainTicks) Ticks(lo, hi float64) []plot.Tick {
	ticks := plot.DefaultTicks{}.Ticks(lo, hi)
	for i := range ticks {
		if ticks[i].Label != "" {
			ticks[i].Label = strconv.FormatFloat(ticks[i].Value, 'f', -1, 64)
		}
	}
	return ticks
}

// appendPositive skips missing values (a log scale cannot show 0).
func appendPositive(pts plotter.XYs, x, y float64) plotter.XYs {
	if y <= 0 {
		return pts
	}
	return append(pts, plotter.XY{X: x, Y: y})
}
