package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/tensor"
	"github.com/moetrain/moetrain/train"
)

// benchRoutingFlags are the flags of `bench routing`.
type benchRoutingFlags struct {
	config   string
	ep       int
	k        int
	steps    int
	warmup   int
	routers  string
	skew     float64
	biasRate float64
	threads  int
	rankCPU  float64
	timeout  time.Duration
	jsonOut  bool
}

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
	f := &benchRoutingFlags{}
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
			job, err := f.job()
			if err != nil {
				return err
			}
			specs, err := f.specs(job)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
			defer cancel()
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("locating own binary: %w", err)
			}
			rows, err := runBenchRouting(ctx, exe, specs, f.rankCPU, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			anchor := cluster.SetSpeedups(rows, "topk")
			return printBenchRouting(cmd.OutOrStdout(), f, specs[0], rows, anchor)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.config, "config", "", "job TOML (default: the reference model on the embedded corpus)")
	fl.IntVar(&f.ep, "ep", 4, "expert-parallel ranks (processes); must divide model.experts")
	fl.IntVar(&f.k, "k", 0, "experts per token for every configuration (0: ep, so moge takes one expert per group)")
	fl.IntVar(&f.steps, "steps", 20, "timed steps per configuration (the median is reported)")
	fl.IntVar(&f.warmup, "warmup", 3, "untimed steps before timing")
	fl.StringVar(&f.routers, "routers", strings.Join(cluster.DefaultRoutingCases, ","), "comma-separated router configurations (see above)")
	fl.Float64Var(&f.skew, "skew", defaultRoutingSkew, "selection-bias offset of EP rank 0's experts at the start (0: unskewed)")
	fl.Float64Var(&f.biasRate, "bias-rate", defaultRoutingBiasRate, "γ of topk+bias (aux-loss-free balancing)")
	fl.IntVar(&f.threads, "threads", 1, "kernel threads per rank process")
	fl.Float64Var(&f.rankCPU, "rank-cpu", 0, "cores per rank process, enforced by a cgroup CPU quota: one device per EP rank (0: off, ranks share the cores)")
	fl.DurationVar(&f.timeout, "timeout", 2*time.Hour, "give up after this long (all configurations; every collective also has its own 60s deadline)")
	fl.BoolVar(&f.jsonOut, "json", false, "print one JSON object instead of the table")
	return cmd
}

// job loads --config or the default job.
func (f *benchRoutingFlags) job() (train.JobConfig, error) {
	if f.config == "" {
		return train.DefaultJobConfig(), nil
	}
	return train.LoadJobConfig(f.config)
}

