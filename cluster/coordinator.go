package cluster

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	pb "github.com/moetrain/moetrain/cluster/proto"
	"github.com/moetrain/moetrain/metrics"
)

// CoordinatorConfig describes one job served by a coordinator.
type CoordinatorConfig struct {
	// Listen is the control-plane (gRPC) address, host:port; port 0 picks one.
	Listen string
	// Token is the job token: every worker must present its control-plane
	// credential (ControlCredential), gossip uses its key (GossipKey).
	Token string
	// TLS is the server side of mutual TLS on the control plane
	// (pki.Files.ServerConfig); nil = cleartext.
	TLS *tls.Config
	// JobID names the job in logs and status.
	JobID string
	// Workers is how many workers the job waits for before it starts.
	Workers int
	// TotalSteps is the number of training steps (for progress and ETA).
	TotalSteps int
	// Plan lays the job out over the joined workers (see MakePlan).
	Plan PlanRequest
	// JobConfigJSON is sent verbatim to every worker in its start command.
	JobConfigJSON []byte
	// JoinTimeout bounds the wait for all workers; 0 waits forever.
	JoinTimeout time.Duration
	// DrainTimeout bounds the wait for workers to leave after abort/stop.
	// Default 15 s.
	DrainTimeout time.Duration
	// StreamOpenTimeout bounds the time between a worker's join and its
	// opening of the command stream (the very next call it makes); a worker
	// that misses it is taken for dead. Default 20 s.
	StreamOpenTimeout time.Duration
	// FailureGrace: see CoreConfig. Default 1 s.
	FailureGrace time.Duration
	// ProcsPerCore is how many worker processes share a core on the
	// busiest host (a local launch of 64 workers on 2 cores: 32); 0 = not
	// known, taken as 1. With Workers it sets LivenessBound, the time a
	// live worker may take to answer a gRPC ping or refute a gossip death.
	ProcsPerCore float64
	// GossipConfirm is how long a worker that gossip declared dead has to
	// refute it (a starved process comes back alive) before it is taken
	// for dead. Default LivenessBound(Workers, ProcsPerCore).
	GossipConfirm time.Duration
	// Membership tunes gossip; BindAddr "" = the Listen IP.
	Membership MembershipConfig
	Log        zerolog.Logger
	// OnStatus, if set, is called from the coordinator loop after every
	// progress report and phase change. It must return quickly.
	OnStatus func(Status)
	// Checkpoint configures checkpoints and resume (zero: none).
	Checkpoint CheckpointConfig
	// CommitTimeout bounds one checkpoint commit (manifest, renames,
	// fsyncs, pruning). Default 5 min.
	CommitTimeout time.Duration
	// Metrics, if set, receives the job's progress, expert load and
	// checkpoint outcomes (docs/metrics.md); its limits should be
	// MetricsLimits of the job.
	Metrics *metrics.Metrics
	// Recovery is the policy for a worker's death or hang (zero: the job
	// fails, docs/control-plane.md#automatic-recovery).
	Recovery RecoveryPolicy
	// OnEvict, if set, is called (from the coordinator loop; it must return
	// quickly) for every worker recovery gives up on: a launcher kills the
	// process if it is its own and, with Replace, starts a new one.
	OnEvict func(Evict)
	// StateDir is where the job-state file is kept (the run directory;
	// "" = none). With Takeover, a job state found there that has not
	// ended is continued: next generation, from the newest committed
	// checkpoint (a coordinator restarted after a crash).
	StateDir string
	Takeover bool
}

// CurvePoint is one point of the training curve kept for the summary.
type CurvePoint struct {
	Step         int      `json:"step"`
	Loss         float64  `json:"loss"`
	TokensPerSec float64  `json:"tokens_per_sec"`
	ValLoss      *float64 `json:"val_loss,omitempty"`
	Elapsed      float64  `json:"elapsed_s"`
}

// Result is how a job ended.
type Result struct {
	JobID   string       `json:"job_id"`
	Phase   Phase        `json:"phase"`
	Reason  string       `json:"reason"`
	Plan    *Plan        `json:"plan,omitempty"`
	Status  Status       `json:"status"`
	Curve   []CurvePoint `json:"curve"`
	Started time.Time    `json:"started"`
	Ended   time.Time    `json:"ended"`
	// ResumedFrom is the checkpoint every rank restored ("" = none) and
	// ResumedStep its step.
	ResumedFrom string `json:"resumed_from,omitempty"`
	ResumedStep int64  `json:"resumed_step,omitempty"`
	// Recoveries lists every recovery of the job (coordinator takeovers
	// included) with its cause, steps redone and time lost; Restarts
	// counts them.
	Recoveries []RecoveryRecord `json:"recoveries,omitempty"`
	Restarts   int              `json:"restarts,omitempty"`
}

