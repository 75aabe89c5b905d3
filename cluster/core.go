package cluster

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/moetrain/moetrain/checkpoint"
)

// Phase is the coordinator's job phase.
//
//	waiting ──all joined, plan ok──▶ running ──all done──▶ stopping ──all left──▶ succeeded
//	   │                             ▲  │  worker lost/error            (stop requested ─▶ stopped)
//	   │                   replanned │  │ (restarts left: recovering, recovery.go)
//	   │                             │  ▼
//	   │                          recovering
//	   │ plan error / join timeout  │  │ worker lost/error (no restarts left), rejoin timeout
//	   │                            ▼  ▼
//	   └──────────────────────────▶ aborting ──all left or drain timeout──▶ failed
type Phase string

const (
	PhaseWaiting Phase = "waiting"
	PhaseRunning Phase = "running"
	// PhaseRecovering: a worker died or hung; every rank was told to rejoin
	// and the core waits for replacements (or re-plans with the survivors)
	// before every rank resumes from the last committed checkpoint.
	PhaseRecovering Phase = "recovering"
	PhaseAborting   Phase = "aborting"
	PhaseStopping   Phase = "stopping"
	PhaseSucceeded  Phase = "succeeded"
	PhaseFailed     Phase = "failed"
	PhaseStopped    Phase = "stopped"
)

// Final reports whether the job has ended.
func (p Phase) Final() bool { return p == PhaseSucceeded || p == PhaseFailed || p == PhaseStopped }

// stepsEnded reports that no rank takes more steps in this phase (the job
// is stopping, aborting or over).
func (p Phase) stepsEnded() bool {
	return p != PhaseWaiting && p != PhaseRunning && p != PhaseRecovering
}

// CoreConfig parameterises the state machine. Plan must be a pure function.
type CoreConfig struct {
	ExpectedWorkers int
	TotalSteps      int
	Plan            func(workers []WorkerInfo) (Plan, error)
	// JoinTimeout bounds the wait for ExpectedWorkers (from time 0); 0 waits forever.
	JoinTimeout time.Duration
	// DrainTimeout bounds the wait for workers to leave after abort or stop.
	DrainTimeout time.Duration
	// FailureGrace holds back the abort after a worker's error report for
	// this long (measured by Tick): when a peer died, the survivors' errors
	// ("connection reset by rank 2") often arrive before the death is
	// noticed, and the abort should name the dead worker. 0 aborts at once.
	FailureGrace time.Duration
	// CommitTimeout bounds one checkpoint commit (CommitCheckpoint until
	// CheckpointCommitted); a commit that takes longer fails the job. 0 waits
	// forever.
	CommitTimeout time.Duration
	// Recovery: what a worker's death, hang or error does while running
	// (zero: the job fails, as without recovery).
	Recovery RecoveryPolicy
	// ShrinkPlan lays the job over fewer workers than ExpectedWorkers (the
	// largest prefix of workers that works, fewer data-parallel replicas);
	// nil: no shrinking. Used only with Recovery.AllowShrink.
	ShrinkPlan func(workers []WorkerInfo) (Plan, error)
	// Takeover, if set, is the state of this job that an earlier
	// coordinator left in the run directory: the core continues it (next
	// generation, last committed checkpoint, restarts so far).
	Takeover *JobState
	// SPSAJoin: a train.mode = "spsa" job whose coordinator keeps the log:
	// a worker may join it while it runs, between steps (core_spsa.go).
	// SPSAJoinTimeout bounds one such join (0: 2 min).
	SPSAJoin        bool
	SPSAJoinTimeout time.Duration
}

