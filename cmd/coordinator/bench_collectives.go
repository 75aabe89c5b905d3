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
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moetrain/moetrain/collective"
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
)

// benchCollectivesFlags are shared by `bench collectives` and the hidden
// per-rank helper it re-executes.
type benchCollectivesFlags struct {
	workers     int
	transport   string
	ops         string
	sizes       string
	iters       int
	warmup      int
	reps        int
	linkBW      string
	linkLatency time.Duration
	segment     int
	small       int
	halving     int
	timeout     time.Duration
	jsonOut     bool
	sockBufFlag string        // --socket-buffer as given: "auto" or bytes
	sockBuf     int           // resolved by validate
	spinFlag    string        // --spin as given: "auto" or a duration
	spin        time.Duration // resolved by validate
	yieldFlag   string        // --spin-yield as given: "auto", "true" or "false"
	spinYield   bool          // resolved by validate
	engine      bool
	congestion  string // --tcp-congestion: TCPConfig.Congestion
	procs       int
	bindFlag    string // --bind as given: "auto", "core" or "none"
	bindCPUs    []int  // resolved by validate: rank r runs on bindCPUs[r % len]; nil: unbound
	bindCPU     int    // bench-rank: the CPU to pin this rank to, or -1
}

func (f *benchCollectivesFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.IntVar(&f.workers, "workers", 2, "number of ranks (processes for tcp, goroutines for inproc)")
	fl.StringVar(&f.transport, "transport", "tcp", "tcp (one process per rank, loopback) or inproc")
	fl.StringVar(&f.ops, "ops", "allreduce,alltoall", "comma-separated: "+strings.Join(collective.BenchOps, ","))
	fl.StringVar(&f.sizes, "sizes", "64K,1M,16M,64M", "comma-separated buffer sizes in bytes (K, M, G = 2^10, 2^20, 2^30)")
	fl.IntVar(&f.iters, "iters", 20, "operations per timed repetition")
	fl.IntVar(&f.warmup, "warmup", 5, "untimed operations before timing")
	fl.IntVar(&f.reps, "reps", 5, "timed repetitions (the median is reported)")
	fl.StringVar(&f.linkBW, "link-bw", "", "shape every link direction to this bandwidth, e.g. 1GB/s, 500MB/s, 1GiB/s")
	fl.DurationVar(&f.linkLatency, "link-latency", 0, "one-way latency added to every link, e.g. 50us")
	fl.IntVar(&f.segment, "segment", 0, "ring pipelining segment in bytes (0: collective's default)")
	fl.IntVar(&f.small, "small", 0, "all-reduce size up to which recursive doubling is used (0: default)")
	fl.IntVar(&f.halving, "halving", 0, "all-reduce size up to which power-of-two groups use halving-doubling (0: default, -1: never)")
	fl.DurationVar(&f.timeout, "timeout", 10*time.Minute, "give up after this long")
	fl.StringVar(&f.sockBufFlag, "socket-buffer", "auto", "SO_SNDBUF/SO_RCVBUF bytes for tcp (0: kernel autotuning; auto: "+strconv.Itoa(engineSocketBuffer)+" with the progress engine, else 0)")
	fl.StringVar(&f.spinFlag, "spin", "auto", "tcp, progress engine: how long a waiter with no bytes to move keeps trying before it blocks in poll(2) (0: block at once; auto: "+autoSpin.String()+", or "+autoSpinYield.String()+" when yielding)")
	fl.StringVar(&f.yieldFlag, "spin-yield", "auto", "tcp, progress engine: yield the CPU to other processes between tries (auto: when ranks outnumber cores)")
	fl.BoolVar(&f.engine, "engine", true, "tcp: move bytes in the waiting goroutines with nonblocking system calls (the progress engine) instead of reader goroutines and blocking writes")
	fl.StringVar(&f.congestion, "tcp-congestion", "", "tcp: congestion control of the ranks' connections, a comma-separated list of kernel names (first accepted wins), or "+collective.CongestionSystem+" for the system's (default: "+collective.DefaultCongestion+")")
	fl.StringVar(&f.bindFlag, "bind", "auto", "tcp: pin each rank process to a core of its own (core), or not (none); auto: core when every rank has cores of its own (workers × GOMAXPROCS <= cores), as OpenMPI binds by default")
	fl.IntVar(&f.procs, "gomaxprocs", 0, "tcp: GOMAXPROCS of each rank process (0: $GOMAXPROCS if set, else max(1, cores/workers))")
	fl.BoolVar(&f.jsonOut, "json", false, "print one JSON object per result instead of the table")
}

