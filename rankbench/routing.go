package rankbench

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

	"github.com/moetrain/moetrain/collective"
	"github.com/moetrain/moetrain/cpuquota"
	"github.com/moetrain/moetrain/tensor"
	"github.com/moetrain/moetrain/train"
)

// Routing are the options of `bench routing`, named after its flags.
type Routing struct {
	Config   string
	EP       int
	K        int
	Steps    int
	Warmup   int
	Routers  string
	Skew     float64
	BiasRate float64
	Threads  int
	RankCPU  float64
	Timeout  time.Duration
	JSON     bool
}

// Job loads --config or the default job.
func (f *Routing) Job() (train.JobConfig, error) {
	if f.Config == "" {
		return train.DefaultJobConfig(), nil
	}
	return train.LoadJobConfig(f.Config)
}

// Specs validates the flags and builds one spec per configuration.
func (f *Routing) Specs(job train.JobConfig) ([]RoutingBenchSpec, error) {
	e := job.Model.Experts
	switch {
	case f.EP < 2 || f.EP > 64:
		return nil, fmt.Errorf("--ep %d: want 2..64 (imbalance over expert-parallel ranks needs at least 2)", f.EP)
	case e%f.EP != 0:
		return nil, fmt.Errorf("--ep %d must divide model.experts = %d", f.EP, e)
	case f.K < 0 || f.K > e:
		return nil, fmt.Errorf("--k %d: want 0 (= ep) or 1..model.experts = %d", f.K, e)
	case f.Steps < 1 || f.Warmup < 0:
		return nil, fmt.Errorf("--steps %d must be >= 1 and --warmup %d >= 0", f.Steps, f.Warmup)
	case f.Threads < 1:
		return nil, fmt.Errorf("--threads %d: must be >= 1", f.Threads)
	case !(f.Skew >= 0 && f.Skew < 1e6):
		return nil, fmt.Errorf("--skew %g: want a finite value >= 0", f.Skew)
	case !(f.BiasRate > 0 && f.BiasRate < 1e6):
		return nil, fmt.Errorf("--bias-rate %g: want a finite value > 0", f.BiasRate)
	case f.Timeout <= 0:
		return nil, fmt.Errorf("--timeout %v: must be > 0", f.Timeout)
	case !(f.RankCPU == 0 || f.RankCPU >= minRankCPU && f.RankCPU < 1e6):
		return nil, fmt.Errorf("--rank-cpu %g: want 0 (off) or at least %g cores per rank", f.RankCPU, minRankCPU)
	case f.RankCPU*float64(f.EP) > float64(runtime.NumCPU())+1e-9:
		return nil, fmt.Errorf("--rank-cpu %g × --ep %d = %g cores, more than the %d of this machine: the ranks could not all get their share at once",
			f.RankCPU, f.EP, f.RankCPU*float64(f.EP), runtime.NumCPU())
	}
	k := f.K
	if k == 0 {
		k = f.EP
		if k > e {
			return nil, fmt.Errorf("--k defaults to ep = %d, more than model.experts = %d: set --k", f.EP, e)
		}
	}
	var names []string
	for _, s := range strings.Split(f.Routers, ",") {
		if s = strings.TrimSpace(s); s != "" {
			names = append(names, s)
		}
	}
	cases, err := RoutingCases(names, f.EP, k, f.BiasRate, job.Model.BiasUpdateRate)
	if err != nil {
		return nil, fmt.Errorf("--routers: %w", err)
	}
	specs := make([]RoutingBenchSpec, len(cases))
	for i, c := range cases {
		if specs[i], err = NewRoutingBenchSpec(job, c, f.EP, f.Skew, f.Warmup, f.Steps, f.Threads); err != nil {
			return nil, err
		}
	}
	return specs, nil
}

// minRankCPU is the smallest --rank-cpu: a rank that slow would take
// minutes per step of any model worth measuring (the kernel's own floor,
// 0.001 cores, is far below it).
const minRankCPU = 0.01