// specs validates the flags and builds one spec per configuration.
func (f *benchRoutingFlags) specs(job train.JobConfig) ([]cluster.RoutingBenchSpec, error) {
	e := job.Model.Experts
	switch {
	case f.ep < 2 || f.ep > 64:
		return nil, fmt.Errorf("--ep %d: want 2..64 (imbalance over expert-parallel ranks needs at least 2)", f.ep)
	case e%f.ep != 0:
		return nil, fmt.Errorf("--ep %d must divide model.experts = %d", f.ep, e)
	case f.k < 0 || f.k > e:
		return nil, fmt.Errorf("--k %d: want 0 (= ep) or 1..model.experts = %d", f.k, e)
	case f.steps < 1 || f.warmup < 0:
		return nil, fmt.Errorf("--steps %d must be >= 1 and --warmup %d >= 0", f.steps, f.warmup)
	case f.threads < 1:
		return nil, fmt.Errorf("--threads %d: must be >= 1", f.threads)
	case !(f.skew >= 0 && f.skew < 1e6):
		return nil, fmt.Errorf("--skew %g: want a finite value >= 0", f.skew)
	case !(f.biasRate > 0 && f.biasRate < 1e6):
		return nil, fmt.Errorf("--bias-rate %g: want a finite value > 0", f.biasRate)
	case f.timeout <= 0:
		return nil, fmt.Errorf("--timeout %v: must be > 0", f.timeout)
	case !(f.rankCPU == 0 || f.rankCPU >= minRankCPU && f.rankCPU < 1e6):
		return nil, fmt.Errorf("--rank-cpu %g: want 0 (off) or at least %g cores per rank", f.rankCPU, minRankCPU)
	case f.rankCPU*float64(f.ep) > float64(runtime.NumCPU())+1e-9:
		return nil, fmt.Errorf("--rank-cpu %g × --ep %d = %g cores, more than the %d of this machine: the ranks could not all get their share at once",
			f.rankCPU, f.ep, f.rankCPU*float64(f.ep), runtime.NumCPU())
	}
	k := f.k
	if k == 0 {
		k = f.ep
		if k > e {
			return nil, fmt.Errorf("--k defaults to ep = %d, more than model.experts = %d: set --k", f.ep, e)
		}
	}
	var names []string
	for _, s := range strings.Split(f.routers, ",") {
		if s = strings.TrimSpace(s); s != "" {
			names = append(names, s)
		}
	}
	cases, err := cluster.RoutingCases(names, f.ep, k, f.biasRate, job.Model.BiasUpdateRate)
	if err != nil {
		return nil, fmt.Errorf("--routers: %w", err)
	}
	specs := make([]cluster.RoutingBenchSpec, len(cases))
	for i, c := range cases {
		if specs[i], err = cluster.NewRoutingBenchSpec(job, c, f.ep, f.skew, f.warmup, f.steps, f.threads); err != nil {
			return nil, err
		}
	}
	return specs, nil
}

// minRankCPU is the smallest --rank-cpu: a rank that slow would take
// minutes per step of any model worth measuring (the kernel's own floor,
// 0.001 cores, is far below it).
const minRankCPU = 0.01

// runBenchRouting runs every spec in turn as its own set of rank processes
// of exe and summarises each. rankCPU > 0 puts each rank process in its own
// cgroup limited to that many cores.
func runBenchRouting(ctx context.Context, exe string, specs []cluster.RoutingBenchSpec, rankCPU float64, progress io.Writer) ([]cluster.RoutingRow, error) {
	var rows []cluster.RoutingRow
	for i, s := range specs {
		t0 := time.Now()
		// Unique per coordinator, configuration and rank (the rank is
		// appended), so a group left behind never collides with a later one.
		prefix := fmt.Sprintf("moetrain-bench-%d-%d", os.Getpid(), i)
		res, stats, err := runRoutingRanks(ctx, exe, s, rankCPU, prefix)
		if err != nil {
			return nil, err
		}
		row, err := cluster.SummarizeRouting(s, res)
		if err != nil {
			return nil, err
		}
		throttled := ""
		if len(stats) > 0 {
			parts := make([]string, len(stats))
			for r, st := range stats {
				parts[r] = fmt.Sprintf("%d/%d", st.Throttled, st.Periods)
			}
			throttled = ", throttled/runnable quota periods per rank " + strings.Join(parts, " ")
		}
		fmt.Fprintf(progress, "bench routing: %s done in %.1fs (median step %.1f ms, IS %.3f%s)\n", s.Case.Name, time.Since(t0).Seconds(), row.StepMS, row.IS, throttled)
		rows = append(rows, row)
	}
	return rows, nil
}

// routingChild is one rank process and what it has said.
type routingChild struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr *tailWriter
	exited bool
}

// routingEvent is a rank process's address (exited false) or its end.
type routingEvent struct {
	rank   int
	addr   string
	exited bool
	result *cluster.RoutingRankResult
	err    error
}