// Events fed to Core.Step. Times are supplied by the caller (Tick); the core
// never reads a clock.
type (
	Event interface{ isEvent() }
	// Joined: a worker asks to join (its ID is assigned by the core).
	Joined struct{ Info WorkerInfo }
	// Left: a worker said it is exiting on its own (finished, aborted, failed).
	Left struct{ ID, Reason string }
	// Lost: a worker disconnected or was declared dead by gossip.
	Lost struct{ ID, Reason string }
	// Progress: a worker's report after a step.
	Progress struct {
		ID           string
		Step         int
		Loss         float64
		TokensPerSec float64
		HasVal       bool
		ValLoss      float64
		Done         bool
	}
	// Failed: a worker reported an error; its job cannot continue.
	Failed struct{ ID, Message string }
	// Tick: the caller's clock, time since the coordinator started.
	Tick struct{ Now time.Duration }
	// StopRequested: an operator asked to stop the job.
	StopRequested struct{ Reason string }
	// JobFailed: the coordinator's environment gave up on the job (e.g. a
	// launched worker process exited before joining).
	JobFailed struct{ Reason string }
	// ShardWritten: a worker finished writing its rank's shard of checkpoint
	// Step into the step's temporary directory (Err != "": the write failed).
	ShardWritten struct {
		ID    string
		Step  int
		Shard checkpoint.ShardInfo
		Err   string
	}
	// CheckpointCommitted: the I/O loop finished carrying out CommitCheckpoint
	// for Step (Err != "": the step was not published).
	CheckpointCommitted struct {
		Step int
		Err  string
	}
	// ProcessExited: a worker process the coordinator's environment started
	// (the local launcher) exited with an error; Pid names it.
	ProcessExited struct {
		Pid    int
		Reason string
	}
)

func (Joined) isEvent()              {}
func (Left) isEvent()                {}
func (Lost) isEvent()                {}
func (Progress) isEvent()            {}
func (Failed) isEvent()              {}
func (Tick) isEvent()                {}
func (StopRequested) isEvent()       {}
func (JobFailed) isEvent()           {}
func (ShardWritten) isEvent()        {}
func (CheckpointCommitted) isEvent() {}
func (ProcessExited) isEvent()       {}

// Commands returned by Core.Step, to be carried out in order by the I/O loop.
type (
	Command interface{ isCommand() }
	// Accept answers a Joined event: the worker's assigned ID and its info.
	Accept struct {
		ID   string
		Info WorkerInfo
	}
	// Reject answers a Joined event that cannot be admitted.
	Reject struct{ Reason string }
	// StartWorker tells one worker its rank in the plan.
	StartWorker struct {
		ID   string
		Rank int
		Plan *Plan
		// Generation counts the job's starts (0 first, +1 per recovery or
		// coordinator takeover); ResumeStep is the committed checkpoint
		// step every rank restores (-1: the job's own --resume, if any).
		Generation int
		ResumeStep int
	}
	// RejoinWorker tells one worker to cancel its rank and join again
	// (recovery: every rank resumes from the last committed checkpoint).
	RejoinWorker struct{ ID, Reason string }
	// Evict: worker ID (process Pid on Host) is dead or hung and no longer
	// part of the job: a launcher that owns the process kills it. Replace
	// asks for a new worker in its place (the launcher starts one; `serve`
	// waits for a `worker --join`); ID and Pid are empty/0 when the core
	// only asks for one more worker.
	Evict struct {
		ID      string
		Pid     int
		Host    string
		Replace bool
		Reason  string
	}
	// AbortWorker tells one worker to abandon the job.
	AbortWorker struct{ ID, Reason string }
	// StopWorker tells one worker to stop (the job is complete or stopped).
	StopWorker struct{ ID, Reason string }
	// Finish: the job has ended; the I/O loop writes the summary and exits.
	Finish struct {
		Phase  Phase
		Reason string
	}
	// CommitCheckpoint: every rank of the plan wrote its shard of Step
	// (Shards, in rank order): write the manifest, publish the step and
	// LATEST, prune; then feed back CheckpointCommitted. The core issues one
	// at a time, in step order.
	CommitCheckpoint struct {
		Step   int
		Shards []checkpoint.ShardInfo
	}
	// DropCheckpoint: Step will never be complete (the job is ending
	// without it). Nothing is published; its temporary directory is removed
	// by the cleanup at the next start.
	DropCheckpoint struct {
		Step   int
		Reason string
	}
)

func (Accept) isCommand()           {}
func (Reject) isCommand()           {}
func (StartWorker) isCommand()      {}
func (AbortWorker) isCommand()      {}
func (StopWorker) isCommand()       {}
func (Finish) isCommand()           {}
func (CommitCheckpoint) isCommand() {}
func (DropCheckpoint) isCommand()   {}
func (RejoinWorker) isCommand()     {}
func (Evict) isCommand()            {}

// Worker states inside the core.
const (
	wsJoined  = "joined"
	wsRunning = "running"
	wsDone    = "done"
	wsLeft    = "left"
	wsLost    = "lost"
)

