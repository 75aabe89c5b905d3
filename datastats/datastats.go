package datastats

import (
	"fmt"
	"image/color"
	"io"
	"math"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/moetrain/moetrain/internal/atomicfile"
	"github.com/moetrain/moetrain/sampling"
)

// Options are the settings of `coordinator data-stats`, named after its
// flags; Report checks them.
type Options struct {
	Config   sampling.Config
	Budget   int
	DP, Bins int
	Seed     uint64
	PlotFile string
}

// Report reads the data set of o.Config and writes its length histogram, its
// buckets and the comparison of naive, bucketed and packed batching at
// o.Budget tokens per batch to w, and the plot to o.PlotFile if set.
func Report(w io.Writer, o Options) error {
	if o.Config.MaxLen <= 0 {
		return fmt.Errorf("--max-len %d: want > 0", o.Config.MaxLen)
	}
	if o.Budget == 0 {
		o.Budget = 8 * o.Config.MaxLen
	}
	if o.Budget < 0 {
		return fmt.Errorf("--budget %d: want > 0", o.Budget)
	}
	if o.DP <= 0 {
		return fmt.Errorf("--dp %d: want > 0", o.DP)
	}
	if o.Bins <= 0 || o.Bins > 1000 {
		return fmt.Errorf("--bins %d: want 1..1000", o.Bins)
	}
	if o.PlotFile != "" && !strings.HasSuffix(strings.ToLower(o.PlotFile), ".png") {
		return fmt.Errorf("--plot %q: want a .png file name", o.PlotFile)
	}
	o.Config.Budget = o.Budget
	ds, err := sampling.LoadAllExamples(o.Config, o.Seed)
	if err != nil {
		return err
	}
	cfg := o.Config.WithDefaults()
	var bk *sampling.Buckets
	if cfg.BucketBatchFile != "" {
		if bk, err = sampling.ReadBucketFile(cfg.BucketBatchFile, ds.TwoD, ds.MaxLen); err != nil {
			return err
		}
	} else {
		bk = sampling.EstimateBuckets(ds, cfg.Buckets, cfg.Buckets2, cfg.BoundarySample, o.Seed)
	}
	planner, err := sampling.NewPlanner(ds, bk, o.Budget, cfg.QuadraticQ, cfg.MaxExamples)
	if err != nil {
		return err
	}
	plan, err := planner.Plan(o.Seed, 0, o.DP)
	if err != nil {
		return err
	}
	naive := sampling.NaiveStats(ds, o.Budget, cfg.QuadraticQ, o.Seed)
	bucket := sampling.PlanStats(planner, plan)
	pack := sampling.PackStats(ds, ds.MaxLen, max(1, o.Budget/ds.MaxLen))
	hist := sampling.LengthHistogram(ds, o.Bins)

	lens := ds.Lengths()
	total := ds.Tokens()
	fmt.Fprintf(w, "data %s: %d documents -> %d examples (max %d positions; %d split, %d truncated, %d dropped), %d tokens, mean length %.1f\n",
		ds.Name, ds.Docs, ds.NumExamples(), ds.MaxLen, ds.Split, ds.Truncated, ds.Dropped, total, float64(total)/float64(len(lens)))
	fmt.Fprintf(w, "\nlength histogram (positions per example)\n")
	maxCount := 0
	for _, c := range hist.Counts {
		maxCount = max(maxCount, c)
	}
	for i, c := range hist.Counts {
		bar := strings.Repeat("#", int(math.Round(40*float64(c)/float64(max(1, maxCount)))))
		fmt.Fprintf(w, "  %5d-%-5d %7d  %5.1f%% of tokens  %s\n", i*hist.Width+1, (i+1)*hist.Width, c,
			100*float64(hist.Tokens[i])/float64(max(1, total)), bar)
	}
	fmt.Fprintf(w, "\nbuckets: %d, upper bounds %v\n", bk.N(), bk.Upper)
	fmt.Fprintf(w, "\nbatching at a budget of %d tokens per batch (count × longest", o.Budget)
	if cfg.QuadraticQ > 0 {
		fmt.Fprintf(w, " × (1 + longest/%g)", cfg.QuadraticQ)
	}
	fmt.Fprintf(w, "); naive = %d examples per batch; bucket plan for %d DP rank(s)\n", max(1, int(float64(o.Budget)/(float64(ds.MaxLen)*(1+quadTerm(ds.MaxLen, cfg.QuadraticQ))))), o.DP)
	for _, s := range []sampling.BatchStats{naive, bucket, pack} {
		fmt.Fprintf(w, "  %v\n", s)
	}
	fmt.Fprintf(w, "  bucket/naive: %.2f× examples per batch, %.2f× tokens per batch, %.2f× fewer batches\n",
		bucket.MeanExamples()/naive.MeanExamples(), bucket.MeanTokens()/naive.MeanTokens(), float64(naive.Batches)/float64(bucket.Batches))
	if o.PlotFile != "" {
		if err := plotDataStats(o.PlotFile, ds.Name, hist, []sampling.BatchStats{naive, bucket, pack}); err != nil {
			return fmt.Errorf("--plot %s: %w", o.PlotFile, err)
		}
		fmt.Fprintf(w, "\nplot written to %s\n", o.PlotFile)
	}
	return nil
}

// quadTerm is the quadratic cost factor l/q of an example of length l (0: off).
func quadTerm(l int, q float64) float64 {
	if q <= 0 {
		return 0
	}
	return float64(l) / q
}

// plotDataStats draws the length histogram and the padding and examples per
// batch of each strategy side by side into a PNG.
func plotDataStats(file, name string, h sampling.Histogram, stats []sampling.BatchStats) error {
	hp := plot.New()
	hp.Title.Text = "Example lengths: " + name
	hp.X.Label.Text = "length (positions)"
	hp.Y.Label.Text = "examples"
	xys := make(plotter.XYs, len(h.Counts))
	for i, c := range h.Counts {
		xys[i] = plotter.XY{X: (float64(i) + 0.5) * float64(h.Width), Y: float64(c)}
	}
	hg, err := plotter.NewHistogram(xys, len(h.Counts))
	if err != nil {
		return err
	}
	hp.Add(hg)

	pp := plot.New()
	pp.Title.Text = "Padding at equal token budget"
	pp.Y.Label.Text = "padding (% of batch tokens)"
	names := make([]string, len(stats))
	pad := make(plotter.Values, len(stats))
	for i, s := range stats {
		names[i] = fmt.Sprintf("%s: %.1f%%\n%.1f examples/batch", s.Strategy, 100*s.Padding(), s.MeanExamples())
		pad[i] = 100 * s.Padding()
	}
	bars, err := plotter.NewBarChart(pad, vg.Points(40))
	if err != nil {
		return err
	}
	bars.Color = color.Gray{Y: 110}
	bars.LineStyle.Width = 0
	pp.Add(bars)
	pp.NominalX(names...)
	pp.Y.Min = 0

	img := vgimg.New(11*vg.Inch, 4.5*vg.Inch)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Inch / 3, PadTop: vg.Inch / 8, PadBottom: vg.Inch / 8, PadLeft: vg.Inch / 8, PadRight: vg.Inch / 8}
	canvases := plot.Align([][]*plot.Plot{{hp, pp}}, tiles, dc)
	hp.Draw(canvases[0][0])
	pp.Draw(canvases[0][1])
	return atomicfile.WriteTo(file, vgimg.PngCanvas{Canvas: img}, 0o644)
}
