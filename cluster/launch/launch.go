package launch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/cluster/pki"
	"github.com/moetrain/moetrain/metrics"
	"github.com/moetrain/moetrain/train"
)

// LaunchConfig describes a local multi-process run: an in-process
// coordinator and Workers worker processes on this machine.
type LaunchConfig struct {
	Workers int
	Job     train.JobConfig
	RunDir  string
	// WorkerCmd returns the command running one worker process; the join
	// flags (--join, --threads, --log-file, --host, --tls-cert, --tls-key,
	// --tls-ca) are appended to args.
	WorkerCmd func(args ...string) *exec.Cmd
	// Threads is each worker's kernel thread budget; 0 = max(1, cores/Workers).
	Threads int
	// Console receives the progress display; nil = none.
	Console io.Writer
	// Bar draws a progress bar (for terminals); otherwise a plain line is
	// printed every 10% of the steps.
	Bar        bool
	Log        zerolog.Logger // the coordinator's logger
	Membership cluster.MembershipConfig
	// Grace is how long workers get to exit after the job ends (or Ctrl-C)
	// before SIGTERM, and again before SIGKILL. Default 10 s.
	Grace time.Duration
	// Checkpoint configures checkpoints and resume (zero: none).
	Checkpoint cluster.CheckpointConfig
	// Metrics: see CoordinatorConfig.Metrics.
	Metrics *metrics.Metrics
	// Recovery: see CoordinatorConfig.Recovery. The launcher restarts a
	// worker process the coordinator gives up on (killing it first if it
	// hangs) in the same slot: same certificate, same log files (appended).
	Recovery cluster.RecoveryPolicy
}

type proc struct {
	idx  int
	cmd  *exec.Cmd
	out  *os.File
	log  string
	done chan struct{}
	exit cluster.WorkerExit
}