type coreWorker struct {
	info     WorkerInfo
	state    string
	rank     int
	progress Progress
	said     string // why it left, when it said so
}

// Core is the coordinator's deterministic state machine: Step(event) →
// commands. It has no clock, goroutine or I/O; the same events give the same
// commands. Not safe for concurrent use; the I/O loop owns it.
type Core struct {
	cfg      CoreConfig
	phase    Phase
	now      time.Duration
	nextID   int
	workers  map[string]*coreWorker
	order    []string // join order of current members
	plan     *Plan
	outcome  Phase  // the final phase once draining completes
	reason   string // why the job failed or stopped
	deadline time.Duration
	deaths   []string // workers that vanished without saying why, in order
	val      *Progress

	pending   string // first error report of the running job, held for FailureGrace
	pendingAt time.Duration

	ck  ckptState
	rec recoveryState
	sj  spsaJoinState
}

// ckptState tracks the checkpoints of the running job: shards reported per
// step until every rank has one, then one commit at a time in step order.
type ckptState struct {
	shards     map[int]map[int]checkpoint.ShardInfo // step → rank → shard, steps not yet complete or committed
	ready      []int                                // complete steps waiting for their commit, ascending
	committing int                                  // step being committed; -1 when none
	since      time.Duration                        // when the commit in flight was issued
	last       int                                  // newest committed step; -1 when none
	finishing  bool                                 // every rank is done: stop once the commits are through
}

// NewCore returns a core in the waiting phase at time 0.
func NewCore(cfg CoreConfig) *Core {
	c := &Core{cfg: cfg, phase: PhaseWaiting, workers: map[string]*coreWorker{},
		ck: ckptState{shards: map[int]map[int]checkpoint.ShardInfo{}, committing: -1, last: -1}}
	c.rec.init(cfg.Takeover, &c.ck)
	return c
}

// Phase returns the current phase.
func (c *Core) Phase() Phase { return c.phase }

// Plan returns the job's plan once running (nil before).
func (c *Core) Plan() *Plan { return c.plan }

// Step applies one event and returns the commands to carry out.
func (c *Core) Step(ev Event) []Command {
	switch e := ev.(type) {
	case Joined:
		return c.joined(e)
	case Left:
		return c.gone(e.ID, e.Reason, true)
	case Lost:
		return c.gone(e.ID, e.Reason, false)
	case Progress:
		return c.progressed(e)
	case Failed:
		w := c.workers[e.ID]
		if w != nil && c.phase == PhaseRunning && c.spsaJoiner(e.ID) {
			return c.spsaCancel(fmt.Sprintf("%s failed: %s", c.describe(w), e.Message))
		}
		if w == nil || c.phase != PhaseRunning && c.phase != PhaseWaiting || c.phase == PhaseRunning && w.rank < 0 {
			return nil
		}
		reason := fmt.Sprintf("%s failed: %s", c.describe(w), e.Message)
		if c.phase == PhaseWaiting {
			return c.abort(reason)
		}
		if c.cfg.FailureGrace <= 0 {
			return c.failure(reason)
		}
		if c.pending == "" {
			c.pending, c.pendingAt = reason, c.now
		}
		return nil
	case Tick:
		return c.tick(e.Now)
	case StopRequested:
		return c.stop(e.Reason)
	case JobFailed:
		return c.abort(e.Reason)
	case ShardWritten:
		return c.shardWritten(e)
	case CheckpointCommitted:
		return c.committed(e)
	case ProcessExited:
		return c.processExited(e)
	case SPSALogged:
		return c.spsaLogged(e)
	case SPSAAtBoundary:
		return c.spsaAtBoundary(e)
	}
	return nil
}

func (c *Core) joined(e Joined) []Command {
	if c.phase == PhaseRecovering {
		return c.rejoined(e)
	}
	if c.phase == PhaseRunning && c.cfg.SPSAJoin {
		return c.spsaJoined(e)
	}
	if c.phase == PhaseRunning && c.cfg.Recovery.AllowShrink && c.shrunk() && len(c.order) < c.cfg.ExpectedWorkers {
		return c.standby(e)
	}
	if c.phase != PhaseWaiting {
		return []Command{Reject{Reason: fmt.Sprintf("job is %s, not accepting workers (it has %d)", c.phase, c.cfg.ExpectedWorkers)}}
	}
	cmds := []Command{c.admit(e)}
	if len(c.order) < c.cfg.ExpectedWorkers {
		return cmds
	}
	plan, err := c.cfg.Plan(c.joinedInfos())
	if err != nil {
		return append(cmds, c.abort(fmt.Sprintf("plan: %v", err))...)
	}
	return append(cmds, c.startPlan(plan)...)
}

