package main

import (
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/moetrain/moetrain/sampling"
)

// dataStatsOptions are the flags of `coordinator data-stats`.
type dataStatsOptions struct {
	cfg      sampling.Config
	budget   int
	dp, bins int
	seed     uint64
	plotFile string
}

func init() {
	o := dataStatsOptions{cfg: sampling.DefaultConfig()}
	cmd := &cobra.Command{
		Use:   "data-stats",
		Short: "Length histogram and padding of naive, bucketed and packed batching for a data set",
		Long: `data-stats reads a data set as training would (documents split or truncated at --max-len)
and prints its length histogram and, at one token budget per batch, how naive fixed-size random
batching, length bucketing and packing compare: padding fraction, mean examples and tokens per
batch, and the number of batches in an epoch.

--data is a text file, a directory, a .jsonl file, "embedded" (the default corpus) or
"synthetic:bimodal" / "synthetic:lognormal".`,
		Example: "  coordinator data-stats\n  coordinator data-stats --data corpus.jsonl --max-len 1024 --budget 8192 --plot stats.png",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDataStats(cmd.OutOrStdout(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.cfg.Path, "data", "embedded", "data: text file, directory, .jsonl, \"embedded\" or \"synthetic:bimodal\"/\"synthetic:lognormal\"")
	f.IntVar(&o.cfg.MaxLen, "max-len", 2048, "longest example in positions; longer documents are split or truncated")
	f.IntVar(&o.budget, "budget", 0, "tokens per batch, padding included (count × longest); 0 = 8 × max-len")
	f.IntVar(&o.cfg.Buckets, "buckets", o.cfg.Buckets, "number of length buckets (bounds at equal total tokens)")
	f.IntVar(&o.cfg.Buckets2, "buckets2", o.cfg.Buckets2, "second-level buckets by output length (two-length data)")
	f.Float64Var(&o.cfg.QuadraticQ, "quadratic-q", 0, "add len²/q to each example's cost (0 = off)")
	f.IntVar(&o.cfg.MaxExamples, "max-examples", 0, "cap on examples per batch (0 = none)")
	f.StringVar(&o.cfg.BucketBatchFile, "bucket-batch-file", "", "file of \"upper_len batch_size\" lines replacing the estimated buckets")
	f.StringVar(&o.cfg.TooLong, "too-long", sampling.TooLongSplit, "\"split\" or \"truncate\" documents longer than --max-len")
	f.StringVar(&o.cfg.TextField, "text-field", "text", "JSONL field holding the text")
	f.StringVar(&o.cfg.InputField, "input-field", "", "JSONL input text field (two-length data, with --output-field)")
	f.StringVar(&o.cfg.OutputField, "output-field", "", "JSONL output text field (two-length data)")
	f.StringVar(&o.cfg.InputLenField, "input-len-field", "", "JSONL input length field (two-length data given as lengths)")
	f.StringVar(&o.cfg.OutputLenField, "output-len-field", "", "JSONL output length field")
	f.IntVar(&o.dp, "dp", 1, "data-parallel ranks the bucketed plan is made for")
	f.IntVar(&o.bins, "bins", 16, "histogram bins")
	f.Uint64Var(&o.seed, "seed", 1, "seed of the shuffles and of the bucket-bound sample")
	f.StringVar(&o.plotFile, "plot", "", "write the histogram and the padding comparison to this PNG file")
	rootCmd.AddCommand(cmd)
}

func runDataStats(w io.Writer, o dataStatsOptions) error {
	if o.cfg.MaxLen <= 0 {
		return fmt.Errorf("--max-len %d: want > 0", o.cfg.MaxLen)
	}
	if o.budget == 0 {
		o.budget = 8 * o.cfg.MaxLen
	}
	if o.budget < 0 {
		return fmt.Errorf("--budget %d: want > 0", o.budget)
	}
	if o.dp <= 0 {
		return fmt.Errorf("--dp %d: want > 0", o.dp)
	}
	if o.bins <= 0 || o.bins > 1000 {
		return fmt.Errorf("--bins %d: want 1..1000", o.bins)
	}
	if o.plotFile != "" && !strings.HasSuffix(strings.ToLower(o.plotFile), ".png") {
		return fmt.Errorf("--plot %q: want a .png file name", o.plotFile)
	}
	o.cfg.Budget = o.budget
	ds, err := sampling.LoadAllExamples(o.cfg, o.seed)
	if err != nil {
		return err
	}
	cfg := o.cfg.WithDefaults()
	var bk *sampling.Buckets
	if cfg.BucketBatchFile != "" {
		if bk, err = sampling.ReadBucketFile(cfg.BucketBatchFile, ds.TwoD, ds.MaxLen); err != nil {
			return err
		}
	} else {
		bk = sampling.EstimateBuckets(ds, cfg.Buckets, cfg.Buckets2, cfg.BoundarySample, o.seed)
	}
	planner, err := sampling.NewPlanner(ds, bk, o.budget, cfg.QuadraticQ, cfg.MaxExamples)
	if err != nil {
		return err
	}
	plan, err := planner.Plan(o.seed, 0, o.dp)
	if err != nil {
		return err
	}
	naive := sampling.NaiveStats(ds, o.budget, cfg.QuadraticQ, o.seed)
	bucket := sampling.PlanStats(planner, plan)
	pack := sampling.PackStats(ds, ds.MaxLen, max(1, o.budget/ds.MaxLen))
	hist := sampling.LengthHistogram(ds, o.bins)

	lens := ds.Lengths()
	total := ds.Tokens()
	fmt.Fprintf(w, "data %s: %d documents -> %d examples (max %d positions; %d split, %d truncated, %d dropped), %d tokens, mean length %.1f\n",
		ds.Name, ds.Docs, len(ds.Examples), ds.MaxLen, ds.Split, ds.Truncated, ds.Dropped, total, float64(total)/float64(len(lens)))
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
	fmt.Fprintf(w, "\nbatching at a budget of %d tokens per batch (count × longest", o.budget)
	if cfg.QuadraticQ > 0 {
		fmt.Fprintf(w, " × (1 + longest/%g)", cfg.QuadraticQ)
	}
	fmt.Fprintf(w, "); naive = %d examples per batch; bucket plan for %d DP rank(s)\n", max(1, int(float64(o.budget)/(float64(ds.MaxLen)*(1+quadTerm(ds.MaxLen, cfg.QuadraticQ))))), o.dp)
	for _, s := range []sampling.BatchStats{naive, bucket, pack} {
		fmt.Fprintf(w, "  %v\n", s)
	}
	fmt.Fprintf(w, "  bucket/naive: %.2f× examples per batch, %.2f× tokens per batch, %.2f× fewer batches\n",
		bucket.MeanExamples()/naive.MeanExamples(), bucket.MeanTokens()/naive.MeanTokens(), float64(naive.Batches)/float64(bucket.Batches))
	if o.plotFile != "" {
		if err := plotDataStats(o.plotFile, ds.Name, hist, []sampling.BatchStats{naive, bucket, pack}); err != nil {
			return fmt.Errorf("--plot %s: %w", o.plotFile, err)
		}
		fmt.Fprintf(w, "\nplot written to %s\n", o.plotFile)
	}
	return nil
}

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
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