func (f *benchCollectivesFlags) validate() (sizes []int, ops []string, bw float64, err error) {
	if f.workers < 1 || f.workers > 256 {
		return nil, nil, 0, fmt.Errorf("--workers %d: want 1..256", f.workers)
	}
	if f.transport != "tcp" && f.transport != "inproc" {
		return nil, nil, 0, fmt.Errorf("--transport %q: want tcp or inproc", f.transport)
	}
	if err := collective.CheckCongestion(f.congestion); err != nil {
		return nil, nil, 0, fmt.Errorf("--tcp-congestion: %w", err)
	}
	for _, s := range strings.Split(f.sizes, ",") {
		b, err := parseBytes(strings.TrimSpace(s))
		if err != nil {
			return nil, nil, 0, fmt.Errorf("--sizes: %w", err)
		}
		sizes = append(sizes, b)
	}
	for _, o := range strings.Split(f.ops, ",") {
		o = strings.ToLower(strings.TrimSpace(o))
		found := false
		for _, k := range collective.BenchOps {
			found = found || k == o
		}
		if !found {
			return nil, nil, 0, fmt.Errorf("--ops: unknown operation %q (known: %s)", o, strings.Join(collective.BenchOps, ","))
		}
		ops = append(ops, o)
	}
	if f.linkBW != "" {
		if bw, err = parseBandwidth(f.linkBW); err != nil {
			return nil, nil, 0, fmt.Errorf("--link-bw: %w", err)
		}
	}
	if f.procs < 0 {
		return nil, nil, 0, fmt.Errorf("--gomaxprocs %d: must not be negative", f.procs)
	}
	// Whether ranks outnumber cores decides --spin-yield and --bind auto.
	cores := runtime.NumCPU()
	var cpus []int
	if f.transport == "tcp" {
		if cpus, err = allowedCPUs(); err != nil {
			return nil, nil, 0, err
		}
		cores = len(cpus)
	}
	oversubscribed := f.workers*rankProcs(f.workers, f.procs) > cores
	if f.spin, f.spinYield, err = resolveSpin(f.spinFlag, f.yieldFlag, f.engine, oversubscribed); err != nil {
		return nil, nil, 0, err
	}
	if f.linkLatency < 0 {
		return nil, nil, 0, fmt.Errorf("--link-latency %v: must not be negative", f.linkLatency)
	}
	if f.sockBuf, err = resolveSocketBuffer(f.sockBufFlag, f.engine); err != nil {
		return nil, nil, 0, err
	}
	if f.transport == "tcp" {
		if f.bindCPUs, err = resolveBind(f.bindFlag, f.workers, oversubscribed, cpus); err != nil {
			return nil, nil, 0, err
		}
	}
	if f.iters < 1 || f.reps < 1 || f.warmup < 0 {
		return nil, nil, 0, fmt.Errorf("--iters and --reps must be ≥ 1 and --warmup ≥ 0 (got %d, %d, %d)", f.iters, f.reps, f.warmup)
	}
	return sizes, ops, bw, nil
}

// autoSpin is --spin auto: how long a progress-engine waiter with no bytes
// to move keeps trying before it blocks in poll(2). Much shorter and the
// waiter tries, blocks anyway and pays both; 200 µs catches nearly every
// peer's answer, and longer gained nothing (measured in
// docs/decisions.md#bench-collectives-defaults).
const autoSpin = 200 * time.Microsecond

// autoSpinYield is --spin auto when waiters yield (ranks outnumber cores).
// A yielding waiter gives its core to whoever else can run, so trying
// longer costs little, while blocking costs a wake-up that waits for a
// core (measured in the same entry as autoSpin).
const autoSpinYield = 2 * time.Millisecond

