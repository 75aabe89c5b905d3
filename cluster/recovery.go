package cluster

// Automatic recovery, the part of the core's state machine that turns a
// worker's death, hang or error into a new start instead of a failed job
// (docs/control-plane.md#automatic-recovery). Like the rest of Core it is
// pure: events in, commands out, times from Tick.
//
//	running ──worker lost / error / left, restarts left──▶ recovering
//	  every live worker: RejoinWorker (it cancels its rank, closing its data
//	  plane, and joins again as a new worker); every lost one: Evict
//	  (Replace unless the job may shrink); incomplete checkpoints dropped,
//	  complete ones still committed
//	recovering ──ExpectedWorkers joined, commits drained──▶ running (same mesh)
//	recovering ──AllowShrink, every survivor back, a smaller plan works──▶ running (shrunk)
//	recovering ──RejoinTimeout──▶ running (shrunk, if allowed and possible) or aborting
//
// Every start of the job is a generation; every rank of a new generation
// resumes from the newest committed checkpoint (or the job's own start
// point when none was committed yet).

import (
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/spf13/pflag"
)

// RecoveryPolicy is the policy of `launch` and `serve` (--max-restarts,
// --rejoin-timeout, --allow-shrink).
type RecoveryPolicy struct {
	// MaxRestarts is how many recoveries the job may use; 0 = none (a lost
	// worker fails the job).
	MaxRestarts int
	// RejoinTimeout bounds one recovery: the wait for the survivors to
	// rejoin and for replacements to join. Default 2 min.
	RejoinTimeout time.Duration
	// AllowShrink re-plans with the survivors (fewer data-parallel
	// replicas) instead of waiting for replacements, when the mesh allows.
	AllowShrink bool
	// StragglerTimeout is how long a survivor told to rejoin has before it
	// is taken for hung and evicted (killed and replaced). Default 15 s,
	// the bound on a worker's cancellation of its rank.
	StragglerTimeout time.Duration
}

// Validate checks the fields; errors name the flag.
func (p RecoveryPolicy) Validate() error {
	switch {
	case p.MaxRestarts < 0:
		return fmt.Errorf("--max-restarts %d: must be >= 0 (0 = a lost worker fails the job)", p.MaxRestarts)
	case p.RejoinTimeout < 0:
		return fmt.Errorf("--rejoin-timeout %v: must be >= 0 (0 = the default, 2m)", p.RejoinTimeout)
	case p.StragglerTimeout < 0:
		return fmt.Errorf("straggler timeout %v: must be >= 0", p.StragglerTimeout)
	}
	return nil
}

func (p RecoveryPolicy) withDefaults() RecoveryPolicy {
	if p.RejoinTimeout <= 0 {
		p.RejoinTimeout = 2 * time.Minute
	}
	if p.StragglerTimeout <= 0 {
		p.StragglerTimeout = 15 * time.Second
	}
	return p
}

// RecoveryRecord is one recovery, as summary.json and the job-state file
// keep it. Times are seconds since the coordinator (that recovered) started.
type RecoveryRecord struct {
	Generation  int     `json:"generation"` // the generation this recovery started
	Cause       string  `json:"cause"`
	DetectedS   float64 `json:"detected_s"`   // when the failure was detected
	FailedStep  int     `json:"failed_step"`  // the slowest rank's completed steps then
	ResumedStep int     `json:"resumed_step"` // the checkpoint step every rank resumed from; -1 = the job's start
	StepsRedone int     `json:"steps_redone"` // failed_step - resumed_step (from the job's start when -1)
	Mesh        string  `json:"mesh,omitempty"`
	Shrunk      bool    `json:"shrunk,omitempty"`
	RestartedS  float64 `json:"restarted_s,omitempty"` // every rank was started again
	// CaughtUpS is when the slowest rank was back at FailedStep (0: the
	// job ended or failed again first); TimeLostS = CaughtUpS - DetectedS.
	CaughtUpS float64 `json:"caught_up_s,omitempty"`
	TimeLostS float64 `json:"time_lost_s,omitempty"`
	// Grow: no failure but a shrunk job growing back onto the workers
	// that joined since (not counted as a restart).
	Grow bool `json:"grow,omitempty"`
}