// joinedInfos lists the current members in join order.
func (c *Core) joinedInfos() []WorkerInfo {
	infos := make([]WorkerInfo, len(c.order))
	for i, id := range c.order {
		infos[i] = c.workers[id].info
	}
	return infos
}

// startPlan moves to running under plan: every ranked worker gets its start
// (this generation, resuming from the last committed checkpoint if any).
func (c *Core) startPlan(plan Plan) []Command {
	c.plan = &plan
	c.phase = PhaseRunning
	c.sj = spsaJoinState{epoch: c.sj.epoch}
	resume := -1
	if c.rec.gen > 0 {
		resume = c.ck.last
	}
	var cmds []Command
	for _, r := range plan.Ranks {
		w := c.workers[r.Worker.ID]
		w.rank, w.state = r.Rank, wsRunning
		cmds = append(cmds, StartWorker{ID: w.info.ID, Rank: r.Rank, Plan: c.plan, Generation: c.rec.gen, ResumeStep: resume})
	}
	// A member a shrunk plan leaves out (the mesh needs a multiple of some
	// degree) stays as a standby for the job to grow back onto.
	return cmds
}

func (c *Core) gone(id, reason string, said bool) []Command {
	w := c.workers[id]
	if w == nil || w.state == wsLeft || w.state == wsLost {
		return nil
	}
	prev := w.state
	if said {
		w.state, w.said = wsLeft, reason
	} else {
		w.state = wsLost
	}
	switch c.phase {
	case PhaseWaiting, PhaseRecovering:
		// Not started yet: forget it; another worker may take its place.
		delete(c.workers, id)
		c.order = remove(c.order, id)
		return nil
	case PhaseRunning:
		if prev == wsDone {
			return c.maybeDrained()
		}
		if c.spsaJoiner(id) {
			return c.spsaCancel(fmt.Sprintf("%s is gone: %s", c.describe(w), reason))
		}
		if w.rank < 0 { // a standby of a shrunk job: no rank lost
			delete(c.workers, id)
			c.order = remove(c.order, id)
			return nil
		}
		if said {
			return c.failure(fmt.Sprintf("%s left: %s", c.describe(w), reason), w)
		}
		death := fmt.Sprintf("%s died (%s)", c.describe(w), reason)
		if c.cfg.Recovery.MaxRestarts == 0 || c.rec.restarts >= c.cfg.Recovery.MaxRestarts {
			c.deaths = append(c.deaths, death)
		}
		if c.pending != "" {
			death += "; first report: " + c.pending
		}
		return c.failure(death, w)
	case PhaseAborting, PhaseStopping:
		if !said && prev != wsDone && c.phase == PhaseAborting {
			c.deaths = append(c.deaths, fmt.Sprintf("%s died (%s)", c.describe(w), reason))
		}
		return c.maybeDrained()
	}
	return nil
}

func (c *Core) progressed(e Progress) []Command {
	w := c.workers[e.ID]
	if w == nil || w.state != wsRunning {
		return nil
	}
	w.progress = e
	if e.HasVal {
		v := e
		c.val = &v
	}
	if e.Done {
		w.state = wsDone
	}
	if c.phase != PhaseRunning {
		return nil
	}
	if c.rec.open >= 0 {
		c.rec.caughtUp(c.slowestStep(), c.now)
	}
	for _, id := range c.order {
		if w := c.workers[id]; w.rank >= 0 && w.state != wsDone {
			return nil
		}
	}
	return c.allDone()
}

// slowestStep is Status().Step without building the status (a progress
// report of a large job must not sort every worker): the least step of the
// ranked workers, 0 when none.
func (c *Core) slowestStep() int {
	step, first := 0, true
	for _, id := range c.order {
		if w := c.workers[id]; w.rank >= 0 && (first || w.progress.Step < step) {
			step, first = w.progress.Step, false
		}
	}
	return step
}