// loopReq is one unit of work for the coordinator loop: an event for the core
// (reply gets its commands) or a function run on the loop goroutine.
type loopReq struct {
	ev    Event
	fn    func()
	reply chan []Command
}

// Coordinator serves one job: gRPC control plane + gossip membership around
// a Core. Create with NewCoordinator, then Run.
type Coordinator struct {
	cfg    CoordinatorConfig
	log    zerolog.Logger
	ln     net.Listener
	srv    *grpc.Server
	member *Membership
	core   *Core
	start  time.Time

	reqs chan loopReq
	done chan struct{} // closed when the job has ended

	mu       sync.Mutex
	outboxes map[string]chan *pb.Command
	opened   map[string]bool   // the worker opened its command stream
	suspects map[string]uint64 // declared dead by gossip, not refuted yet: generation of the death
	left     map[string]bool   // the worker said it is leaving (its gossip death is no news)
	deaths   uint64            // gossip deaths so far (generations)

	gossipAnyIP bool // gossip bound to 0.0.0.0

	markStep, markVal int // the core's ProgressMark at the last progress notify
	planJSON          []byte
	planJSONOf        *Plan // the plan planJSON encodes

	curve   []CurvePoint
	curveAt metrics.CurveCursor // which statuses add curve points
	result  Result

	ckpt    *coordCheckpoints
	commits sync.WaitGroup // commits in flight
	spsa    *coordSPSA     // an SPSA job's log and member sets; nil otherwise

	metricsWarn sync.Once // the first report the metrics refuse is a warning

	takeover  *JobState          // the state taken over; nil for a new job
	restarts  prometheus.Counter // nil without metrics
	counted   int                // recoveries counted in restarts
	saved     string             // what the job-state file last recorded (stateKey)
	savedStep int                // and the step it recorded
	savedAt   time.Time          // when
}