// recoveryState is the core's recovery bookkeeping.
type recoveryState struct {
	gen      int // the generation running (or being started)
	restarts int
	records  []RecoveryRecord
	open     int // index of the record waiting for its catch-up; -1 = none
	// startStep is where the first generation starts (the job's own
	// --resume step, 0 fresh): what steps are redone from when no
	// checkpoint was committed yet.
	startStep int

	since    time.Duration         // the recovery in progress began
	awaiting map[string]WorkerInfo // survivors told to rejoin that have not yet, by hostPid
	evicted  bool                  // stragglers were evicted
}

// init prepares the state, continuing a job an earlier coordinator left
// (takeover: one more generation, counted as a restart).
func (r *recoveryState) init(t *JobState, ck *ckptState) {
	r.open = -1
	if t == nil {
		return
	}
	r.gen, r.restarts = t.Generation+1, t.Restarts+1
	r.records = append(r.records, t.Recoveries...)
	ck.last = t.LastCheckpoint
	r.startStep = t.StartStep
	r.records = append(r.records, RecoveryRecord{Generation: r.gen, Cause: "coordinator restarted: " + t.Phase.takeoverText(),
		FailedStep: t.Step, ResumedStep: t.LastCheckpoint, StepsRedone: max(0, t.Step-max(t.LastCheckpoint, t.StartStep))})
	r.open = len(r.records) - 1
}

func (p Phase) takeoverText() string {
	return fmt.Sprintf("took over the job, which was %s", p)
}

// caughtUp closes the open record once the slowest rank is back at the
// step the failure interrupted.
func (r *recoveryState) caughtUp(step int, now time.Duration) {
	if r.open < 0 || step < r.records[r.open].FailedStep {
		return
	}
	rec := &r.records[r.open]
	rec.CaughtUpS = now.Seconds()
	rec.TimeLostS = rec.CaughtUpS - rec.DetectedS
	r.open = -1
}

// Recoveries returns the recoveries so far (a copy).
func (c *Core) Recoveries() []RecoveryRecord {
	return append([]RecoveryRecord(nil), c.rec.records...)
}

// SetStartStep tells the core where the job's first generation starts
// (the step of --resume, 0 for a fresh start), for steps_redone.
func (c *Core) SetStartStep(step int) { c.rec.startStep = step }

// failure handles a worker's death, hang, departure or error while
// running: a recovery when restarts are left, otherwise the abort of the
// job. lost names the worker that is gone (nil: not known, e.g. an error
// report).
func (c *Core) failure(reason string, lost ...*coreWorker) []Command {
	p := c.cfg.Recovery
	if p.MaxRestarts == 0 {
		return c.abort(reason)
	}
	if c.rec.restarts >= p.MaxRestarts {
		return c.abort(fmt.Sprintf("%s; no restarts left (%d used, --max-restarts %d)", reason, c.rec.restarts, p.MaxRestarts))
	}
	return c.recover(reason, lost)
}

// recover moves from running to recovering (see the file comment).
func (c *Core) recover(reason string, lost []*coreWorker) []Command {
	c.rec.restarts++
	return c.replan(reason, lost, false)
}

// replan tells every live ranked member to rejoin (a standby member, one
// waiting to grow a shrunk job, keeps its place) and evicts the lost ones,
// opening generation g+1 in recovering. grow marks a re-plan that is no
// failure: a shrunk job taking its replacements back in.
func (c *Core) replan(reason string, lost []*coreWorker, grow bool) []Command {
	if c.rec.open >= 0 { // failed again before catching up: that time counts until now
		rec := &c.rec.records[c.rec.open]
		rec.TimeLostS = c.now.Seconds() - rec.DetectedS
		c.rec.open = -1
	}
	step := c.Status().Step
	c.rec.gen++
	c.rec.records = append(c.rec.records, RecoveryRecord{Generation: c.rec.gen, Cause: reason, DetectedS: c.now.Seconds(), FailedStep: step, Grow: grow})
	c.rec.open = len(c.rec.records) - 1
	c.rec.since, c.rec.awaiting, c.rec.evicted = c.now, map[string]WorkerInfo{}, false
	c.phase, c.pending = PhaseRecovering, ""
	c.ck.finishing = false

	var cmds []Command
	for _, s := range c.incompleteSteps() {
		cmds = append(cmds, DropCheckpoint{Step: s, Reason: fmt.Sprintf("recovery: ranks %v did not write their shards", c.missingRanks(s))})
		delete(c.ck.shards, s)
	}
	isLost := map[string]bool{}
	for _, w := range lost {
		isLost[w.info.ID] = true
	}
	var standby []string
	for _, id := range c.order {
		w := c.workers[id]
		switch {
		case w.rank < 0 && w.state == wsJoined:
			standby = append(standby, id)
		case isLost[id] || w.state == wsLost || w.state == wsLeft:
			cmds = append(cmds, Evict{ID: id, Pid: w.info.Pid, Host: w.info.Host, Replace: true,
				Reason: "recovery: " + reason})
		default:
			c.rec.awaiting[hostPid(w.info)] = w.info
			cmds = append(cmds, RejoinWorker{ID: id, Reason: reason})
		}
	}
	// Every ranked member is forgotten: the survivors come back under new
	// IDs, and whatever the old IDs still report is ignored.
	kept := map[string]*coreWorker{}
	for _, id := range standby {
		kept[id] = c.workers[id]
	}
	c.workers, c.order = kept, standby
	return cmds
}

