package main

import (
	"fmt"
	"iter"
	"time"

	"github.com/spf13/cobra"

	"github.com/moetrain/moetrain/sampling"
	"github.com/moetrain/moetrain/tokenizer"
)

// tokenizerCmd groups the tokenizer subcommands (`coordinator tokenizer train`).
var tokenizerCmd = &cobra.Command{
	Use:   "tokenizer",
	Short: "Train byte-level BPE tokenizers (docs/tokenizer.md)",
}

func init() {
	var (
		data, out, field string
		vocab            int
		valFraction      float64
		special          []string
		seed             uint64
	)
	cmd := &cobra.Command{
		Use:   "train",
		Short: "Train a byte-level BPE tokenizer and write it as a Hugging Face tokenizer.json",
		Long: `train learns a GPT-2-style byte-level BPE of --vocab tokens (256 bytes, then merges) from
the training documents of --data, leaving out the documents a job holds out for validation: for
the embedded corpus its fixed held-out files, for other data the data.val_fraction share chosen
by train.seed (--val-fraction and --seed must match the job's for that). The result is written
atomically to --out; set data.tokenizer to that path and model.vocab to the vocabulary printed.`,
		Example: "  coordinator tokenizer train --vocab 4096 --out tok4096.json\n  coordinator tokenizer train --data corpus.jsonl --vocab 8192 --out tok.json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return fmt.Errorf("tokenizer train: --out is required")
			}
			dc := sampling.DefaultConfig()
			dc.Path, dc.ValFraction, dc.TextField = data, valFraction, field
			d, err := sampling.Open(dc, seed)
			if err != nil {
				return fmt.Errorf("tokenizer train: %w", err)
			}
			defer d.Close()
			corpus := d.Corpus
			if corpus == nil {
				return fmt.Errorf("tokenizer train: --data %s is a prepared dataset (tokens); train on its text", data)
			}
			start := time.Now()
			bpe, st, err := tokenizer.Train(documentTexts(corpus.Train), tokenizer.TrainOptions{VocabSize: vocab, Special: special})
			if err != nil {
				return fmt.Errorf("tokenizer train: %w", err)
			}
			elapsed := time.Since(start)
			if err := bpe.WriteFile(out); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "trained on %s: %d documents, %d bytes, %d words (%d distinct)\n", corpus.Name, len(corpus.Train), st.Bytes, st.Words, st.Distinct)
			fmt.Fprintf(w, "%d merges, vocabulary %d (fingerprint %s) in %.2fs (%.2f MB/s); wrote %s\n",
				st.Merges, bpe.VocabSize(), bpe.Fingerprint(), elapsed.Seconds(), float64(st.Bytes)/1e6/elapsed.Seconds(), out)
			if bpe.VocabSize() < vocab {
				fmt.Fprintf(w, "note: stopped at %d tokens: no pair occurs twice any more\n", bpe.VocabSize())
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&data, "data", "", `training text as data.path takes it ("" or "embedded" = the embedded corpus)`)
	f.StringVar(&out, "out", "", "tokenizer.json to write")
	f.IntVar(&vocab, "vocab", 4096, "vocabulary size (256 byte tokens + merges)")
	f.StringSliceVar(&special, "special", nil, "special tokens to add after the merges (counted in --vocab), e.g. \"<|endoftext|>\"")
	f.StringVar(&field, "text-field", "text", "JSONL field holding the text, as data.text_field")
	f.Float64Var(&valFraction, "val-fraction", 0.05, "share of documents held out, as data.val_fraction (not the embedded corpus)")
	f.Uint64Var(&seed, "seed", 1, "train.seed choosing the held-out documents (not the embedded corpus)")
	tokenizerCmd.AddCommand(cmd)
	rootCmd.AddCommand(tokenizerCmd)
}

// documentTexts yields each document's bytes (documents hold byte tokens).
func documentTexts(docs []sampling.Document) iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		for _, d := range docs {
			if !yield(sampling.ByteDetokenize(d.Tokens)) {
				return
			}
		}
	}
}