// NewCoordinator binds the control-plane and gossip ports. A busy port is an
// error that says so.
func NewCoordinator(cfg CoordinatorConfig) (*Coordinator, error) {
	if cfg.Workers < 1 {
		return nil, fmt.Errorf("coordinator: %d workers: need at least 1", cfg.Workers)
	}
	if cfg.Token == "" {
		return nil, errors.New("coordinator: empty job token")
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 15 * time.Second
	}
	if cfg.FailureGrace <= 0 {
		cfg.FailureGrace = time.Second
	}
	bound := LivenessBound(cfg.Workers, cfg.ProcsPerCore)
	if cfg.StreamOpenTimeout <= 0 {
		cfg.StreamOpenTimeout = max(20*time.Second, 2*bound)
	}
	if cfg.GossipConfirm <= 0 {
		cfg.GossipConfirm = bound
	}
	if cfg.CommitTimeout <= 0 {
		cfg.CommitTimeout = 5 * time.Minute
	}
	if err := cfg.Recovery.Validate(); err != nil {
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	counted := 0
	takeover, err := loadTakeover(&cfg)
	if err != nil {
		return nil, err
	}
	ckpt, err := openCoordCheckpoints(cfg.Checkpoint, cfg.Log)
	if err != nil {
		return nil, fmt.Errorf("checkpoints: %w", err)
	}
	sp, err := newCoordSPSA(cfg)
	if err != nil {
		return nil, err
	}
	if takeover != nil {
		// The checkpoint directory is the truth: a commit may have been
		// published after the state file's last write.
		takeover.LastCheckpoint = -1
		if ckpt.store != nil && ckpt.resumeDir != "" && ckpt.resumeDir == ckpt.store.StepDir(ckpt.resumeStep) {
			takeover.LastCheckpoint = int(ckpt.resumeStep)
		}
		counted = takeover.Restarts
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		if sp != nil {
			sp.keeper.Close()
		}
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("coordinator: cannot listen on %s: address already in use (another coordinator or program holds this port; pick another --listen)", cfg.Listen)
		}
		return nil, fmt.Errorf("coordinator: listen on %s: %w", cfg.Listen, err)
	}
	c := &Coordinator{cfg: cfg, log: cfg.Log, ln: ln, reqs: make(chan loopReq), done: make(chan struct{}),
		outboxes: map[string]chan *pb.Command{}, opened: map[string]bool{}, suspects: map[string]uint64{}, left: map[string]bool{},
		curveAt: metrics.NewCurveCursor(), ckpt: ckpt, spsa: sp, takeover: takeover, restarts: restartsCounter(cfg.Metrics), counted: counted}
	c.core = NewCore(CoreConfig{
		ExpectedWorkers: cfg.Workers,
		TotalSteps:      cfg.TotalSteps,
		Plan:            func(ws []WorkerInfo) (Plan, error) { return MakePlan(cfg.Plan, ws) },
		JoinTimeout:     cfg.JoinTimeout,
		DrainTimeout:    cfg.DrainTimeout,
		FailureGrace:    cfg.FailureGrace,
		CommitTimeout:   cfg.CommitTimeout,
		Recovery:        cfg.Recovery,
		ShrinkPlan:      func(ws []WorkerInfo) (Plan, error) { return shrinkPlan(cfg.Plan, ws) },
		Takeover:        takeover,
		SPSAJoin:        sp != nil,
		SPSAJoinTimeout: cfg.Recovery.withDefaults().RejoinTimeout,
	})
	if takeover == nil {
		c.core.SetStartStep(int(ckpt.resumeStep))
	}
	mcfg := JobMembership(cfg.Membership, cfg.Workers, cfg.ProcsPerCore)
	if mcfg.BindAddr == "" {
		mcfg.BindAddr = ln.Addr().(*net.TCPAddr).IP.String()
		if ip := ln.Addr().(*net.TCPAddr).IP; ip.IsUnspecified() {
			mcfg.BindAddr = "0.0.0.0"
		}
	}
	c.gossipAnyIP = mcfg.BindAddr == "0.0.0.0"
	meta, _ := json.Marshal(map[string]string{"role": "coordinator", "job": cfg.JobID})
	c.member, err = StartMembershipWatch("coordinator", meta, cfg.Token, mcfg, c.log, MemberWatch{
		Dead:  c.gossipDead,
		Alive: c.gossipAlive,
		Left: func(name string) {
			c.Submit(Lost{ID: name, Reason: "gossip: left the cluster (process exiting)"})
		},
	})
	if err != nil {
		ln.Close()
		c.closeSPSA()
		return nil, err
	}
	// Accepted connections get the kernel keepalive (liveness.go); a
	// worker that never answers pings is dropped after the liveness bound.
	c.ln = keepAliveListener{ln}
	c.srv = grpc.NewServer(
		grpc.Creds(serverCreds(cfg.TLS, c.log)),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: keepaliveTime, Timeout: bound}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: time.Second, PermitWithoutStream: true}),
	)
	c.log.Debug().Dur("liveness_bound", bound).Dur("gossip_confirm", cfg.GossipConfirm).
		Dur("stream_open_timeout", cfg.StreamOpenTimeout).Float64("procs_per_core", cfg.ProcsPerCore).
		Dur("gossip_probe_interval", mcfg.ProbeInterval).Dur("gossip_probe_timeout", mcfg.ProbeTimeout).Msg("failure detection")
	pb.RegisterCoordinatorServer(c.srv, &service{c: c, cred: ControlCredential(cfg.Token)})
	return c, nil
}

// Addr is the control-plane address workers join.
func (c *Coordinator) Addr() string { return c.ln.Addr().String() }

// GossipAddr is the coordinator's memberlist address.
func (c *Coordinator) GossipAddr() string { return c.member.Addr() }

// GossipMembers is how many members the coordinator's gossip sees alive,
// itself included.
func (c *Coordinator) GossipMembers() int { return c.member.AliveMembers() }

// Submit hands an event to the loop and returns its commands; nil once the
// job has ended.
func (c *Coordinator) Submit(ev Event) []Command {
	cmds, _ := c.call(loopReq{ev: ev})
	return cmds
}

// onLoop runs fn on the loop goroutine; false once the job has ended.
func (c *Coordinator) onLoop(fn func()) bool {
	_, ok := c.call(loopReq{fn: fn})
	return ok
}

// call hands r (its event or function) to the loop and waits for the
// reply; false once the job has ended.
func (c *Coordinator) call(r loopReq) ([]Command, bool) {
	r.reply = make(chan []Command, 1)
	select {
	case c.reqs <- r:
	case <-c.done:
		return nil, false
	}
	select {
	case cmds := <-r.reply:
		return cmds, true
	case <-c.done:
		return nil, false
	}
}