// Launch runs the job to its end. Cancelling ctx (Ctrl-C) stops the job on
// every worker, then terminates the worker processes (SIGTERM to their
// process group, SIGKILL after Grace). The run directory gets job.toml,
// coordinator.log (if the caller's logger writes there), worker-<i>.log (JSON),
// worker-<i>.out (console output), summary.json and tls/: the job's CA and
// the certificates of the coordinator, the operator and every worker
// (pki.WriteJob): the control plane is mutual TLS.
func Launch(ctx context.Context, cfg LaunchConfig) (cluster.Summary, error) {
	sum := cluster.Summary{Config: cfg.Job, Workers: cfg.Workers}
	if cfg.Workers < 1 {
		return sum, fmt.Errorf("launch: --workers %d: need at least 1", cfg.Workers)
	}
	if cfg.Grace <= 0 {
		cfg.Grace = 10 * time.Second
	}
	if cfg.Threads <= 0 {
		cfg.Threads = max(1, runtime.NumCPU()/cfg.Workers)
	}
	if err := cfg.Job.Validate(); err != nil {
		return sum, fmt.Errorf("launch: job config: %w", err)
	}
	if err := cluster.CheckRunnable(cfg.Job); err != nil {
		return sum, fmt.Errorf("launch: %w", err)
	}
	if err := cluster.CheckLayout(cfg.Job, cfg.Workers); err != nil {
		return sum, fmt.Errorf("launch: %w", err)
	}
	if err := cfg.Checkpoint.Validate(); err != nil {
		return sum, fmt.Errorf("launch: %w", err)
	}
	if err := cfg.Recovery.Validate(); err != nil {
		return sum, fmt.Errorf("launch: %w", err)
	}
	if err := os.MkdirAll(cfg.RunDir, 0o755); err != nil {
		return sum, fmt.Errorf("launch: run directory: %w", err)
	}
	var jobTOML bytes.Buffer
	if err := toml.NewEncoder(&jobTOML).Encode(cfg.Job); err != nil {
		return sum, fmt.Errorf("launch: encode job config: %w", err)
	}
	if err := os.WriteFile(filepath.Join(cfg.RunDir, "job.toml"), jobTOML.Bytes(), 0o644); err != nil {
		return sum, fmt.Errorf("launch: %w", err)
	}
	token, err := cluster.RandomToken()
	if err != nil {
		return sum, err
	}
	jobJSON, err := cluster.JobJSON(cfg.Job)
	if err != nil {
		return sum, err
	}
	jobID := filepath.Base(cfg.RunDir)
	certs, err := pki.WriteJob(filepath.Join(cfg.RunDir, "tls"), jobID, []string{"127.0.0.1", "localhost"}, cfg.Workers)
	if err != nil {
		return sum, fmt.Errorf("launch: %w", err)
	}
	serverTLS, err := certs.Coordinator.ServerConfig()
	if err != nil {
		return sum, fmt.Errorf("launch: %w", err)
	}
	prog := NewProgressView(cfg.Console, cfg.Bar, cfg.Job.Train.Steps)
	pool := &procPool{cfg: cfg, token: token, certs: certs.Workers, jobOver: make(chan struct{})}
	coord, err := cluster.NewCoordinator(cluster.CoordinatorConfig{
		Listen: "127.0.0.1:0", Token: token, TLS: serverTLS, JobID: jobID, Workers: cfg.Workers,
		TotalSteps: cfg.Job.Train.Steps, Plan: cluster.PlanRequestFor(cfg.Job), JobConfigJSON: jobJSON,
		JoinTimeout: 2 * time.Minute, Membership: cfg.Membership, Log: cfg.Log, OnStatus: prog.Update,
		Checkpoint: cfg.Checkpoint, ProcsPerCore: ProcsPerCore(cfg.Workers), Metrics: cfg.Metrics,
		Recovery: cfg.Recovery, OnEvict: pool.evict, StateDir: cfg.RunDir,
	})
	if err != nil {
		return sum, fmt.Errorf("launch: %w", err)
	}
	pool.coord, pool.addr = coord, coord.Addr()

	if err := pool.startAll(); err != nil {
		coord.Close()
		procs := pool.all()
		killGroup(procs, syscall.SIGKILL)
		waitProcs(procs, cfg.Grace)
		return sum, fmt.Errorf("launch: %w", err)
	}
	cfg.Log.Info().Int("workers", cfg.Workers).Int("threads_per_worker", cfg.Threads).Str("run_dir", cfg.RunDir).
		Int("pgid", pool.pgid).Msg("worker processes started")

	// Ctrl-C: the coordinator stops the job; the workers also get SIGTERM,
	// once the coordinator has taken the stop, so that a worker the signal
	// ends first is seen leaving a stopping job, not dying in a running one.
	stopSignals := context.AfterFunc(ctx, func() {
		coord.Submit(cluster.StopRequested{Reason: "coordinator interrupted"})
		killGroup(pool.all(), syscall.SIGTERM)
	})
	defer stopSignals()

	res, runErr := coord.Run(ctx)
	pool.mu.Lock()
	pool.over()
	pool.mu.Unlock()
	procs := pool.all()
	prog.Finish(res)
	if !waitProcs(procs, cfg.Grace) {
		cfg.Log.Warn().Dur("grace", cfg.Grace).Msg("workers still running after the job ended: SIGTERM")
		killGroup(procs, syscall.SIGTERM)
		if !waitProcs(procs, cfg.Grace) {
			cfg.Log.Error().Msg("workers ignored SIGTERM: SIGKILL")
			killGroup(procs, syscall.SIGKILL)
			waitProcs(procs, cfg.Grace)
		}
	}
	sum.Result = res
	logs := make([]string, 0, len(procs))
	for _, p := range procs {
		sum.WorkerExits = append(sum.WorkerExits, p.exit)
		p.out.Close()
		if !slices.Contains(logs, p.log) { // a replacement appends to its slot's log
			logs = append(logs, p.log)
		}
	}
	if sum.ExpertLoad, err = cluster.ExpertLoadFromLogs(logs); err != nil {
		cfg.Log.Warn().Err(err).Msg("summary: no expert load from the worker logs")
	}
	if cfg.Job.Train.Mode == train.ModeSPSA {
		if sum.SPSA, err = cluster.SPSABytesFromLogs(logs); err != nil {
			cfg.Log.Warn().Err(err).Msg("summary: no SPSA bytes from the worker logs")
		}
	}
	if err := cluster.WriteSummary(cfg.RunDir, sum); err != nil {
		return sum, err
	}
	if runErr != nil {
		return sum, fmt.Errorf("launch: %w", runErr)
	}
	if res.Phase != cluster.PhaseSucceeded {
		return sum, fmt.Errorf("launch: job %s: %s", res.Phase, res.Reason)
	}
	return sum, nil
}

// ProcsPerCore is how many of n worker processes share one of the cores
// this process may use (the CPUs it may run on, or fewer under a cgroup CPU
// limit, which GOMAXPROCS follows).
func ProcsPerCore(n int) float64 {
	return float64(n) / float64(max(1, min(runtime.NumCPU(), runtime.GOMAXPROCS(0))))
}