// RunRouting runs every spec in turn as its own set of rank processes
// of exe and summarises each. rankCPU > 0 puts each rank process in its own
// cgroup limited to that many cores.
func RunRouting(ctx context.Context, exe string, specs []RoutingBenchSpec, rankCPU float64, progress io.Writer) ([]RoutingRow, error) {
	var rows []RoutingRow
	for i, s := range specs {
		t0 := time.Now()
		// Unique per coordinator, configuration and rank (the rank is
		// appended), so a group left behind never collides with a later one.
		prefix := fmt.Sprintf("moetrain-bench-%d-%d", os.Getpid(), i)
		res, stats, err := runRoutingRanks(ctx, exe, s, rankCPU, prefix)
		if err != nil {
			return nil, err
		}
		row, err := SummarizeRouting(s, res)
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
	result *RoutingRankResult
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
func runRoutingRanks(ctx context.Context, exe string, spec RoutingBenchSpec, rankCPU float64, groupPrefix string) (results []RoutingRankResult, stats []cpuquota.Stat, err error) {
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
	quotas := make([]*cpuquota.Quota, n)
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
		stats = make([]cpuquota.Stat, n)
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
		var quota *cpuquota.Quota
		if rankCPU > 0 {
			if quota, err = cpuquota.New(fmt.Sprintf("%s-%d", groupPrefix, r), rankCPU); err != nil {
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
		wg.Go(func() {
			events <- readRoutingChild(r, stdout, ch, events)
		})
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
	results = make([]RoutingRankResult, n)
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
			var res RoutingRankResult
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

// RunRoutingRank is one rank process of RunRouting: it listens on loopback,
// writes "ADDR host:port" to out, reads "ADDRS a,b,..." and "SPEC <json>" from
// stdin, builds the TCP mesh, runs the spec and writes "RESULT <json>". It
// stops when stdin ends (its parent has gone) or after timeout.
func RunRoutingRank(ctx context.Context, rank, ranks int, timeout time.Duration, out io.Writer) error {
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
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ln, err := collective.Listen("127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
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
	var spec RoutingBenchSpec
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
	res, err := runRoutingSpec(ctx, t, spec, log)
	if err != nil {
		return err
	}
	b, err := json.Marshal(res)
	if err != nil {
		return fmt.Errorf("rank %d: encoding the result: %w", rank, err)
	}
	_, err = fmt.Fprintf(out, "RESULT %s\n", b)
	return err
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

// RoutingReport is the --json output.
type RoutingReport struct {
	EP      int     `json:"ep"`
	K       int     `json:"k"`
	Skew    float64 `json:"skew"`
	Warmup  int     `json:"warmup"`
	Steps   int     `json:"steps"`
	Threads int     `json:"threads"`
	// RankCPU is --rank-cpu: each rank process's cgroup CPU quota in
	// cores, 0 when the ranks share the machine's cores.
	RankCPU float64      `json:"rank_cpu"`
	Anchor  string       `json:"anchor"`
	Rows    []RoutingRow `json:"rows"`
}

// PrintRouting writes the rows as a table (or the JSON report with f.JSON).
func PrintRouting(w io.Writer, f *Routing, spec RoutingBenchSpec, rows []RoutingRow, anchor string) error {
	if f.JSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(RoutingReport{EP: f.EP, K: spec.Case.TopK, Skew: f.Skew, Warmup: f.Warmup, Steps: f.Steps,
			Threads: f.Threads, RankCPU: f.RankCPU, Anchor: anchor, Rows: rows})
	}
	m, d := spec.Job.Model, spec.Job.Data
	data := d.Path
	if data == "" {
		data = "embedded corpus"
	}
	fmt.Fprintf(w, "# bench routing: ep=%d rank processes (mesh dp=%d ep=%d, TCP loopback), %d kernel thread(s) each, %d cores\n",
		f.EP, f.EP, f.EP, f.Threads, runtime.NumCPU())
	fmt.Fprintf(w, "# model: d_model=%d layers=%d experts=%d expert_hidden=%d score=%s; k=%d for every router\n",
		m.DModel, m.Layers, m.Experts, m.ExpertHidden, m.Score, spec.Case.TopK)
	fmt.Fprintf(w, "# data: %s, %s sampler, %d×%d tokens per rank per step; skew +%g on EP rank 0's experts; warmup %d, %d timed steps\n",
		data, d.Mode, d.BatchSize, d.SeqLen, f.Skew, f.Warmup, f.Steps)
	if f.RankCPU > 0 {
		fmt.Fprintf(w, "# rank cpu: %.2f cores per rank (cgroup cpu quota): one device per EP rank, so the busiest rank sets the step time\n", f.RankCPU)
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