// Run serves the job until it ends. Cancelling ctx stops the job on every
// worker (as `coordinator stop` does) and waits for them to leave, bounded by
// DrainTimeout.
func (c *Coordinator) Run(ctx context.Context) (Result, error) {
	c.start = time.Now()
	c.result = Result{JobID: c.cfg.JobID, Started: c.start, ResumedFrom: c.ckpt.resumeDir, ResumedStep: c.ckpt.resumeStep}
	if c.takeover != nil {
		c.log.Warn().Str("job", c.takeover.JobID).Str("was", string(c.takeover.Phase)).Int("generation", c.core.Status().Generation).
			Int("last_checkpoint", c.takeover.LastCheckpoint).Msg("took over the job from the run directory's job state: waiting for its workers to rejoin")
	}
	c.saveState()
	if c.cfg.Metrics != nil {
		c.cfg.Metrics.SetStart(c.start, c.ckpt.resumeStep)
		c.recordStatus(c.core.Status())
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- c.srv.Serve(c.ln) }()
	c.log.Info().Str("listen", c.Addr()).Str("gossip", c.GossipAddr()).Int("workers", c.cfg.Workers).
		Msg("coordinator waiting for workers")
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	interrupted := false
	ctxDone := ctx.Done()
	for !c.core.Phase().Final() {
		select {
		case <-ctxDone:
			ctxDone, interrupted = nil, true
			c.log.Warn().Msg("coordinator interrupted: stopping the job on every worker")
			c.apply(c.core.Step(StopRequested{Reason: "coordinator interrupted"}))
		case r := <-c.reqs:
			if r.fn != nil {
				r.fn()
				r.reply <- nil
				continue
			}
			// The core's clock is the last tick: one now dates the event
			// (a recovery's detection time) to the millisecond.
			c.apply(c.core.Step(Tick{Now: time.Since(c.start)}))
			if c.core.Phase().Final() {
				r.reply <- nil
				continue
			}
			cmds := c.core.Step(r.ev)
			c.apply(cmds)
			// A progress report that moves neither the slowest rank's
			// step nor the validation loss changes nothing the curve,
			// OnStatus or the job state follow; building the whole status per
			// report does not scale with the workers (docs/planner.md#control-plane-scale).
			if _, ok := r.ev.(Progress); ok && len(cmds) == 0 {
				if step, val := c.core.ProgressMark(); step != c.markStep || val != c.markVal {
					c.markStep, c.markVal = step, val
					c.notify()
					c.saveState()
				}
			}
			r.reply <- cmds
		case <-tick.C:
			c.apply(c.core.Step(Tick{Now: time.Since(c.start)}))
		case err := <-serveErr:
			c.apply(c.core.Step(StopRequested{Reason: fmt.Sprintf("control plane stopped: %v", err)}))
		}
	}
	close(c.done)
	c.waitCommits()
	c.result.Ended = time.Now()
	c.result.Status = c.core.Status()
	c.result.Plan = c.core.Plan()
	c.result.Curve = c.curve
	c.result.Recoveries, c.result.Restarts = c.core.Recoveries(), c.result.Status.Restarts
	c.saveState()
	c.shutdown()
	if interrupted && c.result.Phase != PhaseFailed {
		return c.result, fmt.Errorf("interrupted: the job was stopped on every worker: %w", ctx.Err())
	}
	return c.result, nil
}

// ended reports whether the job has ended.
func (c *Coordinator) ended() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// waitCommits waits (bounded by CommitTimeout) for commits still in flight
// when the job ended, so a complete checkpoint is not cut off by the exit.
func (c *Coordinator) waitCommits() {
	done := make(chan struct{})
	go func() { c.commits.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(c.cfg.CommitTimeout):
		c.log.Error().Dur("timeout", c.cfg.CommitTimeout).Msg("a checkpoint commit did not finish; exiting without it")
	}
}