// runRoutingRanks starts one process per rank of spec. Each binds a loopback
// listener and prints "ADDR host:port"; once all have, each gets "ADDRS
// a,b,..." and "SPEC <json>" on stdin, builds the TCP mesh, runs and prints
// "RESULT <json>"; a rank whose stdin ends stops. The first rank to fail (or
// to exit without a result) fails the run with its error and the tail of its
// stderr, and the other ranks are killed at once; ctx bounds the whole run.
//
// With rankCPU > 0 rank r runs in the cgroup groupPrefix-r, limited to
// rankCPU cores, and stats holds each group's throttling counts. A rank joins
// its group right after it starts, before it is sent any work; the groups are
// removed once every rank has exited, on every path (a failure to remove one
// is an error).
func runRoutingRanks(ctx context.Context, exe string, spec cluster.RoutingBenchSpec, rankCPU float64, groupPrefix string) (results []cluster.RoutingRankResult, stats []cpuQuotaStat, err error) {
	n := spec.Mesh().World()
	name := spec.Case.Name
	var tok [16]byte
	if _, err := rand.Read(tok[:]); err != nil {
		return nil, nil, err
	}
	specJSON, err := json.Marshal(spec)
	if err != nil {
		return nil, nil, fmt.Errorf("bench routing %s: encoding the spec: %w", name, err)
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(time.Hour)
	}
	events := make(chan routingEvent, 2*n) // ≤ one address and one end per rank
	children := make([]*routingChild, n)
	quotas := make([]*cpuQuota, n)
	var wg sync.WaitGroup
	defer func() {
		for _, ch := range children {
			if ch != nil {
				ch.stdin.Close()
				if !ch.exited {
					_ = ch.cmd.Process.Kill()
				}
			}
		}
		wg.Wait() // the readers reap their processes
		// Only now are the groups empty.
		for r, q := range quotas {
			if q == nil {
				continue
			}
			if st, serr := q.Stat(); serr == nil && stats != nil {
				stats[r] = st
			}
			if cerr := q.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("bench routing %s: --rank-cpu: rank %d: %w", name, r, cerr))
			}
		}
	}()
	if rankCPU > 0 {
		stats = make([]cpuQuotaStat, n)
	}
	for r := range n {
		args := []string{"bench-routing-rank", "--rank", strconv.Itoa(r), "--ranks", strconv.Itoa(n),
			"--timeout", max(time.Second, time.Until(deadline).Round(time.Second)).String()}
		cmd := exec.CommandContext(ctx, exe, args...)
		cmd.Env = append(os.Environ(), benchTokenEnv+"="+hex.EncodeToString(tok[:]))
		switch {
		case os.Getenv("GOMAXPROCS") != "":
		case rankCPU > 0:
			// As many Ps as the quota can keep busy; more would only
			// be throttled together.
			cmd.Env = append(cmd.Env, fmt.Sprintf("GOMAXPROCS=%d", max(1, int(math.Ceil(rankCPU)))))
		default:
			// Ranks share the host's cores (see bench collectives).
			cmd.Env = append(cmd.Env, fmt.Sprintf("GOMAXPROCS=%d", max(1, runtime.NumCPU()/n)))
		}
		var quota *cpuQuota
		if rankCPU > 0 {
			if quota, err = newCPUQuota(fmt.Sprintf("%s-%d", groupPrefix, r), rankCPU); err != nil {
				return nil, nil, fmt.Errorf("bench routing %s: --rank-cpu: rank %d: %w", name, r, err)
			}
			quotas[r] = quota
		}
		ch := &routingChild{cmd: cmd, stderr: &tailWriter{max: 8 << 10}}
		cmd.Stderr = ch.stderr
		if ch.stdin, err = cmd.StdinPipe(); err != nil {
			return nil, nil, err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			ch.stdin.Close() // Start, which would close it on failure, is not reached
			return nil, nil, err
		}
		if err := cmd.Start(); err != nil { // closes both pipes on failure
			return nil, nil, fmt.Errorf("bench routing %s: starting rank %d: %w", name, r, err)
		}
		children[r] = ch
		wg.Add(1)
		go func() {
			defer wg.Done()
			events <- readRoutingChild(r, stdout, ch, events)
		}()
		if quota != nil {
			if err := quota.Add(cmd.Process.Pid); err != nil {
				return nil, nil, fmt.Errorf("bench routing %s: --rank-cpu: rank %d: %w", name, r, err)
			}
		}
	}
	failed := func(ev routingEvent, what string) error {
		if ev.err == nil {
			ev.err = errors.New("exited before reporting " + what)
		}
		return fmt.Errorf("bench routing %s: rank %d of %d: %w%s", name, ev.rank, n, ev.err, children[ev.rank].stderr.lastLines(3))
	}
	waiting := func(have func(int) bool) string {
		var w []string
		for r := range n {
			if !have(r) {
				w = append(w, strconv.Itoa(r))
			}
		}
		return strings.Join(w, ",")
	}
	addrs := make([]string, n)
	for got := 0; got < n; {
		select {
		case ev := <-events:
			if ev.exited {
				children[ev.rank].exited = true
				return nil, nil, failed(ev, "its address")
			}
			addrs[ev.rank] = ev.addr
			got++
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("bench routing %s: ranks [%s] did not report their addresses: %w", name, waiting(func(r int) bool { return addrs[r] != "" }), ctx.Err())
		}
	}
	msg := "ADDRS " + strings.Join(addrs, ",") + "\nSPEC " + string(specJSON) + "\n"
	for _, ch := range children {
		// stdin stays open until this function returns: its end tells
		// the rank to stop. A failed write means the rank is gone or
		// going (EOF stops it): its exit, below, says why.
		if _, err := io.WriteString(ch.stdin, msg); err != nil {
			ch.stdin.Close()
		}
	}
	results = make([]cluster.RoutingRankResult, n)
	for done := 0; done < n; {
		select {
		case ev := <-events:
			children[ev.rank].exited = true
			if ev.err != nil || ev.result == nil {
				return nil, nil, failed(ev, "a result")
			}
			results[ev.rank] = *ev.result
			done++
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("bench routing %s: ranks [%s] did not finish: %w", name, waiting(func(r int) bool { return children[r].exited }), ctx.Err())
		}
	}
	return results, stats, nil
}

