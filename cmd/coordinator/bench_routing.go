package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/moetrain/moetrain/rankbench"
)

// defaultRoutingSkew and defaultRoutingBiasRate were picked by measuring on
// the reference model (softmax router, 8 experts). At ep = 4, k = 4, over
// the first 2 steps of dropless top-k, skew 0 gives IS 1.11 and EP-rank
// max/mean 1.53 (the untrained router is already uneven), 0.05 gives
// 1.60 / 1.91, 0.1 gives 1.725 / 1.999, 0.2 and 1.0 both 1.726 / 2.000:
// rank 0's E/ep = 2 experts are then in every token's top 4, half of all
// slots (top-k cannot send more to one rank). Training sharpens the scores,
// though: at ep = 2 (k = 2) a skew of 0.2 fell from IS 1.99 to 0.38 within
// 23 steps without any balancing, while 0.5 stayed at 2.00 throughout.
const defaultRoutingSkew = 0.5

// defaultRoutingBiasRate is γ of topk+bias. Sign updates close the skew's
// gap by up to 2γ a step, so 0.02 undoes 0.5 in about 12 steps (ep = 2: IS
// 2.00 → 0.85 over the 23 steps; ep = 4: 1.88 → 1.47). A γ much above the
// spread of the scores only moves the overload from expert to expert: with
// skew 1.0 and γ = 0.05, ep = 4 stayed at IS 1.88 → 1.92.
const defaultRoutingBiasRate = 0.02