// resolveSpin reads --spin and --spin-yield, which apply to the progress
// engine only (given explicitly without it, they are an error). "auto"
// yields when ranks outnumber cores, and tries for autoSpin, or
// autoSpinYield when yielding.
func resolveSpin(spinFlag, yieldFlag string, engine, oversubscribed bool) (time.Duration, bool, error) {
	spinFlag, yieldFlag = strings.TrimSpace(spinFlag), strings.TrimSpace(yieldFlag)
	if !engine {
		if spinFlag != "auto" || yieldFlag != "auto" {
			return 0, false, fmt.Errorf("--spin and --spin-yield apply to the progress engine, which --engine=false turns off")
		}
		return 0, false, nil
	}
	var yield bool
	switch yieldFlag {
	case "auto":
		yield = oversubscribed
	case "true":
		yield = true
	case "false":
		yield = false
	default:
		return 0, false, fmt.Errorf("--spin-yield %q: want auto, true or false", yieldFlag)
	}
	if spinFlag == "auto" {
		if yield {
			return autoSpinYield, true, nil
		}
		return autoSpin, false, nil
	}
	spin, err := time.ParseDuration(spinFlag)
	if err != nil {
		return 0, false, fmt.Errorf("--spin %q: want auto or a duration such as 200us or 0: %w", spinFlag, err)
	}
	if spin < 0 {
		return 0, false, fmt.Errorf("--spin %v: must not be negative", spin)
	}
	return spin, yield, nil
}

// The progress engine is on by default (--engine): against OpenMPI it
// gained at every size measured, with and without shaped links (see
// docs/decisions.md#the-tcp-progress-engine).

// engineSocketBuffer is --socket-buffer auto with the progress engine. With
// it the engine writes a whole segment at once instead of in pieces as the
// peer drains them; autotuning starts a connection's send buffer at 16 KiB
// (measured in the same entry as autoSpin). The kernel doubles the value and
// caps it at net.core.[rw]mem_max.
const engineSocketBuffer = 2 << 20

// rankProcs is the GOMAXPROCS a rank process runs with: --gomaxprocs, else
// $GOMAXPROCS, else max(1, cores/workers) (benchProcesses sets it).
func rankProcs(workers, procs int) int {
	if procs > 0 {
		return procs
	}
	if v, err := strconv.Atoi(os.Getenv("GOMAXPROCS")); err == nil && v > 0 {
		return v
	}
	return max(1, runtime.NumCPU()/max(workers, 1))
}

// resolveBind reads --bind and returns the CPUs ranks are pinned to (rank r
// to cpus[r % len(cpus)]), or nil when they are not pinned. "auto" pins
// unless ranks outnumber cores, as OpenMPI does by default (bind to core for
// 2 ranks or fewer, none when oversubscribed): unpinned ranks that poll
// without yielding sometimes share a core until the scheduler moves one
// (measured in the same entry as autoSpin).
func resolveBind(flag string, workers int, oversubscribed bool, cpus []int) ([]int, error) {
	switch strings.TrimSpace(flag) {
	case "none":
		return nil, nil
	case "auto":
		if oversubscribed {
			return nil, nil
		}
	case "core":
		if workers > len(cpus) {
			return nil, fmt.Errorf("--bind core: %d ranks but only %d CPUs to bind them to", workers, len(cpus))
		}
	default:
		return nil, fmt.Errorf("--bind %q: want auto, core or none", flag)
	}
	return cpus, nil
}

// resolveSocketBuffer reads --socket-buffer: "auto" is engineSocketBuffer
// with the progress engine, else 0 (autotuning).
func resolveSocketBuffer(flag string, engine bool) (int, error) {
	if v := strings.TrimSpace(flag); v != "auto" {
		b, err := strconv.Atoi(v)
		if err != nil || b < 0 {
			return 0, fmt.Errorf("--socket-buffer %q: want auto or a byte count ≥ 0", flag)
		}
		return b, nil
	}
	if engine {
		return engineSocketBuffer, nil
	}
	return 0, nil
}

// parseBytes reads "64K", "1M", "16M", "4096", "1G" (binary multiples).
func parseBytes(s string) (int, error) {
	mult := 1
	u := strings.ToUpper(strings.TrimSuffix(strings.TrimSuffix(s, "B"), "i"))
	switch {
	case strings.HasSuffix(u, "K"):
		mult, u = 1<<10, u[:len(u)-1]
	case strings.HasSuffix(u, "M"):
		mult, u = 1<<20, u[:len(u)-1]
	case strings.HasSuffix(u, "G"):
		mult, u = 1<<30, u[:len(u)-1]
	}
	v, err := strconv.Atoi(u)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("size %q: want a non-negative integer with optional K, M or G", s)
	}
	return v * mult, nil
}