// ProgressMark is what the training curve and the progress display follow
// of a status: the slowest rank's step and the newest validation loss's
// step (-1: none). It costs a pass over the workers, no allocation.
func (c *Core) ProgressMark() (step, valStep int) {
	valStep = -1
	if c.val != nil {
		valStep = c.val.Step
	}
	return c.slowestStep(), valStep
}

// allDone stops the job as succeeded once every rank is done and every
// checkpoint it wrote is committed. A rank reports its last shard before it
// says it is done, so an incomplete step at this point is a rank that
// skipped one: the job fails rather than end without its final checkpoint.
func (c *Core) allDone() []Command {
	if steps := c.incompleteSteps(); len(steps) > 0 {
		s := steps[0]
		return c.abort(fmt.Sprintf("every rank finished, but checkpoint step %d lacks the shards of ranks %v", s, c.missingRanks(s)))
	}
	if c.ck.committing >= 0 || len(c.ck.ready) > 0 {
		c.ck.finishing = true
		return nil
	}
	c.phase, c.outcome, c.reason = PhaseStopping, PhaseSucceeded, fmt.Sprintf("all %d steps done", c.cfg.TotalSteps)
	c.deadline = c.now + c.cfg.DrainTimeout
	var cmds []Command
	for _, id := range c.order {
		cmds = append(cmds, StopWorker{ID: id, Reason: "job complete"})
	}
	return append(cmds, c.maybeDrained()...)
}

func (c *Core) tick(now time.Duration) []Command {
	if now > c.now {
		c.now = now
	}
	switch c.phase {
	case PhaseRunning:
		if c.pending != "" && c.now >= c.pendingAt+c.cfg.FailureGrace {
			return c.failure(c.pending)
		}
		if cmds := c.spsaTick(); len(cmds) > 0 {
			return cmds
		}
		if c.ck.committing >= 0 && c.cfg.CommitTimeout > 0 && c.now >= c.ck.since+c.cfg.CommitTimeout {
			return c.abort(fmt.Sprintf("checkpoint step %d: commit did not finish within %v", c.ck.committing, c.cfg.CommitTimeout))
		}
	case PhaseRecovering:
		return c.recoveryTick()
	case PhaseWaiting:
		if c.cfg.JoinTimeout > 0 && c.now >= c.cfg.JoinTimeout {
			return c.abort(fmt.Sprintf("only %d of %d workers joined within %v", len(c.order), c.cfg.ExpectedWorkers, c.cfg.JoinTimeout))
		}
	case PhaseAborting, PhaseStopping:
		if c.now >= c.deadline {
			var stuck []string
			for _, id := range c.order {
				if s := c.workers[id].state; s != wsLeft && s != wsLost {
					stuck = append(stuck, id)
				}
			}
			return c.finish(fmt.Sprintf("%d workers did not leave within %v: %s", len(stuck), c.cfg.DrainTimeout, strings.Join(stuck, ",")))
		}
	}
	return nil
}

func (c *Core) stop(reason string) []Command {
	if reason == "" {
		reason = "stop requested"
	}
	switch c.phase {
	case PhaseWaiting, PhaseRunning, PhaseRecovering:
	default:
		return nil
	}
	c.phase, c.outcome, c.reason = PhaseStopping, PhaseStopped, reason
	c.deadline = c.now + c.cfg.DrainTimeout
	var cmds []Command
	for _, id := range c.order {
		if s := c.workers[id].state; s != wsLeft && s != wsLost {
			cmds = append(cmds, StopWorker{ID: id, Reason: reason})
		}
	}
	return append(cmds, c.maybeDrained()...)
}

// abort moves to aborting and tells every live worker why.
func (c *Core) abort(reason string) []Command {
	if c.phase != PhaseWaiting && c.phase != PhaseRunning && c.phase != PhaseRecovering {
		return nil
	}
	c.phase, c.outcome, c.reason = PhaseAborting, PhaseFailed, reason
	c.deadline = c.now + c.cfg.DrainTimeout
	var cmds []Command
	for _, s := range c.incompleteSteps() {
		cmds = append(cmds, DropCheckpoint{Step: s, Reason: fmt.Sprintf("job aborted before ranks %v wrote their shards", c.missingRanks(s))})
	}
	for _, s := range c.ck.ready {
		cmds = append(cmds, DropCheckpoint{Step: s, Reason: "job aborted while an earlier checkpoint was being committed"})
	}
	c.ck.shards, c.ck.ready = map[int]map[int]checkpoint.ShardInfo{}, nil
	for _, id := range c.order {
		if s := c.workers[id].state; s != wsLeft && s != wsLost {
			cmds = append(cmds, AbortWorker{ID: id, Reason: reason})
		}
	}
	return append(cmds, c.maybeDrained()...)
}