// standby admits a worker while a shrunk job runs: it waits, unranked, for
// the next committed checkpoint, where the job grows back (maybeGrow).
func (c *Core) standby(e Joined) []Command {
	return []Command{c.admit(e)}
}

// shrunk reports whether the running plan has fewer ranks than the job
// expects workers (a recovery shrank it).
func (c *Core) shrunk() bool { return c.plan != nil && len(c.plan.Ranks) < c.cfg.ExpectedWorkers }

// maybeGrow re-plans a shrunk job onto every expected worker once enough
// are members (standby replacements included), right after a checkpoint
// was committed (so next to nothing is redone), unless a rank has already
// finished. It is no failure: no restart is counted.
func (c *Core) maybeGrow() []Command {
	if c.phase != PhaseRunning || !c.shrunk() || len(c.order) < c.cfg.ExpectedWorkers || c.ck.committing >= 0 || len(c.ck.ready) > 0 {
		return nil
	}
	for _, id := range c.order {
		if c.workers[id].state == wsDone {
			return nil
		}
	}
	return c.replan(fmt.Sprintf("grow back to %d workers at checkpoint step %d", c.cfg.ExpectedWorkers, c.ck.last), nil, true)
}

// admit names a joining worker (w0, w1, ... in join order) and records it,
// unranked, as a member of the job.
func (c *Core) admit(e Joined) Accept {
	id := fmt.Sprintf("w%d", c.nextID)
	c.nextID++
	info := e.Info
	info.ID = id
	c.workers[id] = &coreWorker{info: info, state: wsJoined, rank: -1}
	c.order = append(c.order, id)
	return Accept{ID: id, Info: info}
}

func hostPid(w WorkerInfo) string { return fmt.Sprintf("%s/%d", w.Host, w.Pid) }

// rejoined admits a worker while recovering: a survivor coming back or a
// replacement.
func (c *Core) rejoined(e Joined) []Command {
	acc := c.admit(e)
	delete(c.rec.awaiting, hostPid(acc.Info))
	return append([]Command{acc}, c.maybeResume()...)
}

// maybeResume starts the next generation once it can: no commit in flight
// or queued, and either every expected worker joined, or (AllowShrink)
// every survivor is back or evicted and a smaller plan works.
func (c *Core) maybeResume() []Command {
	if c.phase != PhaseRecovering || c.ck.committing >= 0 || len(c.ck.ready) > 0 {
		return nil
	}
	if len(c.order) >= c.cfg.ExpectedWorkers {
		plan, err := c.cfg.Plan(c.joinedInfos())
		if err != nil {
			return c.abort(fmt.Sprintf("recovery: plan: %v", err))
		}
		return c.resume(plan, false)
	}
	if c.cfg.Recovery.AllowShrink && len(c.rec.awaiting) == 0 {
		return c.tryShrink(false)
	}
	return nil
}

// tryShrink starts the next generation on fewer workers when a plan over
// them works. Otherwise it asks for the missing workers once (final: the
// rejoin timeout passed, which aborts the job instead).
func (c *Core) tryShrink(final bool) []Command {
	var err error
	if c.cfg.ShrinkPlan == nil {
		err = fmt.Errorf("no smaller plan available")
	} else if len(c.order) == 0 {
		err = fmt.Errorf("no worker left")
	} else {
		var plan Plan
		if plan, err = c.cfg.ShrinkPlan(c.joinedInfos()); err == nil {
			return c.resume(plan, true)
		}
	}
	if final {
		return c.abort(fmt.Sprintf("recovery: %d of %d workers within --rejoin-timeout %v and no smaller plan works: %v",
			len(c.order), c.cfg.ExpectedWorkers, c.cfg.Recovery.withDefaults().RejoinTimeout, err))
	}
	if c.rec.evicted {
		return nil
	}
	c.rec.evicted = true
	var cmds []Command
	for range c.cfg.ExpectedWorkers - len(c.order) {
		cmds = append(cmds, Evict{Replace: true, Reason: fmt.Sprintf("recovery: the job cannot shrink to %d workers (%v)", len(c.order), err)})
	}
	return cmds
}

