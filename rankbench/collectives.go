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
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/collective"
)

// Collectives are the options of `bench collectives` and of the hidden
// per-rank helper it re-executes; the fields are named after their flags,
// and Validate resolves the "auto" ones.
type Collectives struct {
	Workers          int
	Transport        string
	Ops              string
	Sizes            string
	Iters            int
	Warmup           int
	Reps             int
	LinkBW           string
	LinkLatency      time.Duration
	Segment          int
	Small            int
	Halving          int
	Timeout          time.Duration
	JSON             bool
	SocketBufferFlag string        // --socket-buffer as given: "auto" or bytes
	SocketBuffer     int           // resolved by validate
	SpinFlag         string        // --spin as given: "auto" or a duration
	Spin             time.Duration // resolved by validate
	YieldFlag        string        // --spin-yield as given: "auto", "true" or "false"
	SpinYield        bool          // resolved by validate
	Engine           bool
	Shm              bool   // --shm: ranks on one host talk through shared-memory rings, not TCP
	HostsFlag        string // --hosts: host of each rank, comma-separated ("": all one host)
	Hosts            []string
	Netns            bool   // --netns: rank r runs in network namespace Hosts[r]
	HierAllToAll     bool   // --hier-alltoall: the hierarchical all-to-all across hosts
	Congestion       string // --tcp-congestion: TCPConfig.Congestion
	Procs            int
	BindFlag         string // --bind as given: "auto", "core" or "none"
	BindCPUs         []int  // resolved by validate: rank r runs on bindCPUs[r % len]; nil: unbound
	BindCPU          int    // bench-rank: the CPU to pin this rank to, or -1
}

// Validate checks the options, resolves spin, socket buffer and binding,
// and returns the sizes, the operations and the link bandwidth (0: unshaped).
func (f *Collectives) Validate() (sizes []int, ops []string, bw float64, err error) {
	if f.Workers < 1 || f.Workers > 256 {
		return nil, nil, 0, fmt.Errorf("--workers %d: want 1..256", f.Workers)
	}
	if f.Transport != "tcp" && f.Transport != "inproc" {
		return nil, nil, 0, fmt.Errorf("--transport %q: want tcp or inproc", f.Transport)
	}
	if err := collective.CheckCongestion(f.Congestion); err != nil {
		return nil, nil, 0, fmt.Errorf("--tcp-congestion: %w", err)
	}
	for _, s := range strings.Split(f.Sizes, ",") {
		b, err := ParseBytes(strings.TrimSpace(s))
		if err != nil {
			return nil, nil, 0, fmt.Errorf("--sizes: %w", err)
		}
		sizes = append(sizes, b)
	}
	for _, o := range strings.Split(f.Ops, ",") {
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
	if f.LinkBW != "" {
		if bw, err = ParseBandwidth(f.LinkBW); err != nil {
			return nil, nil, 0, fmt.Errorf("--link-bw: %w", err)
		}
	}
	if f.Procs < 0 {
		return nil, nil, 0, fmt.Errorf("--gomaxprocs %d: must not be negative", f.Procs)
	}
	// Whether ranks outnumber cores decides --spin-yield and --bind auto.
	cores := runtime.NumCPU()
	var cpus []int
	if f.Transport == "tcp" {
		if cpus, err = AllowedCPUs(); err != nil {
			return nil, nil, 0, err
		}
		cores = len(cpus)
	}
	oversubscribed := f.Workers*RankProcs(f.Workers, f.Procs) > cores
	f.Hosts = nil
	if f.HostsFlag != "" {
		f.Hosts = strings.Split(f.HostsFlag, ",")
		if len(f.Hosts) != f.Workers || slices.Contains(f.Hosts, "") {
			return nil, nil, 0, fmt.Errorf("--hosts %q: want %d non-empty host names", f.HostsFlag, f.Workers)
		}
	}
	if f.Netns && (f.Hosts == nil || f.Transport != "tcp") {
		return nil, nil, 0, errors.New("--netns needs --hosts (network namespace of each rank) and --transport tcp")
	}
	if f.Spin, f.SpinYield, err = resolveSpin(f.SpinFlag, f.YieldFlag, f.Engine, oversubscribed); err != nil {
		return nil, nil, 0, err
	}
	if f.LinkLatency < 0 {
		return nil, nil, 0, fmt.Errorf("--link-latency %v: must not be negative", f.LinkLatency)
	}
	if f.SocketBuffer, err = resolveSocketBuffer(f.SocketBufferFlag, f.Engine); err != nil {
		return nil, nil, 0, err
	}
	if f.Transport == "tcp" {
		if f.BindCPUs, err = resolveBind(f.BindFlag, f.Workers, oversubscribed, cpus); err != nil {
			return nil, nil, 0, err
		}
	}
	if f.Iters < 1 || f.Reps < 1 || f.Warmup < 0 {
		return nil, nil, 0, fmt.Errorf("--iters and --reps must be ≥ 1 and --warmup ≥ 0 (got %d, %d, %d)", f.Iters, f.Reps, f.Warmup)
	}
	return sizes, ops, bw, nil
}

// AutoSpin is --spin auto: how long a progress-engine waiter with no bytes
// to move keeps trying before it blocks in poll(2). Much shorter and the
// waiter tries, blocks anyway and pays both; 200 µs catches nearly every
// peer's answer, and longer gained nothing (measured in
// docs/decisions.md#bench-collectives-defaults).
const AutoSpin = 200 * time.Microsecond

// AutoSpinYield is --spin auto when waiters yield (ranks outnumber cores).
// A yielding waiter gives its core to whoever else can run, so trying
// longer costs little, while blocking costs a wake-up that waits for a
// core (measured in the same entry as AutoSpin).
const AutoSpinYield = 2 * time.Millisecond

// resolveSpin reads --spin and --spin-yield, which apply to the progress
// engine only (given explicitly without it, they are an error). "auto"
// yields when ranks outnumber cores, and tries for AutoSpin, or
// AutoSpinYield when yielding.
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
			return AutoSpinYield, true, nil
		}
		return AutoSpin, false, nil
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

