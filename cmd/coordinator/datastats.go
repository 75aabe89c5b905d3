package main

import (
	"github.com/spf13/cobra"

	"github.com/moetrain/moetrain/datastats"
	"github.com/moetrain/moetrain/sampling"
)

func init() {
	o := datastats.Options{Config: sampling.DefaultConfig()}
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
			return datastats.Report(cmd.OutOrStdout(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Config.Path, "data", "embedded", "data: text file, directory, .jsonl, \"embedded\" or \"synthetic:bimodal\"/\"synthetic:lognormal\"")
	f.IntVar(&o.Config.MaxLen, "max-len", 2048, "longest example in positions; longer documents are split or truncated")
	f.IntVar(&o.Budget, "budget", 0, "tokens per batch, padding included (count × longest); 0 = 8 × max-len")
	f.IntVar(&o.Config.Buckets, "buckets", o.Config.Buckets, "number of length buckets (bounds at equal total tokens)")
	f.IntVar(&o.Config.Buckets2, "buckets2", o.Config.Buckets2, "second-level buckets by output length (two-length data)")
	f.Float64Var(&o.Config.QuadraticQ, "quadratic-q", 0, "add len²/q to each example's cost (0 = off)")
	f.IntVar(&o.Config.MaxExamples, "max-examples", 0, "cap on examples per batch (0 = none)")
	f.StringVar(&o.Config.BucketBatchFile, "bucket-batch-file", "", "file of \"upper_len batch_size\" lines replacing the estimated buckets")
	f.StringVar(&o.Config.TooLong, "too-long", sampling.TooLongSplit, "\"split\" or \"truncate\" documents longer than --max-len")
	f.StringVar(&o.Config.TextField, "text-field", "text", "JSONL field holding the text")
	f.StringVar(&o.Config.InputField, "input-field", "", "JSONL input text field (two-length data, with --output-field)")
	f.StringVar(&o.Config.OutputField, "output-field", "", "JSONL output text field (two-length data)")
	f.StringVar(&o.Config.InputLenField, "input-len-field", "", "JSONL input length field (two-length data given as lengths)")
	f.StringVar(&o.Config.OutputLenField, "output-len-field", "", "JSONL output length field")
	f.IntVar(&o.DP, "dp", 1, "data-parallel ranks the bucketed plan is made for")
	f.IntVar(&o.Bins, "bins", 16, "histogram bins")
	f.Uint64Var(&o.Seed, "seed", 1, "seed of the shuffles and of the bucket-bound sample")
	f.StringVar(&o.PlotFile, "plot", "", "write the histogram and the padding comparison to this PNG file")
	rootCmd.AddCommand(cmd)
}
