package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/moetrain/moetrain/parallel/sp"
	"github.com/moetrain/moetrain/rankbench"
)

// benchAttentionFlags are the flags of `bench attention`.
type benchAttentionFlags struct {
	sp, seq, batch, heads, headDim int
	linkBW                         string
	linkLatency                    time.Duration
	iters, warmup, threads         int
	timeout                        time.Duration
}

func newBenchAttentionCmd() *cobra.Command {
	f := &benchAttentionFlags{}
	cmd := &cobra.Command{
		Use:   "attention",
		Short: "time sequence-parallel attention (ring, tokenring) forward+backward against compute-only",
		Long: `Runs --sp ranks as goroutines of this process over the in-process transport; with --link-bw
every link direction (a full mesh: each ordered pair of ranks has its own link) is shaped to that
bandwidth and --link-latency. Each iteration times, for compute-only, ring and tokenring in turn, a
forward pass and then a backward pass of causal attention over --seq tokens split zigzag over the
ranks: the wall time from a common start of all ranks to the end of the slowest. compute-only is
TokenRing's per-rank kernel calls and merges without any message (the same local work as both
algorithms): the time communication could at best hide behind. Medians of --iters are reported.
The ranks' kernels share the process's cores: the kernel thread budget (--threads, default
max(1, GOMAXPROCS/sp)) is one for the whole process. --link-bw takes a comma-separated list for
one table per bandwidth.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			bws, err := f.validate()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
			defer cancel()
			return sp.WriteBenchReport(ctx, cmd.OutOrStdout(), sp.BenchConfig{SP: f.sp, SeqLen: f.seq, Batch: f.batch,
				Heads: f.heads, HeadDim: f.headDim, LinkLatency: f.linkLatency, Iters: f.iters, Warmup: f.warmup,
				Threads: f.threads, Timeout: f.timeout}, bws)
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&f.sp, "sp", 4, "sequence-parallel ranks (goroutines)")
	fl.IntVar(&f.seq, "seq", 4096, "sequence length in tokens (a multiple of 2·sp)")
	fl.IntVar(&f.batch, "batch", 1, "sequences per pass")
	fl.IntVar(&f.heads, "heads", 8, "attention heads")
	fl.IntVar(&f.headDim, "head-dim", 64, "size of one head")
	fl.StringVar(&f.linkBW, "link-bw", "", "per-direction link bandwidth, e.g. 1GB/s, 500MB/s, 1GiB/s; a comma-separated list gives one table each; empty or 0: unshaped")
	fl.DurationVar(&f.linkLatency, "link-latency", 20*time.Microsecond, "one-way latency of every link (with --link-bw)")
	fl.IntVar(&f.iters, "iters", 5, "timed iterations (median reported)")
	fl.IntVar(&f.warmup, "warmup", 1, "untimed iterations first")
	fl.IntVar(&f.threads, "threads", 0, "kernel thread budget of the process, shared by the ranks (0: max(1, GOMAXPROCS/sp))")
	fl.DurationVar(&f.timeout, "timeout", 10*time.Minute, "give up after this long")
	return cmd
}

func (f *benchAttentionFlags) validate() ([]float64, error) {
	if f.sp < 1 || f.sp > 64 {
		return nil, fmt.Errorf("--sp %d: want 1..64", f.sp)
	}
	if f.seq <= 0 || f.seq%(2*f.sp) != 0 {
		return nil, fmt.Errorf("--seq %d: want a positive multiple of 2·sp = %d", f.seq, 2*f.sp)
	}
	if f.batch < 1 || f.heads < 1 || f.headDim < 1 {
		return nil, fmt.Errorf("--batch %d, --heads %d, --head-dim %d: each must be ≥ 1", f.batch, f.heads, f.headDim)
	}
	if f.iters < 1 || f.warmup < 0 || f.threads < 0 {
		return nil, fmt.Errorf("--iters %d must be ≥ 1, --warmup %d and --threads %d ≥ 0", f.iters, f.warmup, f.threads)
	}
	if f.linkLatency < 0 || f.timeout <= 0 {
		return nil, fmt.Errorf("--link-latency %v must be ≥ 0 and --timeout %v > 0", f.linkLatency, f.timeout)
	}
	var bws []float64
	for _, s := range strings.Split(f.linkBW, ",") {
		s = strings.TrimSpace(s)
		if s == "" || s == "0" {
			bws = append(bws, 0)
			continue
		}
		bw, err := rankbench.ParseBandwidth(s)
		if err != nil {
			return nil, fmt.Errorf("--link-bw: %w", err)
		}
		bws = append(bws, bw)
	}
	return bws, nil
}

// benchParent (bench_collectives.go) finds or creates the shared `bench`
// command, so the two files register in either init order.
func init() {
	benchParent().AddCommand(newBenchAttentionCmd())
}