// startWorker starts worker process i (its slot: certificate, log files,
// appended to by a replacement) in process group pgid (0: a new group).
func startWorker(cfg LaunchConfig, i, pgid int, addr, token string, cert pki.Files) (*proc, error) {
	p := &proc{idx: i, done: make(chan struct{}), log: filepath.Join(cfg.RunDir, fmt.Sprintf("worker-%d.log", i))}
	out, err := os.OpenFile(filepath.Join(cfg.RunDir, fmt.Sprintf("worker-%d.out", i)), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	p.out = out
	p.cmd = cfg.WorkerCmd("--join", addr, "--threads", strconv.Itoa(cfg.Threads), "--log-file", p.log, "--host", "localhost",
		"--tls-cert", cert.Cert, "--tls-key", cert.Key, "--tls-ca", cert.CA)
	p.cmd.Env = append(os.Environ(), cluster.TokenEnv+"="+token,
		cluster.ProcsPerCoreEnv+"="+strconv.FormatFloat(ProcsPerCore(cfg.Workers), 'g', 4, 64))
	p.cmd.Stdout, p.cmd.Stderr = out, out
	// One process group for all workers (signalled together); on Linux
	// each dies with this process even if it is SIGKILLed.
	p.cmd.SysProcAttr = WorkerProcAttr(pgid)
	if err := p.cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("start worker %d (%s): %w", i, p.cmd.Path, err)
	}
	p.exit = cluster.WorkerExit{Index: i, Pid: p.cmd.Process.Pid, Log: p.log}
	go func() {
		err := p.cmd.Wait()
		p.exit.ExitCode = p.cmd.ProcessState.ExitCode()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				p.exit.Signal = ws.Signal().String()
			}
		}
		close(p.done)
	}()
	return p, nil
}

func exitText(e cluster.WorkerExit) string {
	if e.Signal != "" {
		return "signal " + e.Signal
	}
	return fmt.Sprintf("code %d", e.ExitCode)
}

// killGroup signals the workers' process group (and each worker, in case one
// left the group).
func killGroup(procs []*proc, sig syscall.Signal) {
	if len(procs) == 0 {
		return
	}
	_ = syscall.Kill(-procs[0].cmd.Process.Pid, sig)
	for _, p := range procs {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Signal(sig)
		}
	}
}

// waitProcs waits up to d for every process to exit; false if some did not.
func waitProcs(procs []*proc, d time.Duration) bool {
	deadline := time.After(d)
	for _, p := range procs {
		select {
		case <-p.done:
		case <-deadline:
			return false
		}
	}
	return true
}

// ProgressView shows a job's progress: a bar (for terminals), otherwise a
// line every 10% of the steps. Feed it CoordinatorConfig.OnStatus.
type ProgressView struct {
	mu      sync.Mutex
	w       io.Writer
	bar     *barView
	total   int
	nextPct int
	printed int       // last step printed
	t0      time.Time // first report seen, at step step0: the ETA's baseline
	step0   int
}

// NewProgressView writes to w (nil = nowhere) for a job of total steps.
func NewProgressView(w io.Writer, bar bool, total int) *ProgressView {
	v := &ProgressView{w: w, total: total, nextPct: 10}
	if w != nil && bar {
		v.bar = newBarView(w, total)
	}
	return v
}

// Update shows s; safe for concurrent use.
func (v *ProgressView) Update(s cluster.Status) {
	if v.w == nil || s.Phase != cluster.PhaseRunning || s.Step == 0 {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.t0.IsZero() {
		v.t0, v.step0 = time.Now(), s.Step
	}
	if v.bar != nil {
		v.bar.set(s)
		return
	}
	pct := 100 * s.Step / max(1, v.total)
	if s.Step == v.printed || pct < v.nextPct && s.Step != 1 {
		return
	}
	v.printed = s.Step
	for v.nextPct <= pct {
		v.nextPct += 10
	}
	eta := "?"
	if s.Step > v.step0 {
		eta = time.Duration(float64(time.Since(v.t0)) / float64(s.Step-v.step0) * float64(v.total-s.Step)).Round(time.Second).String()
	}
	fmt.Fprintf(v.w, "step %d/%d  loss %.4f  %s  %.0f tok/s  ETA %s\n", s.Step, v.total, s.Loss, valText(s), s.TokensPerSec, eta)
}

// Finish prints how the job ended.
func (v *ProgressView) Finish(r cluster.Result) {
	if v.w == nil {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.bar != nil {
		v.bar.finish()
	}
	s := r.Status
	fmt.Fprintf(v.w, "job %s after %d/%d steps in %s: loss %.4f  %s  %.0f tok/s\n", r.Phase, s.Step, s.TotalSteps,
		r.Ended.Sub(r.Started).Round(time.Millisecond), s.Loss, valText(s), s.TokensPerSec)
	if r.Phase != cluster.PhaseSucceeded {
		fmt.Fprintf(v.w, "reason: %s\n", r.Reason)
	}
}

func valText(s cluster.Status) string {
	if !s.HasVal {
		return "val -"
	}
	return fmt.Sprintf("val %.4f", s.ValLoss)
}