func newBenchRoutingCmd() *cobra.Command {
	f := &rankbench.Routing{}
	cmd := &cobra.Command{
		Use:   "routing",
		Short: "compare routers' expert-parallel load imbalance and step time on real data",
		Long: `For each router configuration, trains the job's model (default: the reference model on the
embedded corpus) as one expert-parallel group of --ep rank processes over TCP loopback (mesh
dp = ep, so each rank draws its own batches and its experts serve every rank's tokens). Before
the first step every rank's selection bias of EP rank 0's experts is raised by --skew: a router
initialised to be skewed. Each step starts on all ranks together (a barrier); the step time is
the slowest rank's wall time, and the table gives its median over the --steps timed steps
(after --warmup untimed ones). cpu ms is the same median of the busiest rank's process CPU time
in the step: about the step time with a core per rank, communication aside. Where the ranks
share cores (more runnable processes than cores), a waiting rank frees its share for the
others, so the wall time follows the total work rather than the busiest rank's; the CPU time
does not. Load metrics are global, averaged over MoE layers and timed steps: IS = (max − min
slots per EP rank) / tokens, max/mean expert and EP-rank load, drop rate.

--rank-cpu C models one device per EP rank instead: each rank process runs in its own cgroup
with a CFS bandwidth quota of C cores (10 ms period) that it cannot exceed and that the other
ranks cannot take while it waits. The busiest rank's work then sets the wall step time, as on
a cluster. Needs Linux and root (or a delegated cgroup); C × ep must not exceed the cores.

Configurations (--routers; every one uses the same k, so the same expert FLOPs per token):
  topk           dropless top-k (the anchor of the topk/this column)
  moge           Mixture of Grouped Experts: groups = ep, k/ep experts in every group
  group_limited  groups = ep, keeps max(1, ep/2) groups per token, top-k inside them
  topk+capF      top-k with capacity factor F (e.g. topk+cap1.25), dropping by probability
  topk+bias      dropless top-k with aux-loss-free bias balancing at --bias-rate
Other configurations keep the job's model.bias_update_rate (0 unless it asks for balancing).
Each rank process runs --threads kernel threads; unless GOMAXPROCS is set, each gets
GOMAXPROCS = max(1, cores/ep), or max(1, ceil(C)) with --rank-cpu C.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			job, err := f.Job()
			if err != nil {
				return err
			}
			specs, err := f.Specs(job)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), f.Timeout)
			defer cancel()
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("locating own binary: %w", err)
			}
			rows, err := rankbench.RunRouting(ctx, exe, specs, f.RankCPU, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			anchor := rankbench.SetSpeedups(rows, "topk")
			return rankbench.PrintRouting(cmd.OutOrStdout(), f, specs[0], rows, anchor)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.Config, "config", "", "job TOML (default: the reference model on the embedded corpus)")
	fl.IntVar(&f.EP, "ep", 4, "expert-parallel ranks (processes); must divide model.experts")
	fl.IntVar(&f.K, "k", 0, "experts per token for every configuration (0: ep, so moge takes one expert per group)")
	fl.IntVar(&f.Steps, "steps", 20, "timed steps per configuration (the median is reported)")
	fl.IntVar(&f.Warmup, "warmup", 3, "untimed steps before timing")
	fl.StringVar(&f.Routers, "routers", strings.Join(rankbench.DefaultRoutingCases, ","), "comma-separated router configurations (see above)")
	fl.Float64Var(&f.Skew, "skew", defaultRoutingSkew, "selection-bias offset of EP rank 0's experts at the start (0: unskewed)")
	fl.Float64Var(&f.BiasRate, "bias-rate", defaultRoutingBiasRate, "γ of topk+bias (aux-loss-free balancing)")
	fl.IntVar(&f.Threads, "threads", 1, "kernel threads per rank process")
	fl.Float64Var(&f.RankCPU, "rank-cpu", 0, "cores per rank process, enforced by a cgroup CPU quota: one device per EP rank (0: off, ranks share the cores)")
	fl.DurationVar(&f.Timeout, "timeout", 2*time.Hour, "give up after this long (all configurations; every collective also has its own 60s deadline)")
	fl.BoolVar(&f.JSON, "json", false, "print one JSON object instead of the table")
	return cmd
}

func newBenchRoutingRankCmd() *cobra.Command {
	var rank, ranks int
	var timeout time.Duration
	cmd := internalCmd("bench-routing-rank", "one rank of `bench routing` (internal)", func(cmd *cobra.Command) error {
		return rankbench.RunRoutingRank(cmd.Context(), rank, ranks, timeout, cmd.OutOrStdout())
	})
	fl := cmd.Flags()
	fl.IntVar(&rank, "rank", 0, "this process's rank")
	fl.IntVar(&ranks, "ranks", 0, "number of ranks")
	fl.DurationVar(&timeout, "timeout", 30*time.Minute, "give up after this long")
	return cmd
}

func newBenchMoECmd() *cobra.Command {
	var cfg, cases, eps, bw string
	var tokens, steps, warmup, rounds int
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "moe",
		Short: "time one expert-parallel MoE layer per exchange option (pipelining, dispatch dtype) over shaped links",
		Long: `Runs one MoE layer of the job's model (forward and backward, random weights and tokens) as one
expert-parallel group of --ep rank processes over TCP loopback, each link direction shaped to
--link-bw, for each configuration of --configs: DTYPE[+cC|+auto] with DTYPE fp32, bf16 or fp8
(model.dispatch_dtype) and C the chunk count of the pipelined exchange (model.ep_chunks; default 1,
unpipelined; +auto chooses at run time). The first configuration is the anchor of the speedups.
Configurations are run in --rounds interleaved rounds; each figure is the median over rounds of
the round's median over steps of the slowest rank.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f := &rankbench.Routing{Config: cfg}
			job, err := f.Job()
			if err != nil {
				return err
			}
			cs, err := rankbench.LayerCases(strings.Split(cases, ","))
			if err != nil {
				return fmt.Errorf("--configs: %w", err)
			}
			link := 0.0
			if bw != "" && bw != "0" {
				if link, err = rankbench.ParseBandwidth(bw); err != nil {
					return fmt.Errorf("--link-bw: %w", err)
				}
			}
			epList, err := rankbench.ParseIntList(eps)
			if err != nil {
				return fmt.Errorf("--ep: %w", err)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("locating own binary: %w", err)
			}
			run := func(ctx context.Context, specs []rankbench.RoutingBenchSpec) ([]rankbench.RoutingRow, error) {
				return rankbench.RunRouting(ctx, exe, specs, 0, cmd.ErrOrStderr())
			}
			return rankbench.RunLayerBench(ctx, job, cs, epList, tokens, link, warmup, steps, rounds, run, cmd.OutOrStdout())
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&cfg, "config", "", "job TOML (default: the reference model)")
	fl.StringVar(&cases, "configs", strings.Join(rankbench.DefaultLayerCases, ","), "comma-separated exchange configurations (see above)")
	fl.StringVar(&eps, "ep", "2,4", "comma-separated expert-parallel degrees (rank processes)")
	fl.StringVar(&bw, "link-bw", "125MB/s", "per-direction link bandwidth (125MB/s = 1 Gbit/s; 0: unshaped)")
	fl.IntVar(&tokens, "tokens", 1024, "tokens per rank per step")
	fl.IntVar(&steps, "steps", 10, "timed steps per configuration and round")
	fl.IntVar(&warmup, "warmup", 3, "untimed steps before timing (auto chunking measures its candidates there and on)")
	fl.IntVar(&rounds, "rounds", 3, "interleaved rounds over the configurations")
	fl.DurationVar(&timeout, "timeout", time.Hour, "give up after this long")
	return cmd
}

func init() {
	benchParent().AddCommand(newBenchMoECmd())
	benchParent().AddCommand(newBenchRoutingCmd())
	rootCmd.AddCommand(newBenchRoutingRankCmd())
}
