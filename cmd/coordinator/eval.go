package main

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/train"
)

func init() {
	var o train.EvalOptions
	var verbose bool
	cmd := &cobra.Command{
		Use:   "eval --checkpoint PATH|DIR[:latest|:STEP] [--data PATH] [--device cpu|cuda] [--batches N]",
		Short: "Print a checkpoint's loss and bits per byte on a data set's validation batches",
		Long: `eval loads a checkpoint (whatever parallel layout wrote it; every checksum is verified)
with the job configuration its manifest records, builds the whole model on one rank, and
prints the mean cross-entropy (nats per target token) and the bits per byte (total nats /
(ln 2 × the bytes the target tokens decode to), with the job's data.tokenizer; cross-entropy /
ln 2 for the byte tokenizer) over validation batches of the data.

The batches are those a run of the job validates on: the held-out documents of --data
(data.val_fraction of a file, directory or JSONL, chosen by train.seed; the embedded
corpus has its own held-out part) cut in the job's data.mode, seq_len and batch_size;
--batches of them (default the job's train.eval_batches). Without --data the job's own
data is used, and the loss equals the validation loss the run logged at that step.

--checkpoint is a step directory (DIR/step-000200), a checkpoint directory (its newest
intact checkpoint, falling back past damaged ones and saying so), or DIR:latest / DIR:STEP.
--device cuda runs on one GPU in the job's train.precision; the CPU runs fp32.`,
		Example: "  coordinator eval --checkpoint ckpt\n" +
			"  coordinator eval --checkpoint ckpt:200 --data corpus.jsonl --batches 32\n" +
			"  coordinator eval --checkpoint ckpt/step-000200 --device cuda",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.Checkpoint == "" {
				return errors.New("eval: --checkpoint is required (a step directory, a checkpoint directory or DIR:STEP)")
			}
			lvl := zerolog.WarnLevel
			if verbose {
				lvl = zerolog.DebugLevel
			}
			lg, closer, err := cluster.NewLogger(cluster.LogOptions{Console: os.Stderr, Level: lvl})
			if err != nil {
				return err
			}
			defer closer.Close()
			o.Log = lg
			res, err := train.EvaluateCheckpoint(o)
			if err != nil {
				return err
			}
			printEval(cmd.OutOrStdout(), cmd.ErrOrStderr(), res)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Checkpoint, "checkpoint", "", "step directory, checkpoint directory, or DIR:latest / DIR:STEP (required)")
	f.StringVar(&o.Data, "data", "", "data to evaluate on, as data.path takes it (default: the job's data)")
	f.StringVar(&o.Device, "device", train.DeviceCPU, "cpu or cuda")
	f.IntVar(&o.Batches, "batches", 0, "validation batches (0 = the job's train.eval_batches)")
	f.IntVar(&o.Threads, "threads", 0, "kernel threads (0 = all cores)")
	f.BoolVarP(&verbose, "verbose", "v", false, "debug output")
	rootCmd.AddCommand(cmd)
}

func printEval(stdout, stderr io.Writer, r train.EvalResult) {
	if r.Report != nil && len(r.Report.Skipped) > 0 {
		fmt.Fprintf(stderr, "warning: newer checkpoints are damaged; evaluating the newest intact one: %s\n", r.Report)
	}
	fmt.Fprintf(stdout, "checkpoint %s (step %d) on %s: %d %s-mode validation batches, %d target tokens (%d bytes), %s\n",
		r.Dir, r.Step, r.Data, r.Batches, r.Mode, r.Targets, r.TargetBytes, r.Device)
	bpb := "-"
	if !math.IsNaN(r.BitsPerByte) {
		bpb = fmt.Sprintf("%.6f", r.BitsPerByte)
	}
	fmt.Fprintf(stdout, "loss %.9f nats/token  bits per byte %s\n", r.Loss, bpb)
}