// maybeDrained finishes an aborting or stopping job once no worker is live.
func (c *Core) maybeDrained() []Command {
	if c.phase != PhaseAborting && c.phase != PhaseStopping {
		return nil
	}
	for _, id := range c.order {
		if s := c.workers[id].state; s != wsLeft && s != wsLost {
			return nil
		}
	}
	return c.finish("")
}

func (c *Core) finish(extra string) []Command {
	reason := c.reason
	// A worker that vanished explains the errors of the others: name it first.
	if c.outcome == PhaseFailed && len(c.deaths) > 0 && !strings.HasPrefix(reason, c.deaths[0]) {
		reason = strings.Join(c.deaths, "; ") + "; first report: " + reason
	}
	if extra != "" {
		reason += "; " + extra
	}
	c.phase, c.reason = c.outcome, reason
	return []Command{Finish{Phase: c.phase, Reason: reason}}
}

func (c *Core) describe(w *coreWorker) string {
	s := "worker " + w.info.ID
	var parts []string
	if w.rank >= 0 {
		parts = append(parts, fmt.Sprintf("rank %d", w.rank))
	}
	if w.info.Host != "" {
		parts = append(parts, "host "+w.info.Host)
	}
	if w.info.Pid != 0 {
		parts = append(parts, fmt.Sprintf("pid %d", w.info.Pid))
	}
	if len(parts) > 0 {
		s += " (" + strings.Join(parts, ", ") + ")"
	}
	return s
}

func remove(s []string, x string) []string {
	out := s[:0]
	for _, v := range s {
		if v != x {
			out = append(out, v)
		}
	}
	return out
}

// Status is a snapshot of the job for the CLI and the progress display.
type Status struct {
	Phase           Phase          `json:"phase"`
	Reason          string         `json:"reason,omitempty"`
	ExpectedWorkers int            `json:"expected_workers"`
	Step            int            `json:"step"` // slowest running rank's completed steps
	TotalSteps      int            `json:"total_steps"`
	Loss            float64        `json:"loss"`           // latest loss reported by the lowest rank at Step
	TokensPerSec    float64        `json:"tokens_per_sec"` // sum over ranks
	HasVal          bool           `json:"has_val"`
	ValLoss         float64        `json:"val_loss"`
	ValStep         int            `json:"val_step"`
	Mesh            string         `json:"mesh"`
	Workers         []WorkerStatus `json:"workers"`
	// LastCheckpoint is the newest checkpoint step committed by this job
	// (-1: none).
	LastCheckpoint int `json:"last_checkpoint"`
	// Generation counts the job's starts (0: never recovered); Restarts
	// the recoveries so far, coordinator takeovers included.
	Generation int `json:"generation"`
	Restarts   int `json:"restarts"`
}

// WorkerStatus is one worker's line in Status.
type WorkerStatus struct {
	Info         WorkerInfo `json:"info"`
	Rank         int        `json:"rank"`
	State        string     `json:"state"`
	Step         int        `json:"step"`
	Loss         float64    `json:"loss"`
	TokensPerSec float64    `json:"tokens_per_sec"`
}