// parseBandwidth reads "1GB/s" (1e9 bytes/s), "500MB/s", "1GiB/s", "1e9".
func parseBandwidth(s string) (float64, error) {
	u := strings.TrimSuffix(strings.TrimSpace(s), "/s")
	mult := 1.0
	for _, m := range []struct {
		suf string
		v   float64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"B", 1}} {
		if strings.HasSuffix(u, m.suf) {
			u, mult = strings.TrimSuffix(u, m.suf), m.v
			break
		}
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(u), 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("bandwidth %q: want a positive number with optional unit, e.g. 1GB/s", s)
	}
	return v * mult, nil
}

func (f *benchCollectivesFlags) commConfig() collective.Config {
	return collective.Config{SegmentBytes: f.segment, SmallBytes: f.small, HalvingBytes: f.halving, Timeout: f.timeout}
}

func (f *benchCollectivesFlags) shape(t collective.Transport, bw float64) collective.Transport {
	if bw <= 0 && f.linkLatency <= 0 {
		return t
	}
	return collective.NewShaped(t, collective.LinkShape{From: -1, To: -1, Bandwidth: bw, Latency: f.linkLatency})
}

func (f *benchCollectivesFlags) benchConfig(ops []string, sizes []int) collective.BenchConfig {
	return collective.BenchConfig{Ops: ops, Sizes: sizes, Iters: f.iters, Warmup: f.warmup, Reps: f.reps}
}

// childArgs are the flags passed on to every rank process.
func (f *benchCollectivesFlags) childArgs() []string {
	args := []string{
		"--workers", strconv.Itoa(f.workers), "--ops", f.ops, "--sizes", f.sizes,
		"--iters", strconv.Itoa(f.iters), "--warmup", strconv.Itoa(f.warmup), "--reps", strconv.Itoa(f.reps),
		"--link-bw", f.linkBW, "--link-latency", f.linkLatency.String(),
		"--segment", strconv.Itoa(f.segment), "--small", strconv.Itoa(f.small), "--halving", strconv.Itoa(f.halving), "--timeout", f.timeout.String(),
		"--socket-buffer", strconv.Itoa(f.sockBuf), "--engine=" + strconv.FormatBool(f.engine), "--bind", "none",
		"--tcp-congestion", f.congestion,
	}
	if f.engine {
		args = append(args, "--spin", f.spin.String(), "--spin-yield", strconv.FormatBool(f.spinYield))
	}
	return args
}

const (
	benchTokenEnv = "MOETRAIN_BENCH_TOKEN"
	// benchProfileEnv names a directory where every rank writes a CPU profile.
	benchProfileEnv = "MOETRAIN_BENCH_CPUPROFILE"
)

func newBenchCollectivesCmd() *cobra.Command {
	f := &benchCollectivesFlags{}
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
			sizes, ops, bw, err := f.validate()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
			defer cancel()
			var res []collective.BenchResult
			if f.transport == "inproc" {
				res, err = benchInProc(ctx, f, ops, sizes, bw)
			} else {
				res, err = benchProcesses(ctx, f)
			}
			if err != nil {
				return err
			}
			printBench(cmd.OutOrStdout(), f, res, bw)
			return nil
		},
	}
	f.register(cmd)
	return cmd
}

func benchInProc(ctx context.Context, f *benchCollectivesFlags, ops []string, sizes []int, bw float64) ([]collective.BenchResult, error) {
	ts := collective.NewInProcess(f.workers)
	defer func() {
		for _, t := range ts {
			t.Close()
		}
	}()
	results := make([][]collective.BenchResult, f.workers)
	errs := make([]error, f.workers)
	var wg sync.WaitGroup
	for r := range f.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := collective.NewWorldConfig(f.shape(ts[r], bw), f.commConfig())
			results[r], errs[r] = collective.RunBench(ctx, c, f.benchConfig(ops, sizes))
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return results[0], nil
}

