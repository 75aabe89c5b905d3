package runplot

import (
	"fmt"
	"image/color"
	"math"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/palette/moreland"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/internal/atomicfile"
)

// dpi of the PNGs.
const dpi = 100

// A heatmap has at most maxHeatColumns columns, and fewer (down to
// minHeatColumns) where the layers × experts of the model would put more than
// heatCells cells in the picture: longer series are averaged over runs of
// consecutive logged steps, so the drawing cost stays bounded (about 1 s for
// 32 layers × 64 experts).
const (
	maxHeatColumns = 400
	minHeatColumns = 50
	heatCells      = 120_000
)

// The balance plot's lines have at most lineSegments points together (each
// at least minLinePoints): longer series are averaged over runs of
// consecutive logged steps.
const (
	lineSegments  = 10_000
	minLinePoints = 100
)

// loadMax is the load/mean at the red end of the heatmap scale (larger
// values get its colour).
const loadMax = 2.0

var lineColors = []color.Color{
	color.RGBA{31, 119, 180, 255}, color.RGBA{255, 127, 14, 255}, color.RGBA{44, 160, 44, 255},
	color.RGBA{214, 39, 40, 255}, color.RGBA{148, 103, 189, 255}, color.RGBA{140, 86, 75, 255},
	color.RGBA{227, 119, 194, 255}, color.RGBA{127, 127, 127, 255}, color.RGBA{188, 189, 34, 255},
	color.RGBA{23, 190, 207, 255},
}

func xys(ps []Point) plotter.XYs {
	out := make(plotter.XYs, len(ps))
	for i, p := range ps {
		out[i] = plotter.XY{X: float64(p.Step), Y: p.Value}
	}
	return out
}

// stepPlot is a plot over steps with a grid: title and y label as given.
func stepPlot(title, yLabel string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "step"
	p.Y.Label.Text = yLabel
	p.Add(plotter.NewGrid())
	return p
}

// addLine adds xy to p as a line of color c, one point wide.
func addLine(p *plot.Plot, xy plotter.XYs, c color.Color) (*plotter.Line, error) {
	l, err := plotter.NewLine(xy)
	if err != nil {
		return nil, err
	}
	l.Color, l.Width = c, vg.Points(1)
	p.Add(l)
	return l, nil
}

func lossPlot(r *Run, file string) error {
	p := stepPlot(r.Name+": loss", "loss (nats per token)")
	p.Legend.Top = true
	if len(r.Loss) > 0 {
		l, err := addLine(p, xys(r.Loss), lineColors[0])
		if err != nil {
			return err
		}
		p.Legend.Add("training", l)
	}
	if len(r.Val) > 0 {
		l, s, err := plotter.NewLinePoints(xys(r.Val))
		if err != nil {
			return err
		}
		l.Color, l.Width = lineColors[1], vg.Points(1.5)
		s.Color, s.Shape = lineColors[1], draw.CircleGlyph{}
		p.Add(l, s)
		p.Legend.Add("validation", l, s)
	}
	return savePNG(file, 9*vg.Inch, 5*vg.Inch, func(c draw.Canvas) { p.Draw(c) })
}

func throughputPlot(r *Run, file string) error {
	p := stepPlot(r.Name+": throughput", "tokens/s (whole job)")
	p.Y.Tick.Marker = plainTicks{}
	if len(r.Throughput) > 0 {
		if _, err := addLine(p, xys(r.Throughput), lineColors[2]); err != nil {
			return err
		}
	}
	p.Y.Min = 0
	return savePNG(file, 9*vg.Inch, 4*vg.Inch, func(c draw.Canvas) { p.Draw(c) })
}

// loadGrid is one layer's heatmap: column c is a (possibly averaged) logged
// step, row e an expert, the value the expert's load over the mean.
type loadGrid struct {
	steps []float64
	z     [][]float64 // [column][expert]
}