// gossipDead starts the refutation window of a worker gossip declared dead:
// a starved process refutes its death once it runs (gossipAlive), a dead or
// cut-off one cannot, and is taken for lost when the window ends. A dead
// process has usually been found already by its closed command stream.
func (c *Coordinator) gossipDead(name string) {
	c.mu.Lock()
	if c.left[name] {
		c.mu.Unlock()
		return
	}
	c.deaths++
	gen := c.deaths
	c.suspects[name] = gen
	c.mu.Unlock()
	window := c.cfg.GossipConfirm
	c.log.Info().Str("worker", name).Dur("window", window).Msg("gossip declared the worker dead; waiting for it to refute")
	time.AfterFunc(window, func() {
		c.mu.Lock()
		g, ok := c.suspects[name]
		if ok && g == gen {
			delete(c.suspects, name)
		}
		c.mu.Unlock()
		if ok && g == gen {
			c.Submit(Lost{ID: name, Reason: fmt.Sprintf("gossip: stopped answering probes and did not refute its death within %v (host down or network cut)", window)})
		}
	})
}

// gossipAlive ends the refutation window of a worker that came back.
func (c *Coordinator) gossipAlive(name string) {
	c.mu.Lock()
	_, ok := c.suspects[name]
	delete(c.suspects, name)
	c.mu.Unlock()
	if ok {
		c.log.Info().Str("worker", name).Msg("gossip: the worker refuted its death (it was slow, not dead)")
	}
}

// Abandon fails the job with reason (aborting every worker). It does not
// wait; it is a no-op once the job has ended.
func (c *Coordinator) Abandon(reason string) {
	go c.Submit(JobFailed{Reason: reason})
}

// Close releases the ports of a coordinator that was never Run.
func (c *Coordinator) Close() {
	c.srv.Stop()
	c.ln.Close()
	c.member.Close(time.Second)
	c.closeSPSA()
}

func (c *Coordinator) shutdown() {
	stopped := make(chan struct{})
	go func() { c.srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(2 * time.Second):
		c.srv.Stop()
	}
	c.member.Close(time.Second)
	c.closeSPSA()
}

// apply carries out the core's commands. It runs on the loop goroutine.
func (c *Coordinator) apply(cmds []Command) {
	for _, cmd := range cmds {
		switch x := cmd.(type) {
		case Accept:
			c.log.Info().Str("worker", x.ID).Str("host", x.Info.Host).Str("data_addr", x.Info.DataAddr).
				Int("pid", x.Info.Pid).Int("cores", x.Info.Cores).Msg("worker joined")
			c.mu.Lock()
			c.outboxes[x.ID] = make(chan *pb.Command, 8)
			c.mu.Unlock()
			// A worker that dies between its join and opening the command
			// stream is not seen by the stream watch (nor, possibly, gossip).
			id, limit := x.ID, c.cfg.StreamOpenTimeout
			time.AfterFunc(limit, func() {
				c.mu.Lock()
				ok := c.opened[id]
				c.mu.Unlock()
				if !ok {
					c.Submit(Lost{ID: id, Reason: fmt.Sprintf("joined but did not open its command stream within %v", limit)})
				}
			})
		case StartWorker:
			c.sendTo(x.ID, c.startCommand(x))
		case RejoinWorker:
			c.log.Warn().Str("worker", x.ID).Str("reason", x.Reason).Msg("recovery: telling the worker to rejoin")
			c.sendTo(x.ID, &pb.Command{Kind: &pb.Command_Rejoin{Rejoin: &pb.Rejoin{Reason: x.Reason}}})
		case Evict:
			c.evict(x)
		case AbortWorker:
			c.log.Warn().Str("worker", x.ID).Str("reason", x.Reason).Msg("aborting worker")
			c.sendTo(x.ID, &pb.Command{Kind: &pb.Command_Abort{Abort: &pb.Abort{Reason: x.Reason}}})
		case StopWorker:
			c.log.Info().Str("worker", x.ID).Str("reason", x.Reason).Msg("stopping worker")
			c.sendTo(x.ID, &pb.Command{Kind: &pb.Command_Stop{Stop: &pb.StopCommand{Reason: x.Reason}}})
		case CommitCheckpoint:
			// Off the loop: a commit re-checks shards and fsyncs; the core
			// waits for CheckpointCommitted, bounded by CommitTimeout.
			plan := c.core.Plan()
			c.commits.Add(1)
			go func() {
				defer c.commits.Done()
				start := time.Now()
				err := c.ckpt.commit(x, plan, c.cfg.JobConfigJSON, c.cfg.JobID)
				c.recordCheckpoint(x, time.Since(start), err)
				ev := CheckpointCommitted{Step: x.Step}
				if err != nil {
					ev.Err = err.Error()
					c.log.Error().Err(err).Int("ckpt_step", x.Step).Msg("checkpoint not published")
				} else {
					var size int64
					for _, sh := range x.Shards {
						size += sh.Size
					}
					c.log.Info().Int("ckpt_step", x.Step).Str("dir", c.ckpt.store.StepDir(int64(x.Step))).Int64("bytes", size).
						Int("shards", len(x.Shards)).Dur("commit", time.Since(start)).Msg("checkpoint published")
				}
				c.Submit(ev)
			}()
		case DropCheckpoint:
			if c.cfg.Metrics != nil {
				_ = c.cfg.Metrics.CheckpointNotPublished("dropped") // a valid result: cannot fail
			}
			c.log.Warn().Int("ckpt_step", x.Step).Str("reason", x.Reason).
				Msg("checkpoint not published; its temporary directory is removed at the next start")
		case SPSAWorld, SPSAPause:
			c.applySPSA(x)
		case Finish:
			c.result.Phase, c.result.Reason = x.Phase, x.Reason
			ev := c.log.Info()
			switch x.Phase {
			case PhaseFailed:
				ev = c.log.Error()
			case PhaseStopped:
				ev = c.log.Warn()
			}
			ev.Str("phase", string(x.Phase)).Str("reason", x.Reason).Msg("job ended")
		}
	}
	if len(cmds) > 0 {
		c.notify()
		c.saveState()
		c.countRestarts()
	}
}