// readRoutingChild reads rank r's stdout: its address goes to events at
// once; at the end of output it reaps the process and returns the end event
// with the result, if any, or the error.
func readRoutingChild(r int, stdout io.Reader, ch *routingChild, events chan<- routingEvent) routingEvent {
	end := routingEvent{rank: r, exited: true}
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	sentAddr := false
	var protoErr error
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "ADDR ") && !sentAddr:
			sentAddr = true
			events <- routingEvent{rank: r, addr: strings.TrimSpace(strings.TrimPrefix(line, "ADDR "))}
		case strings.HasPrefix(line, "RESULT "):
			var res cluster.RoutingRankResult
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "RESULT ")), &res); err != nil {
				protoErr = fmt.Errorf("malformed result line: %w", err)
				continue
			}
			if res.Rank != r {
				protoErr = fmt.Errorf("result names rank %d", res.Rank)
				continue
			}
			end.result = &res
		}
	}
	if err := sc.Err(); err != nil && protoErr == nil {
		protoErr = fmt.Errorf("reading its output: %w", err)
	}
	_, _ = io.Copy(io.Discard, stdout) // let the process finish writing
	end.err = ch.cmd.Wait()
	if end.err == nil {
		end.err = protoErr
	}
	return end
}

// tailWriter keeps the last max bytes written to it.
type tailWriter struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (w *tailWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	if over := len(w.buf) - w.max; over > 0 {
		w.buf = append(w.buf[:0], w.buf[over:]...)
	}
	return len(p), nil
}

// lastLines is ": " and the last n non-empty lines written, or "".
func (w *tailWriter) lastLines(n int) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var lines []string
	for _, l := range strings.Split(string(w.buf), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		return ""
	}
	return ": " + strings.Join(lines[max(0, len(lines)-n):], " | ")
}