// benchProcesses re-executes this binary once per rank. Each rank binds a
// loopback listener and prints "ADDR host:port"; once all have, every rank
// gets the address list on stdin, builds the TCP mesh and runs the bench;
// rank 0 prints "RESULT <json>" lines.
func benchProcesses(ctx context.Context, f *benchCollectivesFlags) ([]collective.BenchResult, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("locating own binary: %w", err)
	}
	var tok [16]byte
	if _, err := rand.Read(tok[:]); err != nil {
		return nil, err
	}
	n := f.workers
	type child struct {
		cmd   *exec.Cmd
		stdin io.WriteCloser
		out   *bufio.Reader
	}
	children := make([]*child, n)
	defer func() {
		for _, ch := range children {
			if ch != nil && ch.cmd.Process != nil {
				_ = ch.cmd.Process.Kill()
				_ = ch.cmd.Wait()
			}
		}
	}()
	addrs := make([]string, n)
	for r := range n {
		args := append([]string{"bench-rank", "--rank", strconv.Itoa(r)}, f.childArgs()...)
		if f.bindCPUs != nil {
			args = append(args, "--bind-cpu", strconv.Itoa(f.bindCPUs[r%len(f.bindCPUs)]))
		}
		cmd := exec.CommandContext(ctx, exe, args...)
		cmd.Env = append(os.Environ(), benchTokenEnv+"="+hex.EncodeToString(tok[:]))
		if f.procs > 0 || os.Getenv("GOMAXPROCS") == "" {
			// Without a setting, ranks share the host's cores: idle Go
			// threads spinning for work would steal CPU from the ranks that
			// have some.
			cmd.Env = append(cmd.Env, fmt.Sprintf("GOMAXPROCS=%d", rankProcs(n, f.procs)))
		}
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return nil, err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("starting rank %d: %w", r, err)
		}
		ch := &child{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
		children[r] = ch
		line, err := ch.out.ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "ADDR ") {
			return nil, fmt.Errorf("rank %d did not report its address (got %q): %v", r, line, err)
		}
		addrs[r] = strings.TrimSpace(strings.TrimPrefix(line, "ADDR "))
	}
	list := "ADDRS " + strings.Join(addrs, ",") + "\n"
	for r, ch := range children {
		// stdin stays open while the rank runs (Wait closes it): its end
		// tells a rank that this process has gone, so ranks never outlive it.
		if _, err := io.WriteString(ch.stdin, list); err != nil {
			return nil, fmt.Errorf("sending addresses to rank %d: %w", r, err)
		}
	}
	var res []collective.BenchResult
	for {
		line, err := children[0].out.ReadString('\n')
		if strings.HasPrefix(line, "RESULT ") {
			var r collective.BenchResult
			if jerr := json.Unmarshal([]byte(strings.TrimPrefix(line, "RESULT ")), &r); jerr != nil {
				return nil, fmt.Errorf("rank 0 result %q: %w", line, jerr)
			}
			res = append(res, r)
		}
		if err != nil {
			break
		}
	}
	var errs []error
	for r, ch := range children {
		if err := ch.cmd.Wait(); err != nil {
			errs = append(errs, fmt.Errorf("rank %d: %w", r, err))
		}
		children[r] = nil
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return res, nil
}

