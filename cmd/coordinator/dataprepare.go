package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/moetrain/moetrain/sampling/tokshard"
)

// dataCmd groups the data subcommands (`coordinator data prepare`).
var dataCmd = &cobra.Command{
	Use:   "data",
	Short: "Prepare data sets for training",
}

func init() {
	var o tokshard.PrepareOptions
	var tokenizer string
	cmd := &cobra.Command{
		Use:   "prepare",
		Short: "Tokenize text into memory-mappable token shards plus an index (docs/dataset-format.md)",
		Long: `prepare streams --data (a directory tree, a text file, or JSONL, optionally .gz or .zst
compressed) through the tokenizer, on all cores, into token shards plus an index in --out, never
holding the corpus in memory; progress goes to stderr. Empty files, binary files (a NUL byte, or more than 30% of bytes in invalid
UTF-8) and other non-UTF-8 files are skipped; the summary counts them by reason, is printed and
is written to --out/prepare-summary.json.`,
		Example: "  coordinator data prepare --data /usr/lib/python3.11 --out data/py\n  coordinator data prepare --data corpus.jsonl.zst --out data/corpus",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.Data == "" || o.Out == "" {
				return fmt.Errorf("data prepare: --data and --out are required")
			}
			tk, err := tokshard.TokenizerByName(tokenizer)
			if err != nil {
				return err
			}
			o.Tokenizer = tk
			o.Progress = os.Stderr
			s, err := tokshard.Prepare(o)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), s.Line())
			const listed = 20
			for i, sk := range s.Skipped {
				if i == listed {
					fmt.Fprintf(cmd.OutOrStdout(), "  ... counts by reason and up to %d skips by name in %s\n", tokshard.MaxListed, filepath.Join(o.Out, tokshard.SummaryFile))
					break
				}
				fmt.Fprintf(cmd.OutOrStdout(), "  skipped %s: %s (%s)\n", sk.Path, sk.Reason, sk.Detail)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Data, "data", "", "input: directory, text file, .jsonl/.json, .jsonl.gz or .jsonl.zst")
	f.StringVar(&o.Out, "out", "", "output directory (must not already hold a dataset)")
	f.StringVar(&o.TextField, "text-field", "text", "JSONL field holding the text")
	f.StringVar(&tokenizer, "tokenizer", "byte", "tokenizer: byte, or the path of a byte-level BPE tokenizer.json (docs/tokenizer.md); data.tokenizer must then be the same")
	f.Int64Var(&o.ShardTokens, "shard-tokens", tokshard.DefaultShardTokens, "target tokens per shard file")
	f.IntVar(&o.Workers, "workers", 0, "tokenizing goroutines: 0 = one per CPU, 1 = serial (same output either way)")
	dataCmd.AddCommand(cmd)
	rootCmd.AddCommand(dataCmd)
}
