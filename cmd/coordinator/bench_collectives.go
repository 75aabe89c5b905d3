package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/rankbench"
	"github.com/spf13/cobra"
)

// registerCollectives defines the flags of `bench collectives` and bench-rank.
func registerCollectives(f *rankbench.Collectives, cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.IntVar(&f.Workers, "workers", 2, "number of ranks (processes for tcp, goroutines for inproc)")
	fl.StringVar(&f.Transport, "transport", "tcp", "tcp (one process per rank, loopback) or inproc")
	fl.StringVar(&f.Ops, "ops", "allreduce,alltoall", "comma-separated: "+strings.Join(collective.BenchOps, ","))
	fl.StringVar(&f.Sizes, "sizes", "64K,1M,16M,64M", "comma-separated buffer sizes in bytes (K, M, G = 2^10, 2^20, 2^30)")
	fl.IntVar(&f.Iters, "iters", 20, "operations per timed repetition")
	fl.IntVar(&f.Warmup, "warmup", 5, "untimed operations before timing")
	fl.IntVar(&f.Reps, "reps", 5, "timed repetitions (the median is reported)")
	fl.StringVar(&f.LinkBW, "link-bw", "", "shape every link direction to this bandwidth, e.g. 1GB/s, 500MB/s, 1GiB/s")
	fl.DurationVar(&f.LinkLatency, "link-latency", 0, "one-way latency added to every link, e.g. 50us")
	fl.IntVar(&f.Segment, "segment", 0, "ring pipelining segment in bytes (0: collective's default)")
	fl.IntVar(&f.Small, "small", 0, "all-reduce size up to which recursive doubling is used (0: default)")
	fl.IntVar(&f.Halving, "halving", 0, "all-reduce size up to which power-of-two groups use halving-doubling (0: default, -1: never)")
	fl.DurationVar(&f.Timeout, "timeout", 10*time.Minute, "give up after this long")
	fl.StringVar(&f.SocketBufferFlag, "socket-buffer", "auto", "SO_SNDBUF/SO_RCVBUF bytes for tcp (0: kernel autotuning; auto: "+strconv.Itoa(rankbench.EngineSocketBuffer)+" with the progress engine, else 0)")
	fl.StringVar(&f.SpinFlag, "spin", "auto", "tcp, progress engine: how long a waiter with no bytes to move keeps trying before it blocks in poll(2) (0: block at once; auto: "+rankbench.AutoSpin.String()+", or "+rankbench.AutoSpinYield.String()+" when yielding)")
	fl.StringVar(&f.YieldFlag, "spin-yield", "auto", "tcp, progress engine: yield the CPU to other processes between tries (auto: when ranks outnumber cores)")
	fl.BoolVar(&f.Engine, "engine", collective.TrainingEngine, "tcp: move the TCP pairs' bytes in the waiting goroutines with nonblocking system calls (the progress engine) instead of reader goroutines and blocking writes (default: as training)")
	fl.BoolVar(&f.Shm, "shm", true, "tcp: ranks on one host move frames through shared-memory rings, keeping TCP as their liveness, as training does; false: TCP only")
	fl.StringVar(&f.HostsFlag, "hosts", "", "tcp: host of each rank, comma-separated (default: all on this one); all-to-alls across hosts go hierarchically")
	fl.BoolVar(&f.Netns, "netns", false, "tcp: run rank r in network namespace hosts[r] (ip netns exec; root), listening on its first global IPv4 address")
	fl.BoolVar(&f.HierAllToAll, "hier-alltoall", false, "all-to-all across hosts through one leader per host (gather, one exchange per host pair, scatter)")
	fl.StringVar(&f.Congestion, "tcp-congestion", "", "tcp: congestion control of the ranks' connections, a comma-separated list of kernel names (first accepted wins), or "+collective.CongestionSystem+" for the system's (default: "+collective.DefaultCongestion+")")
	fl.StringVar(&f.BindFlag, "bind", "auto", "tcp: pin each rank process to a core of its own (core), or not (none); auto: core when every rank has cores of its own (workers × GOMAXPROCS <= cores), as OpenMPI binds by default")
	fl.IntVar(&f.Procs, "gomaxprocs", 0, "tcp: GOMAXPROCS of each rank process (0: $GOMAXPROCS if set, else max(1, cores/workers))")
	fl.BoolVar(&f.JSON, "json", false, "print one JSON object per result instead of the table")
}