func newBenchRoutingRankCmd() *cobra.Command {
	var rank, ranks int
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:    "bench-routing-rank",
		Short:  "one rank of `bench routing` (internal)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ranks < 2 || rank < 0 || rank >= ranks {
				return fmt.Errorf("--rank %d of --ranks %d: want 0 <= rank < ranks, ranks >= 2", rank, ranks)
			}
			if timeout <= 0 {
				return fmt.Errorf("--timeout %v: must be > 0", timeout)
			}
			token := os.Getenv(benchTokenEnv)
			if token == "" {
				return fmt.Errorf("%s is not set: bench-routing-rank is started by `coordinator bench routing`", benchTokenEnv)
			}
			log := zerolog.New(os.Stderr).Level(zerolog.WarnLevel).With().Timestamp().Int("rank", rank).Logger()
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			ln, err := collective.Listen("127.0.0.1:0")
			if err != nil {
				return err
			}
			defer ln.Close()
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "ADDR %s\n", ln.Addr())
			lines, err := readControl(ctx, os.Stdin, cancel)
			if err != nil {
				return fmt.Errorf("rank %d: reading the address list and spec: %w", rank, err)
			}
			if !strings.HasPrefix(lines[0], "ADDRS ") || !strings.HasPrefix(lines[1], "SPEC ") {
				return fmt.Errorf("rank %d: want ADDRS and SPEC lines on stdin, got %q", rank, lines)
			}
			addrs := strings.Split(strings.TrimPrefix(lines[0], "ADDRS "), ",")
			if len(addrs) != ranks {
				return fmt.Errorf("rank %d: address list has %d entries, want %d", rank, len(addrs), ranks)
			}
			var spec cluster.RoutingBenchSpec
			if err := json.Unmarshal([]byte(strings.TrimPrefix(lines[1], "SPEC ")), &spec); err != nil {
				return fmt.Errorf("rank %d: decoding the spec: %w", rank, err)
			}
			if w := spec.Mesh().World(); w != ranks {
				return fmt.Errorf("rank %d: spec's mesh has %d ranks, --ranks is %d", rank, w, ranks)
			}
			tensor.SetThreads(spec.Threads)
			t, err := collective.DialMesh(ctx, ln, collective.TCPConfig{Rank: rank, Addrs: addrs, Token: token})
			if err != nil {
				return fmt.Errorf("rank %d: %w", rank, err)
			}
			defer t.Close()
			res, err := cluster.RunRoutingRank(ctx, t, spec, log)
			if err != nil {
				return err
			}
			b, err := json.Marshal(res)
			if err != nil {
				return fmt.Errorf("rank %d: encoding the result: %w", rank, err)
			}
			_, err = fmt.Fprintf(out, "RESULT %s\n", b)
			return err
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&rank, "rank", 0, "this process's rank")
	fl.IntVar(&ranks, "ranks", 0, "number of ranks")
	fl.DurationVar(&timeout, "timeout", 30*time.Minute, "give up after this long")
	return cmd
}