func newBenchRankCmd() *cobra.Command {
	f := &benchCollectivesFlags{}
	var rank int
	f.bindCPU = -1
	cmd := &cobra.Command{
		Use:    "bench-rank",
		Short:  "one rank of `bench collectives` (internal)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := zerolog.New(os.Stderr).With().Timestamp().Int("rank", rank).Logger()
			sizes, ops, bw, err := f.validate()
			if err != nil {
				return err
			}
			if f.bindCPU >= 0 {
				if err := bindProcess(f.bindCPU); err != nil {
					return err
				}
			}
			token := os.Getenv(benchTokenEnv)
			if token == "" {
				return fmt.Errorf("%s is not set: bench-rank is started by `coordinator bench collectives`", benchTokenEnv)
			}
			if dir := os.Getenv(benchProfileEnv); dir != "" {
				pf, err := os.Create(filepath.Join(dir, fmt.Sprintf("rank-%d.pprof", rank)))
				if err != nil {
					return err
				}
				defer pf.Close()
				if err := pprof.StartCPUProfile(pf); err != nil {
					return err
				}
				defer pprof.StopCPUProfile()
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
			defer cancel()
			ln, err := collective.ListenCongestion("127.0.0.1:0", f.congestion)
			if err != nil {
				return err
			}
			defer ln.Close()
			fmt.Printf("ADDR %s\n", ln.Addr())
			in := bufio.NewReader(os.Stdin)
			line, err := in.ReadString('\n')
			if err != nil || !strings.HasPrefix(line, "ADDRS ") {
				return fmt.Errorf("reading the address list: got %q: %v", line, err)
			}
			go func() { // the parent's end of stdin closes when it exits: stop then
				_, _ = io.Copy(io.Discard, in)
				cancel()
			}()
			addrs := strings.Split(strings.TrimSpace(strings.TrimPrefix(line, "ADDRS ")), ",")
			if len(addrs) != f.workers {
				return fmt.Errorf("address list has %d entries, want %d", len(addrs), f.workers)
			}
			t, err := collective.DialMesh(ctx, ln, collective.TCPConfig{Rank: rank, Addrs: addrs, Token: token, SocketBuffer: f.sockBuf, SpinWait: f.spin, SpinYield: f.spinYield, ProgressEngine: f.engine, Congestion: f.congestion})
			if err != nil {
				return err
			}
			defer t.Close()
			c := collective.NewWorldConfig(f.shape(t, bw), f.commConfig())
			res, err := collective.RunBench(ctx, c, f.benchConfig(ops, sizes))
			if err != nil {
				log.Error().Err(err).Msg("bench failed")
				return err
			}
			if rank == 0 {
				for _, r := range res {
					b, _ := json.Marshal(r)
					fmt.Printf("RESULT %s\n", b)
				}
			}
			// Leave together, so no rank sees its peers' sockets close early.
			return c.Barrier(ctx)
		},
	}
	f.register(cmd)
	cmd.Flags().IntVar(&rank, "rank", 0, "this process's rank")
	cmd.Flags().IntVar(&f.bindCPU, "bind-cpu", -1, "pin this rank process to this CPU (-1: not pinned)")
	return cmd
}

func printBench(w io.Writer, f *benchCollectivesFlags, res []collective.BenchResult, bw float64) {
	if f.jsonOut {
		enc := json.NewEncoder(w)
		for _, r := range res {
			_ = enc.Encode(r)
		}
		return
	}
	fmt.Fprintf(w, "# bench collectives: %d ranks, transport %s, %d iters × %d reps (median), warmup %d",
		f.workers, f.transport, f.iters, f.reps, f.warmup)
	if f.transport == "tcp" {
		if f.engine {
			fmt.Fprintf(w, ", progress engine (spin %v", f.spin)
			if f.spinYield {
				fmt.Fprint(w, ", yielding")
			}
			fmt.Fprint(w, ")")
		} else {
			fmt.Fprint(w, ", reader goroutines")
		}
		if f.sockBuf > 0 {
			fmt.Fprintf(w, ", socket buffers %d B", f.sockBuf)
		}
		fmt.Fprintf(w, ", congestion control %s", collective.CongestionChoice(f.congestion))
		if f.bindCPUs != nil {
			fmt.Fprintf(w, ", ranks bound to CPUs %v", f.bindCPUs[:min(f.workers, len(f.bindCPUs))])
		}
	}
	if bw > 0 || f.linkLatency > 0 {
		fmt.Fprintf(w, ", links %.3g GB/s %v", bw/1e9, f.linkLatency)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "# %-13s %12s %10s %11s %11s %11s %7s", "op", "size(B)", "count", "time(us)", "algbw(GB/s)", "busbw(GB/s)", "#wrong")
	if bw > 0 {
		fmt.Fprintf(w, " %7s", "bound%")
	}
	fmt.Fprintln(w)
	for _, r := range res {
		fmt.Fprintf(w, "  %-13s %12d %10d %11.1f %11.3f %11.3f %7d", r.Op, r.Bytes, r.Count,
			float64(r.Time.Nanoseconds())/1e3, r.AlgBW, r.BusBW, r.Wrong)
		if bw > 0 {
			// Ring algorithms are bound by one link per rank; all-to-all
			// uses the n-1 links of a rank at once.
			bound := bw
			if r.Op == "alltoall" {
				bound *= float64(max(r.Ranks-1, 1))
			}
			fmt.Fprintf(w, " %7.1f", 100*r.BusBW*1e9/bound)
		}
		fmt.Fprintln(w)
	}
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
