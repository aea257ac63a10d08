package report

import (
	"fmt"
	"image/color"
	"os"

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
	p.Y.Label.Text = "ms (log scale)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Legend.Top, p.Legend.Left = true, true
	var all []series
	for i, r := range runs {
		col := palette[i%len(palette)]
		var snap, clone, cp plotter.XYs
		for _, l := range sizesOf(r) {
			x := float64(l.SourceBytes) / (1 << 30)
			snap = appendPositive(snap, x, l.Snapshot.P50)
			clone = appendPositive(clone, x, l.Clone.P50)
			cp = appendPositive(cp, x, l.Copy.P50)
		}
		all = append(all,
			series{r.Backend + " clone", clone, col, nil},
			series{r.Backend + " snapshot", snap, col, []vg.Length{vg.Points(2), vg.Points(2)}},
			series{r.Backend + " full copy (cp)", cp, col, []vg.Length{vg.Points(6), vg.Points(3)}},
		)
	}
	return p, addSeries(p, all)
}

func populationPanel(runs []*results.Run) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "clone p50 vs objects already in the pool"
	p.X.Label.Text = "other volumes + snapshots"
	p.Y.Label.Text = "ms"
	p.Y.Min = 0
	p.Legend.Top, p.Legend.Left = true, true
	var all []series
	for i, r := range runs {
		var pts plotter.XYs
		for _, s := range r.Scaling {
			pts = appendPositive(pts, float64(s.ExistingObjects), s.Clone.P50)
		}
		all = append(all, series{backendLabel(r), pts, palette[i%len(palette)], nil})
	}
	return p, addSeries(p, all)
}

// appendPositive skips missing values (a log scale cannot show 0).
func appendPositive(pts plotter.XYs, x, y float64) plotter.XYs {
	if y <= 0 {
		return pts
	}
	return append(pts, plotter.XY{X: x, Y: y})
}