// childArgs are the flags passed on to every rank process.
func collectivesChildArgs(f *rankbench.Collectives) []string {
	args := []string{
		"--workers", strconv.Itoa(f.Workers), "--ops", f.Ops, "--sizes", f.Sizes,
		"--iters", strconv.Itoa(f.Iters), "--warmup", strconv.Itoa(f.Warmup), "--reps", strconv.Itoa(f.Reps),
		"--link-bw", f.LinkBW, "--link-latency", f.LinkLatency.String(),
		"--segment", strconv.Itoa(f.Segment), "--small", strconv.Itoa(f.Small), "--halving", strconv.Itoa(f.Halving), "--timeout", f.Timeout.String(),
		"--socket-buffer", strconv.Itoa(f.SocketBuffer), "--engine=" + strconv.FormatBool(f.Engine), "--shm=" + strconv.FormatBool(f.Shm), "--bind", "none",
		"--hosts", f.HostsFlag, "--netns=" + strconv.FormatBool(f.Netns), "--hier-alltoall=" + strconv.FormatBool(f.HierAllToAll),
		"--tcp-congestion", f.Congestion,
	}
	if f.Engine {
		args = append(args, "--spin", f.Spin.String(), "--spin-yield", strconv.FormatBool(f.SpinYield))
	}
	return args
}

func newBenchCollectivesCmd() *cobra.Command {
	f := &rankbench.Collectives{}
	cmd := &cobra.Command{
		Use:   "collectives",
		Short: "time collectives over N local ranks; prints an nccl-tests style table",
		Long: `Starts --workers local ranks (processes over TCP loopback, or goroutines) and times each
operation at each size: one exactly checked run (#wrong), --warmup untimed runs, then --reps
repetitions of --iters back-to-back runs; time is the median repetition of the slowest rank.
algbw = size/time; busbw = algbw × nccl-tests' factor (all-reduce 2(n-1)/n; reduce-scatter,
all-gather, all-to-all (n-1)/n; broadcast 1). With --link-bw, bound% is busbw relative to the
link bandwidth (the ring algorithms' bound; (n-1) links for all-to-all). Unless --gomaxprocs
or GOMAXPROCS is set, each rank process gets GOMAXPROCS = max(1, cores/workers): the ranks
share the cores.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sizes, ops, bw, err := f.Validate()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), f.Timeout)
			defer cancel()
			var res []collective.BenchResult
			if f.Transport == "inproc" {
				res, err = rankbench.RunCollectivesInProc(ctx, f, ops, sizes, bw)
			} else {
				var exe string
				if exe, err = os.Executable(); err != nil {
					return fmt.Errorf("locating own binary: %w", err)
				}
				res, err = rankbench.RunCollectivesProcesses(ctx, exe, f, func(r int) []string {
					args := append([]string{"bench-rank", "--rank", strconv.Itoa(r)}, collectivesChildArgs(f)...)
					if f.BindCPUs != nil {
						args = append(args, "--bind-cpu", strconv.Itoa(f.BindCPUs[r%len(f.BindCPUs)]))
					}
					return args
				})
			}
			if err != nil {
				return err
			}
			rankbench.PrintCollectives(cmd.OutOrStdout(), f, res, bw)
			return nil
		},
	}
	registerCollectives(f, cmd)
	return cmd
}

func newBenchRankCmd() *cobra.Command {
	f := &rankbench.Collectives{}
	var rank int
	f.BindCPU = -1
	cmd := internalCmd("bench-rank", "one rank of `bench collectives` (internal)", func(cmd *cobra.Command) error {
		return rankbench.RunCollectivesRank(cmd.Context(), f, rank)
	})
	registerCollectives(f, cmd)
	cmd.Flags().IntVar(&rank, "rank", 0, "this process's rank")
	cmd.Flags().IntVar(&f.BindCPU, "bind-cpu", -1, "pin this rank process to this CPU (-1: not pinned)")
	return cmd
}

// benchParent returns the `bench` command, creating it if no other file has.
func benchParent() *cobra.Command {
	for _, c := range rootCmd.Commands() {
		if c.Name() == "bench" {
			return c
		}
	}
	b := &cobra.Command{Use: "bench", Short: "benchmarks of the runtime's parts"}
	rootCmd.AddCommand(b)
	return b
}

func init() {
	benchParent().AddCommand(newBenchCollectivesCmd())
	rootCmd.AddCommand(newBenchRankCmd())
}