// --engine defaults to what training uses (collective.TrainingEngine,
// docs/collectives.md#one-data-path); with it, the auto settings below
// apply.

// EngineSocketBuffer is --socket-buffer auto with the progress engine. With
// it the engine writes a whole segment at once instead of in pieces as the
// peer drains them; autotuning starts a connection's send buffer at 16 KiB
// (measured in the same entry as AutoSpin). The kernel doubles the value and
// caps it at net.core.[rw]mem_max.
const EngineSocketBuffer = 2 << 20

// RankProcs is the GOMAXPROCS a rank process runs with: --gomaxprocs, else
// $GOMAXPROCS, else max(1, cores/workers) (RunCollectivesProcesses sets it).
func RankProcs(workers, procs int) int {
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
// (measured in the same entry as AutoSpin).
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

// resolveSocketBuffer reads --socket-buffer: "auto" is EngineSocketBuffer
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
		return EngineSocketBuffer, nil
	}
	return 0, nil
}

// parseBytes reads "64K", "1M", "16M", "4096", "1G" (binary multiples).
func ParseBytes(s string) (int, error) {
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
func ParseBandwidth(s string) (float64, error) {
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

func (f *Collectives) commConfig() collective.Config {
	return collective.Config{SegmentBytes: f.Segment, SmallBytes: f.Small, HalvingBytes: f.Halving, Timeout: f.Timeout, HierAllToAll: f.HierAllToAll}
}

// shape applies --link-bw and --link-latency: to every link, or with
// --hosts to the links between ranks of different hosts only.
func (f *Collectives) shape(t collective.Transport, bw float64) collective.Transport {
	if bw <= 0 && f.LinkLatency <= 0 {
		return t
	}
	if f.Hosts == nil {
		return collective.NewShaped(t, collective.LinkShape{From: -1, To: -1, Bandwidth: bw, Latency: f.LinkLatency})
	}
	var links []collective.LinkShape
	for a, ha := range f.Hosts {
		for b, hb := range f.Hosts {
			if ha != hb {
				links = append(links, collective.LinkShape{From: a, To: b, Bandwidth: bw, Latency: f.LinkLatency})
			}
		}
	}
	return collective.NewShaped(t, links...)
}

func (f *Collectives) benchConfig(ops []string, sizes []int) collective.BenchConfig {
	return collective.BenchConfig{Ops: ops, Sizes: sizes, Iters: f.Iters, Warmup: f.Warmup, Reps: f.Reps}
}

const (
	benchTokenEnv = "MOETRAIN_BENCH_TOKEN"
	// benchProfileEnv names a directory where every rank writes a CPU profile.
	benchProfileEnv = "MOETRAIN_BENCH_CPUPROFILE"
)

// RunCollectivesInProc runs the ranks as goroutines over in-process
// transports and returns rank 0's results.
func RunCollectivesInProc(ctx context.Context, f *Collectives, ops []string, sizes []int, bw float64) ([]collective.BenchResult, error) {
	ts := collective.NewInProcess(f.Workers)
	defer func() {
		for _, t := range ts {
			t.Close()
		}
	}()
	results := make([][]collective.BenchResult, f.Workers)
	errs := make([]error, f.Workers)
	var wg sync.WaitGroup
	for r := range f.Workers {
		wg.Go(func() {
			c := collective.NewWorldConfig(f.shape(ts[r], bw), f.commConfig())
			results[r], errs[r] = collective.RunBench(ctx, c, f.benchConfig(ops, sizes))
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return results[0], nil
}

// RunCollectivesProcesses starts exe once per rank with the arguments
// rankArgs gives (a command that calls RunCollectivesRank). Each rank binds a
// loopback listener and prints "ADDR host:port"; once all have, every rank
// gets the address list on stdin, builds the TCP mesh and runs the bench;
// rank 0 prints "RESULT <json>" lines.
func RunCollectivesProcesses(ctx context.Context, exe string, f *Collectives, rankArgs func(r int) []string) ([]collective.BenchResult, error) {
	var tok [16]byte
	if _, err := rand.Read(tok[:]); err != nil {
		return nil, err
	}
	n := f.Workers
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
		cmd := exec.CommandContext(ctx, exe, rankArgs(r)...)
		if f.Netns {
			cmd = exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", f.Hosts[r], exe}, rankArgs(r)...)...)
		}
		cmd.Env = append(os.Environ(), benchTokenEnv+"="+hex.EncodeToString(tok[:]))
		if f.Procs > 0 || os.Getenv("GOMAXPROCS") == "" {
			// Without a setting, ranks share the host's cores: idle Go
			// threads spinning for work would steal CPU from the ranks that
			// have some.
			cmd.Env = append(cmd.Env, fmt.Sprintf("GOMAXPROCS=%d", RankProcs(n, f.Procs)))
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

// RunCollectivesRank is one rank process of RunCollectivesProcesses: it
// pins itself to f.BindCPU (unless -1), listens on loopback, prints
// "ADDR host:port", reads "ADDRS a,b,..." from stdin, builds the TCP mesh and
// runs the bench; rank 0 prints "RESULT <json>" lines. It stops when stdin
// closes (its parent has gone).
func RunCollectivesRank(ctx context.Context, f *Collectives, rank int) error {
	log := zerolog.New(os.Stderr).With().Timestamp().Int("rank", rank).Logger()
	sizes, ops, bw, err := f.Validate()
	if err != nil {
		return err
	}
	if f.BindCPU >= 0 {
		if err := BindProcess(f.BindCPU); err != nil {
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
	ctx, cancel := context.WithTimeout(ctx, f.Timeout)
	defer cancel()
	ip := "127.0.0.1"
	if f.Netns {
		if ip, err = namespaceIP(); err != nil {
			return err
		}
	}
	ln, err := collective.ListenCongestion(net.JoinHostPort(ip, "0"), f.Congestion)
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
	if len(addrs) != f.Workers {
		return fmt.Errorf("address list has %d entries, want %d", len(addrs), f.Workers)
	}
	cfg := collective.TCPConfig{Rank: rank, Addrs: addrs, Token: token, SocketBuffer: f.SocketBuffer, SpinWait: f.Spin, SpinYield: f.SpinYield, ProgressEngine: f.Engine, Congestion: f.Congestion}
	switch {
	case f.Hosts != nil:
		cfg.Hosts = f.Hosts
	case f.Shm:
		cfg.Hosts = slices.Repeat([]string{"localhost"}, len(addrs))
	}
	if !f.Shm {
		cfg.ShmRing = collective.ShmDisabled
	}
	t, err := collective.DialMesh(ctx, ln, cfg)
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
}

// PrintCollectives writes the results as a table (or JSON lines with f.JSON).
func PrintCollectives(w io.Writer, f *Collectives, res []collective.BenchResult, bw float64) {
	if f.JSON {
		enc := json.NewEncoder(w)
		for _, r := range res {
			_ = enc.Encode(r)
		}
		return
	}
	fmt.Fprintf(w, "# bench collectives: %d ranks, transport %s, %d iters × %d reps (median), warmup %d",
		f.Workers, f.Transport, f.Iters, f.Reps, f.Warmup)
	if f.Transport == "tcp" && f.Shm {
		fmt.Fprintf(w, ", shared memory within a host (rings of up to %d KiB per direction)", collective.DefaultShmRing>>10)
	}
	if f.Transport == "tcp" && (!f.Shm || f.Hosts != nil) {
		fmt.Fprint(w, ", TCP")
		if f.Shm {
			fmt.Fprint(w, " between hosts")
		}
		if f.Engine {
			fmt.Fprintf(w, ", progress engine (spin %v", f.Spin)
			if f.SpinYield {
				fmt.Fprint(w, ", yielding")
			}
			fmt.Fprint(w, ")")
		} else {
			fmt.Fprint(w, ", reader goroutines")
		}
		if f.SocketBuffer > 0 {
			fmt.Fprintf(w, ", socket buffers %d B", f.SocketBuffer)
		}
		fmt.Fprintf(w, ", congestion control %s", collective.CongestionChoice(f.Congestion))
	}
	if f.Transport == "tcp" {
		if f.Hosts != nil {
			fmt.Fprintf(w, ", hosts %v", f.Hosts)
			if f.HierAllToAll {
				fmt.Fprint(w, " (hierarchical all-to-all)")
			}
		}
		if f.BindCPUs != nil {
			fmt.Fprintf(w, ", ranks bound to CPUs %v", f.BindCPUs[:min(f.Workers, len(f.BindCPUs))])
		} else {
			fmt.Fprint(w, ", ranks not bound")
		}
	}
	if bw > 0 || f.LinkLatency > 0 {
		fmt.Fprintf(w, ", links %.3g GB/s %v", bw/1e9, f.LinkLatency)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "# training uses: %s\n", collective.TrainingDataPath())
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

// namespaceIP is the first global IPv4 address of this network namespace
// (a --netns rank listens there, where the other namespaces reach it).
func namespaceIP() (string, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", err
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && ipn.IP.IsGlobalUnicast() {
			return ipn.IP.String(), nil
		}
	}
	return "", errors.New("--netns: this namespace has no global IPv4 address")
}