// resume starts the next generation under plan.
func (c *Core) resume(plan Plan, shrunk bool) []Command {
	rec := &c.rec.records[len(c.rec.records)-1]
	rec.ResumedStep = c.ck.last
	rec.StepsRedone = max(0, rec.FailedStep-max(c.ck.last, c.rec.startStep))
	rec.Mesh, rec.Shrunk = plan.Mesh.String(), shrunk
	rec.RestartedS = c.now.Seconds()
	return c.startPlan(plan)
}

// recoveryTick evicts survivors that did not rejoin in time and ends a
// recovery that ran out of time.
func (c *Core) recoveryTick() []Command {
	p := c.cfg.Recovery.withDefaults()
	if c.now >= c.rec.since+p.RejoinTimeout {
		if c.cfg.Recovery.AllowShrink {
			return c.tryShrink(true)
		}
		return c.abort(fmt.Sprintf("recovery: only %d of %d workers joined within --rejoin-timeout %v",
			len(c.order), c.cfg.ExpectedWorkers, p.RejoinTimeout))
	}
	if c.now >= c.rec.since+p.StragglerTimeout && len(c.rec.awaiting) > 0 && !c.rec.evicted {
		c.rec.evicted = true
		var cmds []Command
		for _, hp := range slices.Sorted(maps.Keys(c.rec.awaiting)) {
			w := c.rec.awaiting[hp]
			cmds = append(cmds, Evict{Pid: w.Pid, Host: w.Host, Replace: true,
				Reason: fmt.Sprintf("recovery: did not rejoin within %v of being told to", p.StragglerTimeout)})
		}
		c.rec.awaiting = map[string]WorkerInfo{}
		return append(cmds, c.maybeResume()...)
	}
	return nil
}

// processExited maps a launched process's exit to its worker: a member's
// exit is its loss, a survivor's that had not rejoined yet its eviction; an
// exit the core cannot place (a process evicted, refused or released) is
// no news while recovery is on, and fails the job otherwise (it exited
// before joining).
func (c *Core) processExited(e ProcessExited) []Command {
	for _, id := range c.order {
		if w := c.workers[id]; w.info.Pid == e.Pid {
			return c.gone(id, e.Reason, false)
		}
	}
	if c.phase == PhaseRecovering {
		// A survivor told to rejoin that died meanwhile: replace it now
		// rather than at the straggler timeout.
		for _, hp := range slices.Sorted(maps.Keys(c.rec.awaiting)) {
			if w := c.rec.awaiting[hp]; w.Pid == e.Pid {
				delete(c.rec.awaiting, hp)
				cmds := []Command{Evict{Pid: w.Pid, Host: w.Host, Replace: true,
					Reason: "recovery: died before it rejoined: " + e.Reason}}
				return append(cmds, c.maybeResume()...)
			}
		}
	}
	if c.cfg.Recovery.MaxRestarts > 0 {
		return nil
	}
	return c.abort(e.Reason)
}

// AddRecoveryFlags registers the recovery policy's flags (launch and serve
// share them, with the same help).
func AddRecoveryFlags(f *pflag.FlagSet, p *RecoveryPolicy) {
	f.IntVar(&p.MaxRestarts, "max-restarts", 0, "recover from this many worker deaths or hangs (every rank resumes from the last committed checkpoint); 0 = a lost worker fails the job")
	f.DurationVar(&p.RejoinTimeout, "rejoin-timeout", 2*time.Minute, "bound on one recovery: the wait for the survivors to rejoin and for replacements (serve: a new worker --join; a restarted serve: every worker)")
	f.BoolVar(&p.AllowShrink, "allow-shrink", false, "on recovery, continue with the survivors on fewer data-parallel replicas when the mesh allows, instead of waiting for replacements")
}

// DataPlaneToken is the secret the data plane of generation gen of a job
// with token derives its key from: generation 0 uses the job token itself,
// every later one (after a recovery) another, so that a rank of an earlier
// generation (a hung process that wakes up) cannot join a new mesh.
func DataPlaneToken(token string, gen int) string {
	if gen == 0 {
		return token
	}
	return fmt.Sprintf("%s\x00generation %d", token, gen)
}
