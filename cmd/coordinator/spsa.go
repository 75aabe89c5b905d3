package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/sampling"
	"github.com/moetrain/moetrain/spsa"
	"github.com/moetrain/moetrain/tensor"
	"github.com/moetrain/moetrain/train"
)

// spsaOptions are the flags of `coordinator spsa-worker`.
type spsaOptions struct {
	checkpoint, data, addrs, token, logPath, curve string
	replay                                         string
	rank, steps, evalEvery, evalBatches, batch     int
	seqLen, threads                                int
	cfg                                            spsa.Config
}

func init() {
	o := spsaOptions{cfg: spsa.DefaultConfig()}
	cmd := &cobra.Command{
		Use:   "spsa-worker --checkpoint REF --data PATH --rank R --addrs A0,A1,... [flags]",
		Short: "Run one worker of SPSA zeroth-order fine-tuning (experiment entry point)",
		Long: `spsa-worker is one replica of one-byte SPSA fine-tuning (docs/algorithms/spsa.md) over a
TCP mesh of the listed data-plane addresses; start one per address. It loads the model weights
of --checkpoint with the job configuration its manifest records, trains on its share of --data
(this rank's sampler stream), and exchanges only the quantized projected gradients. Rank 0
keeps the log of (step, worker, direction, gradient) records (--log), evaluates on --data's
validation batches and writes the curve as JSON lines (--curve). For a job under coordinator
launch, serve or worker --join, set train.mode = "spsa" and spsa.init_from in the job file instead.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signalContext()
			defer stop()
			return runSPSAWorker(ctx, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.checkpoint, "checkpoint", "", "checkpoint to fine-tune (step dir, DIR, DIR:latest, DIR:STEP)")
	f.StringVar(&o.data, "data", "", "fine-tuning data (data.path syntax)")
	f.StringVar(&o.addrs, "addrs", "", "comma-separated data-plane address of every rank")
	f.StringVar(&o.token, "token", "spsa", "job token shared by the ranks")
	f.IntVar(&o.rank, "rank", 0, "this worker's rank (its identifier is rank+1)")
	f.IntVar(&o.steps, "steps", 100, "SPSA steps")
	f.IntVar(&o.evalEvery, "eval-every", 50, "rank 0 validates every N steps (and at the start and end)")
	f.IntVar(&o.evalBatches, "eval-batches", 8, "validation batches")
	f.IntVar(&o.batch, "batch-size", 0, "override data.batch_size (rows per worker per step)")
	f.IntVar(&o.seqLen, "seq-len", 0, "override data.seq_len")
	f.IntVar(&o.threads, "threads", 1, "kernel threads")
	f.StringVar(&o.logPath, "log", "", "rank 0: the SPSA log file to create")
	f.StringVar(&o.curve, "curve", "", "rank 0: JSON-lines curve output")
	f.StringVar(&o.replay, "replay", "", "instead of training, replay --steps steps of this log onto the checkpoint and print the parameters' checksum and validation loss")
	f.Float64Var(&o.cfg.Epsilon, "epsilon", o.cfg.Epsilon, "spsa.epsilon")
	f.Float64Var(&o.cfg.LR, "lr", o.cfg.LR, "spsa.lr")
	f.IntVar(&o.cfg.Directions, "directions", o.cfg.Directions, "spsa.directions")
	f.StringVar(&o.cfg.Quant, "quant", o.cfg.Quant, "spsa.quant (int8 or fp32)")
	f.Float64Var(&o.cfg.Clip, "clip", o.cfg.Clip, "spsa.clip")
	f.Uint64Var(&o.cfg.Seed, "seed", o.cfg.Seed, "spsa.seed")
	rootCmd.AddCommand(cmd)
}

func runSPSAWorker(ctx context.Context, o spsaOptions) error {
	addrs := strings.Split(o.addrs, ",")
	if o.addrs == "" || o.rank < 0 || o.rank >= len(addrs) {
		return fmt.Errorf("spsa-worker: --rank %d with %d --addrs", o.rank, len(addrs))
	}
	tensor.SetThreads(o.threads)
	c, _, err := train.OpenRef(nil, o.checkpoint)
	if err != nil {
		return err
	}
	defer c.Close()
	job := train.DefaultJobConfig()
	if err := json.Unmarshal(c.Manifest.Config, &job); err != nil {
		return fmt.Errorf("checkpoint %s: job configuration: %w", c.Dir, err)
	}
	job.Data.Path = o.data
	if o.batch > 0 {
		job.Data.BatchSize = o.batch
	}
	if o.seqLen > 0 {
		job.Data.SeqLen = o.seqLen
	}
	data, err := sampling.Open(job.DataConfig(), job.Train.Seed)
	if err != nil {
		return err
	}
	sampler, err := data.Sampler(o.rank, len(addrs))
	if err != nil {
		return err
	}
	m, err := model.New(job.Model, job.Train.Seed)
	if err != nil {
		return err
	}
	if err := spsa.LoadWeights(c, m); err != nil {
		return err
	}
	// The gradient buffer, unused without a backward, holds the step's
	// unperturbed parameters.
	w, err := spsa.NewWorker(o.cfg, uint32(o.rank+1), m.Params, m.Grads, 0, o.threads)
	if err != nil {
		return err
	}
	if o.replay != "" { // a joiner's catch-up, then validation at the replayed step
		_, recs, err := spsa.ReadLog(o.replay)
		if err != nil {
			return err
		}
		val, err := data.ValBatches(o.evalBatches)
		if err == nil {
			err = w.Replay(recs, min(int64(o.steps), int64(len(recs))))
		}
		if err != nil {
			return err
		}
		v, err := spsa.EvalCE(m, val)
		fmt.Printf("replayed %d steps: parameters crc32c %08x, val %.4f\n", w.Step(), spsa.Checksum(m.Params), v)
		return err
	}
	ft := &spsa.FineTune{Model: m, Worker: w, Sampler: sampler, EvalEvery: o.evalEvery}
	if o.rank == 0 {
		if ft.Val, err = data.ValBatches(o.evalBatches); err != nil {
			return err
		}
		if o.logPath != "" {
			if ft.Log, err = spsa.CreateLogFrom(o.logPath, o.cfg, spsa.Checksum(m.Params)); err != nil {
				return err
			}
			defer ft.Log.Close()
		}
		if o.curve != "" {
			out, err := os.Create(o.curve)
			if err != nil {
				return err
			}
			defer out.Close()
			enc := json.NewEncoder(out)
			ft.OnPoint = func(p spsa.Point) {
				if p.ValLoss != 0 || p.Step%10 == 0 {
					_ = enc.Encode(p)
				}
				if p.ValLoss != 0 {
					fmt.Printf("step %d val %.4f wire %d B train %.1fs\n", p.Step, p.ValLoss, p.WireBytes, p.TrainSeconds)
				}
			}
		}
	}
	ln, err := collective.Listen(addrs[o.rank])
	if err != nil {
		return err
	}
	defer ln.Close()
	dctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	tr, err := collective.DialMesh(dctx, ln, collective.TCPConfig{Rank: o.rank, Addrs: addrs, Token: o.token})
	if err != nil {
		return err
	}
	ids := make([]uint32, len(addrs))
	for i := range ids {
		ids[i] = uint32(i + 1)
	}
	ex, err := spsa.NewCommExchange(tr, ids)
	if err != nil {
		return err
	}
	defer ex.Close()
	ft.Exchange = ex
	if err := ft.Run(ctx, o.steps); err != nil {
		return err
	}
	fmt.Printf("rank %d: %d steps, %d bytes sent in %d frames; parameters crc32c %08x; %s\n", o.rank, o.steps, ex.WireBytes(), ex.Frames(), spsa.Checksum(m.Params), peakRSS())
	return nil
}

// peakRSS is the process's VmHWM line from /proc (Linux), else "".
func peakRSS() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			return strings.Join(strings.Fields(l), " ")
		}
	}
	return ""
}