// Status returns a snapshot; workers in rank order (unranked ones last, in join order).
func (c *Core) Status() Status {
	s := Status{Phase: c.phase, Reason: c.reason, ExpectedWorkers: c.cfg.ExpectedWorkers, TotalSteps: c.cfg.TotalSteps,
		LastCheckpoint: c.ck.last, Generation: c.rec.gen, Restarts: c.rec.restarts}
	if c.plan != nil {
		s.Mesh = c.plan.Mesh.String()
	}
	first := true
	for _, id := range c.order {
		w := c.workers[id]
		s.Workers = append(s.Workers, WorkerStatus{Info: w.info, Rank: w.rank, State: w.state,
			Step: w.progress.Step, Loss: w.progress.Loss, TokensPerSec: w.progress.TokensPerSec})
	}
	sort.SliceStable(s.Workers, func(i, j int) bool {
		ri, rj := s.Workers[i].Rank, s.Workers[j].Rank
		return ri >= 0 && (rj < 0 || ri < rj)
	})
	for _, w := range s.Workers {
		if w.Rank < 0 {
			continue
		}
		s.TokensPerSec += w.TokensPerSec
		if first || w.Step < s.Step {
			s.Step, s.Loss, first = w.Step, w.Loss, false
		}
	}
	if c.val != nil {
		s.HasVal, s.ValLoss, s.ValStep = true, c.val.ValLoss, c.val.Step
	}
	return s
}

// shardWritten records one rank's shard of a checkpoint step and commits the
// step once every rank of the plan has reported it.
func (c *Core) shardWritten(e ShardWritten) []Command {
	w := c.workers[e.ID]
	if w == nil || w.rank < 0 || c.phase != PhaseRunning || e.Step <= c.ck.last || e.Step == c.ck.committing {
		return nil
	}
	if e.Err != "" {
		return c.abort(fmt.Sprintf("%s could not write its shard of checkpoint step %d: %s", c.describe(w), e.Step, e.Err))
	}
	if e.Shard.Rank != w.rank {
		return c.abort(fmt.Sprintf("%s reported a shard of rank %d for checkpoint step %d", c.describe(w), e.Shard.Rank, e.Step))
	}
	got := c.ck.shards[e.Step]
	if got == nil {
		got = map[int]checkpoint.ShardInfo{}
		c.ck.shards[e.Step] = got
	}
	if _, dup := got[w.rank]; dup {
		return nil // a repeated report: the step is already counted (or queued)
	}
	got[w.rank] = e.Shard
	if len(got) < len(c.plan.Ranks) {
		return nil
	}
	c.ck.ready = append(c.ck.ready, e.Step)
	sort.Ints(c.ck.ready)
	return c.nextCommit()
}

// nextCommit issues the commit of the oldest complete step when none is in
// flight.
func (c *Core) nextCommit() []Command {
	if c.ck.committing >= 0 || len(c.ck.ready) == 0 {
		return nil
	}
	step := c.ck.ready[0]
	c.ck.ready = c.ck.ready[1:]
	got := c.ck.shards[step]
	delete(c.ck.shards, step)
	list := make([]checkpoint.ShardInfo, len(c.plan.Ranks))
	for r := range list {
		list[r] = got[r]
	}
	c.ck.committing, c.ck.since = step, c.now
	return []Command{CommitCheckpoint{Step: step, Shards: list}}
}

// committed takes the result of a commit: the next one starts, a failure
// fails the job, and a job whose ranks are all done stops once nothing is
// left to commit.
func (c *Core) committed(e CheckpointCommitted) []Command {
	if e.Step != c.ck.committing {
		return nil
	}
	c.ck.committing = -1
	if e.Err != "" {
		return c.abort(fmt.Sprintf("checkpoint step %d was not published: %s", e.Step, e.Err))
	}
	c.ck.last = e.Step
	if c.phase == PhaseRecovering {
		if cmds := c.nextCommit(); len(cmds) > 0 {
			return cmds
		}
		return c.maybeResume()
	}
	if cmds := c.nextCommit(); len(cmds) > 0 || c.phase != PhaseRunning || !c.ck.finishing {
		if len(cmds) == 0 {
			cmds = c.maybeGrow()
		}
		return cmds
	}
	c.ck.finishing = false
	return c.allDone()
}

// incompleteSteps lists the steps some but not all ranks wrote, ascending.
func (c *Core) incompleteSteps() []int {
	ready := map[int]bool{}
	for _, s := range c.ck.ready {
		ready[s] = true
	}
	var out []int
	for s := range c.ck.shards {
		if !ready[s] {
			out = append(out, s)
		}
	}
	sort.Ints(out)
	return out
}

// missingRanks lists the ranks that have not reported their shard of step.
func (c *Core) missingRanks(step int) []int {
	var out []int
	for r := range c.plan.Ranks {
		if _, ok := c.ck.shards[step][r]; !ok {
			out = append(out, r)
		}
	}
	return out
}