func (g loadGrid) Dims() (int, int)   { return len(g.steps), len(g.z[0]) }
func (g loadGrid) Z(c, r int) float64 { return g.z[c][r] }
func (g loadGrid) X(c int) float64    { return g.steps[c] }
func (g loadGrid) Y(r int) float64    { return float64(r) }

// relativeLoad is each expert's load over the layer's mean (NaN for a layer
// that routed nothing).
func relativeLoad(load []int) []float64 {
	sum := 0
	for _, c := range load {
		sum += c
	}
	out := make([]float64, len(load))
	mean := float64(sum) / float64(len(load))
	for e, c := range load {
		out[e] = float64(c) / mean
		if sum == 0 {
			out[e] = math.NaN()
		}
	}
	return out
}

// layerGrid builds layer l's grid, averaging runs of consecutive points when
// there are more than columns.
func layerGrid(pts []cluster.ExpertLoadPoint, l, columns int) loadGrid {
	per := (len(pts) + columns - 1) / columns
	var g loadGrid
	for i := 0; i < len(pts); i += per {
		j := min(i+per, len(pts))
		var step float64
		var z []float64
		for _, p := range pts[i:j] {
			step += float64(p.Step)
			rel := relativeLoad(p.Layers[l])
			if z == nil {
				z = make([]float64, len(rel))
			}
			for e := range z {
				z[e] += rel[e] / float64(j-i)
			}
		}
		g.steps = append(g.steps, step/float64(j-i))
		g.z = append(g.z, z)
	}
	return g
}

// plainTicks are gonum's default ticks labelled without trailing zeros
// (5000, not 5000.00).
type plainTicks struct{}

func (plainTicks) Ticks(lo, hi float64) []plot.Tick {
	ts := plot.DefaultTicks{}.Ticks(lo, hi)
	for i := range ts {
		if ts[i].Label != "" {
			ts[i].Label = strconv.FormatFloat(ts[i].Value, 'f', -1, 64)
		}
	}
	return ts
}

// expertTicks labels experts with integers, at most eight of them (and
// marks every expert when there are at most 16).
type expertTicks int

func (n expertTicks) Ticks(_, _ float64) []plot.Tick {
	every := max(1, (int(n)+7)/8)
	var ts []plot.Tick
	for e := 0; e < int(n); e++ {
		t := plot.Tick{Value: float64(e)}
		if e%every == 0 {
			t.Label = strconv.Itoa(e)
		} else if n > 16 {
			continue
		}
		ts = append(ts, t)
	}
	return ts
}

func expertLoadPlot(r *Run, file string) error {
	pts := consistent(r.ExpertLoad)
	layers := len(pts[0].Layers)
	experts := len(pts[0].Layers[0])
	cm := moreland.SmoothBlueRed()
	cm.SetMin(0)
	cm.SetMax(loadMax)
	pal := cm.Palette(255)
	cols := 1
	if layers > 4 {
		cols = 2
	}
	rows := (layers + cols - 1) / cols
	columns := min(maxHeatColumns, max(minHeatColumns, heatCells/(layers*experts)))
	grid := make([][]*plot.Plot, rows)
	for i := range grid {
		grid[i] = make([]*plot.Plot, cols)
		for j := range grid[i] {
			p := plot.New()
			grid[i][j] = p
			l := i*cols + j
			if l >= layers {
				p.HideAxes()
				continue
			}
			hm := plotter.NewHeatMap(layerGrid(pts, l, columns), pal)
			hm.Min, hm.Max = 0, loadMax
			hm.Overflow = pal.Colors()[len(pal.Colors())-1]
			hm.NaN = color.Gray{Y: 200}
			p.Add(hm)
			p.Title.Text = fmt.Sprintf("%s: layer %d", r.Name, l)
			p.X.Label.Text = "step"
			p.Y.Label.Text = "expert"
			p.Y.Tick.Marker = expertTicks(experts)
		}
	}
	bar := plot.New()
	bar.HideY()
	bar.X.Label.Text = fmt.Sprintf("expert load / mean load of its layer (1 = balanced; %g and above: darkest red)", loadMax)
	bar.Add(&plotter.ColorBar{ColorMap: cm})

	tileH := 2 * vg.Inch
	barH := vg.Inch
	w, h := 10*vg.Inch, vg.Length(rows)*tileH+barH
	return savePNG(file, w, h, func(c draw.Canvas) {
		top := draw.Crop(c, 0, 0, barH, 0)
		tiles := draw.Tiles{Rows: rows, Cols: cols, PadX: vg.Inch / 4, PadY: vg.Inch / 4,
			PadTop: vg.Inch / 10, PadBottom: vg.Inch / 10, PadLeft: vg.Inch / 10, PadRight: vg.Inch / 4}
		canvases := plot.Align(grid, tiles, top)
		for i := range grid {
			for j := range grid[i] {
				if i*cols+j < layers {
					grid[i][j].Draw(canvases[i][j])
				}
			}
		}
		bar.Draw(draw.Crop(c, vg.Inch/2, -vg.Inch/2, vg.Inch/10, -(h - barH)))
	})
}