// readControl reads the ADDRS and SPEC lines the parent writes on r, then
// keeps reading until r ends: the parent holds r open while it waits for
// this rank, so its end (the parent gave up or died) calls stop.
func readControl(ctx context.Context, r io.Reader, stop context.CancelFunc) ([]string, error) {
	type result struct {
		lines []string
		err   error
	}
	done := make(chan result, 1)
	go func() {
		br := bufio.NewReaderSize(r, 64<<10)
		var out []string
		for len(out) < 2 {
			line, err := br.ReadString('\n')
			if err != nil {
				done <- result{out, fmt.Errorf("after %d of 2 lines: %w", len(out), err)}
				return
			}
			out = append(out, strings.TrimRight(line, "\r\n"))
		}
		done <- result{out, nil}
		_, _ = io.Copy(io.Discard, br)
		stop()
	}()
	select {
	case res := <-done:
		return res.lines, res.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// benchRoutingReport is the --json output.
type benchRoutingReport struct {
	EP      int     `json:"ep"`
	K       int     `json:"k"`
	Skew    float64 `json:"skew"`
	Warmup  int     `json:"warmup"`
	Steps   int     `json:"steps"`
	Threads int     `json:"threads"`
	// RankCPU is --rank-cpu: each rank process's cgroup CPU quota in
	// cores, 0 when the ranks share the machine's cores.
	RankCPU float64              `json:"rank_cpu"`
	Anchor  string               `json:"anchor"`
	Rows    []cluster.RoutingRow `json:"rows"`
}

func printBenchRouting(w io.Writer, f *benchRoutingFlags, spec cluster.RoutingBenchSpec, rows []cluster.RoutingRow, anchor string) error {
	if f.jsonOut {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(benchRoutingReport{EP: f.ep, K: spec.Case.TopK, Skew: f.skew, Warmup: f.warmup, Steps: f.steps,
			Threads: f.threads, RankCPU: f.rankCPU, Anchor: anchor, Rows: rows})
	}
	m, d := spec.Job.Model, spec.Job.Data
	data := d.Path
	if data == "" {
		data = "embedded corpus"
	}
	fmt.Fprintf(w, "# bench routing: ep=%d rank processes (mesh dp=%d ep=%d, TCP loopback), %d kernel thread(s) each, %d cores\n",
		f.ep, f.ep, f.ep, f.threads, runtime.NumCPU())
	fmt.Fprintf(w, "# model: d_model=%d layers=%d experts=%d expert_hidden=%d score=%s; k=%d for every router\n",
		m.DModel, m.Layers, m.Experts, m.ExpertHidden, m.Score, spec.Case.TopK)
	fmt.Fprintf(w, "# data: %s, %s sampler, %d×%d tokens per rank per step; skew +%g on EP rank 0's experts; warmup %d, %d timed steps\n",
		data, d.Mode, d.BatchSize, d.SeqLen, f.skew, f.warmup, f.steps)
	if f.rankCPU > 0 {
		fmt.Fprintf(w, "# rank cpu: %.2f cores per rank (cgroup cpu quota): one device per EP rank, so the busiest rank sets the step time\n", f.rankCPU)
	} else {
		fmt.Fprintf(w, "# rank cpu: shared (no quota): a waiting rank lends its cores to the others, so step ms follows the total work\n")
	}
	fmt.Fprintf(w, "# step ms: median over steps of the slowest rank's wall time; cpu ms: median over steps of the busiest rank's CPU time\n")
	fmt.Fprintf(w, "#   (≈ the step with a core per rank, communication aside); %s/this: speedup vs %s; load metrics: mean over layers and timed steps\n", anchor, anchor)
	fmt.Fprintf(w, "%-15s %3s %6s %9s %9s %9s %9s %7s %13s %9s %9s %7s %10s\n",
		"router", "k", "groups", "step ms", anchor+"/this", "cpu ms", anchor+"/this", "IS", "IS first→last", "max/mean", "rank m/m", "drop%", "final loss")
	for _, r := range rows {
		groups := strconv.Itoa(r.Case.Groups)
		if r.Case.TopKGroups > 0 {
			groups = fmt.Sprintf("%d/%d", r.Case.TopKGroups, r.Case.Groups)
		}
		fmt.Fprintf(w, "%-15s %3d %6s %9.1f %9.3f %9.1f %9.3f %7.3f %13s %9.3f %9.3f %7.2f %10.4f\n",
			r.Case.Name, r.Case.TopK, groups, r.StepMS, r.Speedup, r.CPUMS, r.CPUSpeedup, r.IS, fmt.Sprintf("%.3f→%.3f", r.ISFirst, r.ISLast),
			r.MaxMean, r.RankMaxMean, 100*r.DropRate, r.FinalLoss)
	}
	return nil
}

func init() {
	benchParent().AddCommand(newBenchRoutingCmd())
	rootCmd.AddCommand(newBenchRoutingRankCmd())
}