func (c *Coordinator) startCommand(x StartWorker) *pb.Command {
	// One encoding per plan, shared by every rank's start command: the
	// plan grows with the ranks, and every rank gets the same one.
	if c.planJSONOf != x.Plan {
		c.planJSON, _ = json.Marshal(x.Plan) // plain data: cannot fail
		c.planJSONOf = x.Plan
	}
	planJSON := c.planJSON
	if x.Rank == 0 {
		c.log.Info().Str("mesh", x.Plan.Mesh.String()).Int("world", x.Plan.Mesh.World()).Msg("all workers joined: starting the job")
		for _, w := range x.Plan.Warnings {
			c.log.Warn().Msg("plan: " + w)
		}
	}
	start := &pb.Start{
		Rank: int32(x.Rank), PlanJson: planJSON, JobConfigJson: c.cfg.JobConfigJSON,
		Threads: int32(x.Plan.Ranks[x.Rank].Worker.Cores),
	}
	cs := c.ckpt.spec()
	if x.ResumeStep >= 0 && c.ckpt.store != nil {
		cs.ResumeDir, cs.ResumeStep = c.ckpt.store.StepDir(int64(x.ResumeStep)), int64(x.ResumeStep)
	}
	if cs != (CheckpointSpec{}) {
		start.Checkpoint = &pb.CheckpointSpec{Dir: cs.Dir, Every: int32(cs.Every), ResumeDir: cs.ResumeDir, ResumeStep: cs.ResumeStep}
	}
	start.Generation = int64(x.Generation)
	if c.cfg.Recovery.MaxRestarts > 0 && c.cfg.Takeover {
		start.RejoinTimeoutMs = c.cfg.Recovery.withDefaults().RejoinTimeout.Milliseconds()
	}
	return &pb.Command{Kind: &pb.Command_Start{Start: start}}
}

func (c *Coordinator) sendTo(id string, cmd *pb.Command) {
	c.mu.Lock()
	ch := c.outboxes[id]
	c.mu.Unlock()
	if ch == nil {
		return
	}
	select {
	case ch <- cmd:
	default: // a worker receives at most start + one of abort/stop; a full box means it is not reading
		c.log.Warn().Str("worker", id).Msg("command box full; dropping command")
	}
}

// notify records the curve and calls OnStatus.
func (c *Coordinator) notify() {
	s := c.core.Status()
	train, val := c.curveAt.Advance(s.Step, s.HasVal, s.ValStep, s.Phase.stepsEnded())
	if train {
		el := time.Since(c.start)
		c.curve = append(c.curve, CurvePoint{Step: s.Step, Loss: s.Loss, TokensPerSec: s.TokensPerSec, Elapsed: el.Seconds()})
	}
	if val {
		v := s.ValLoss
		c.curve = append(c.curve, CurvePoint{Step: s.ValStep, Loss: s.Loss, ValLoss: &v, Elapsed: time.Since(c.start).Seconds()})
		c.log.Info().Int("step", s.ValStep).Float64("val_loss", v).Msg("validation")
	}
	c.recordStatus(s)
	if c.cfg.OnStatus != nil {
		c.cfg.OnStatus(s)
	}
}