func expertBalancePlot(r *Run, file string) error {
	pts := consistent(r.ExpertLoad)
	p := stepPlot(r.Name+": largest expert load per layer", "max / mean expert load (1 = balanced)")
	p.Legend.Top = true
	for l := range pts[0].Layers {
		line := make(plotter.XYs, len(pts))
		for i, pt := range pts {
			mx := 0.0
			for _, v := range relativeLoad(pt.Layers[l]) {
				mx = max(mx, v)
			}
			line[i] = plotter.XY{X: float64(pt.Step), Y: mx}
		}
		ln, err := addLine(p, binned(line, max(minLinePoints, lineSegments/len(pts[0].Layers))), lineColors[l%len(lineColors)])
		if err != nil {
			return err
		}
		if l >= len(lineColors) {
			ln.Dashes = []vg.Length{vg.Points(4), vg.Points(2)}
		}
		p.Legend.Add(fmt.Sprintf("layer %d", l), ln)
	}
	p.Y.Min = 1
	return savePNG(file, 9*vg.Inch, 5*vg.Inch, func(c draw.Canvas) { p.Draw(c) })
}

// binned averages xy over runs of consecutive points, so that at most n
// are left.
func binned(xy plotter.XYs, n int) plotter.XYs {
	per := (len(xy) + n - 1) / n
	if per <= 1 {
		return xy
	}
	var out plotter.XYs
	for i := 0; i < len(xy); i += per {
		j := min(i+per, len(xy))
		var m plotter.XY
		for _, p := range xy[i:j] {
			m.X += p.X / float64(j-i)
			m.Y += p.Y / float64(j-i)
		}
		out = append(out, m)
	}
	return out
}

// savePNG draws into a w×h image (less a margin) and writes it to file.
func savePNG(file string, w, h vg.Length, fn func(draw.Canvas)) error {
	img := vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(dpi))
	margin := vg.Inch / 8
	fn(draw.Crop(draw.New(img), margin, -margin, margin, -margin))
	return atomicfile.WriteTo(file, vgimg.PngCanvas{Canvas: img}, 0o644)
}

// consistent keeps the points shaped like the last one (its layers, each
// with its experts, at least one of each), so that a malformed record cannot
// break the drawing.
func consistent(pts []cluster.ExpertLoadPoint) []cluster.ExpertLoadPoint {
	if len(pts) == 0 {
		return nil
	}
	ref := pts[len(pts)-1].Layers
	if len(ref) == 0 || len(ref[0]) == 0 {
		return nil
	}
	var out []cluster.ExpertLoadPoint
next:
	for _, p := range pts {
		if len(p.Layers) != len(ref) {
			continue
		}
		for l := range p.Layers {
			if len(p.Layers[l]) != len(ref[0]) {
				continue next
			}
		}
		out = append(out, p)
	}
	return out
}
