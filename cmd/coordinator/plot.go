package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/moetrain/moetrain/runplot"
)

func init() {
	var out string
	cmd := &cobra.Command{
		Use:   "plot RUN_DIR [--out DIR]",
		Short: "Write PNG plots of a run directory: loss, validation, throughput, expert load",
		Long: `plot reads a run directory written by coordinator launch (summary.json, and the worker
logs when the summary holds no expert load) and writes, into --out (default RUN_DIR):

  ` + runplot.LossFile + `            training and validation loss against the step
  ` + runplot.ThroughputFile + `      the job's tokens/s against the step
  ` + runplot.ExpertLoadFile + `     one heatmap per MoE layer: each expert's load over its layer's
                       mean (1 = balanced) at every logged step (train.log_every)
  ` + runplot.ExpertBalanceFile + `  the largest expert's load over the mean, one line per layer

launch writes the same files into the run directory when the run ends.`,
		Example: "  coordinator plot runs/20260101-120000\n  coordinator plot runs/try1 --out /tmp/plots",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runPlot(cmd.OutOrStdout(), args[0], out)
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "directory for the PNGs (default RUN_DIR)")
	rootCmd.AddCommand(cmd)
}

func runPlot(w io.Writer, runDir, out string) error {
	files, err := runplot.WriteDir(runDir, out)
	if err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	for _, f := range files {
		fmt.Fprintln(w, f)
	}
	if len(files) < 4 {
		fmt.Fprintln(w, "(no throughput or expert load recorded in this run: those plots are left out)")
	}
	return nil
}

// plotRun draws the plots of a finished launch into its run directory; a
// failure is logged, not returned (the run itself is what matters).
func plotRun(runDir string, lg zerolog.Logger) {
	if _, err := os.Stat(filepath.Join(runDir, "summary.json")); err != nil {
		return // the launch failed before the job started
	}
	files, err := runplot.WriteDir(runDir, "")
	if err != nil {
		lg.Warn().Err(err).Str("run_dir", runDir).Msg("plots not written")
		return
	}
	lg.Info().Strs("files", files).Msg("plots written")
	fmt.Fprintf(os.Stderr, "%d plots in %s\n", len(files), runDir)
}
