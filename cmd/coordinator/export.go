package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/moetrain/moetrain/checkpoint"
	"github.com/moetrain/moetrain/train"
)

// exportOptions are the flags of `coordinator export`.
type exportOptions struct {
	checkpoint string
	out        string
	force      bool
}

func init() {
	var o exportOptions
	cmd := &cobra.Command{
		Use:   "export --checkpoint PATH|DIR[:latest|:STEP] --out model.safetensors",
		Short: "Write a checkpoint's consolidated model weights as a safetensors file",
		Long: `export reads a checkpoint (whatever parallel layout wrote it), verifies every checksum,
assembles each model tensor whole and writes them to one safetensors file (dtype F32,
little-endian, row-major), atomically.

--checkpoint is a step directory (DIR/step-000200, holding manifest.json), a checkpoint
directory (its newest intact checkpoint, falling back past damaged ones and saying so),
or DIR:latest / DIR:STEP.

Tensor names are the model layout's, with these shapes (matrices are [out, in]: y = x·Wᵀ):

  tok_emb              [vocab, d_model]          token embedding
  pos_emb              [seq_len, d_model]        learned position embedding
  layers.N.ln1         [d_model]                 RMSNorm weight before attention
  layers.N.qkv         [3, d_model, d_model]     q, k, v (each [d_model, d_model])
  layers.N.proj        [d_model, d_model]        attention output projection
  layers.N.ln2         [d_model]                 RMSNorm weight before the MoE
  layers.N.router      [experts, d_model]        router logits
  layers.N.w1          [experts, expert_hidden, d_model]
  layers.N.w2          [experts, d_model, expert_hidden]
  ln_f                 [d_model]                 final RMSNorm weight
  lm_head              [vocab, d_model]          output projection

for N = 0 .. layers-1. The optimizer moments are not exported. "__metadata__" holds
"format": "pt", "step", "source" (the step directory) and "moetrain.config" (the job
configuration as JSON, when the checkpoint records it).`,
		Example: "  coordinator export --checkpoint ckpt --out model.safetensors\n" +
			"  coordinator export --checkpoint ckpt:1200 --out model-1200.safetensors\n" +
			"  coordinator export --checkpoint ckpt/step-001200 --out model.safetensors",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runExport(cmd.OutOrStdout(), cmd.ErrOrStderr(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.checkpoint, "checkpoint", "", "step directory, checkpoint directory, or DIR:latest / DIR:STEP (required)")
	f.StringVar(&o.out, "out", "", "safetensors file to write (required)")
	f.BoolVar(&o.force, "force", false, "overwrite --out if it exists")
	rootCmd.AddCommand(cmd)
}

func runExport(stdout, stderr io.Writer, o exportOptions) error {
	if o.checkpoint == "" {
		return errors.New("export: --checkpoint is required (a step directory, a checkpoint directory or DIR:STEP)")
	}
	if o.out == "" {
		return errors.New("export: --out is required (the safetensors file to write)")
	}
	if fi, err := os.Stat(o.out); err == nil {
		if fi.IsDir() {
			return fmt.Errorf("export: --out %s is a directory; give a file name such as %s", o.out, filepath.Join(o.out, "model.safetensors"))
		}
		if !o.force {
			return fmt.Errorf("export: --out %s exists (use --force to overwrite)", o.out)
		}
	}
	if fi, err := os.Stat(filepath.Dir(o.out)); err != nil || !fi.IsDir() {
		return fmt.Errorf("export: --out %s: directory %s does not exist", o.out, filepath.Dir(o.out))
	}
	c, rep, err := train.OpenRef(nil, o.checkpoint)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	defer c.Close()
	if rep != nil && len(rep.Skipped) > 0 {
		fmt.Fprintf(stderr, "warning: newer checkpoints are damaged; exporting the newest intact one: %s\n", rep)
	}
	meta := map[string]string{"source": c.Dir}
	if len(c.Manifest.Config) > 0 {
		meta["moetrain.config"] = string(c.Manifest.Config)
	}
	names, err := checkpoint.ExportSafetensors(c, o.out, checkpoint.ExportOptions{Metadata: meta})
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	fmt.Fprintf(stdout, "exported %d tensors of step %d from %s to %s\n", len(names), c.Step(), c.Dir, o.out)
	return nil
}
