package cluster

// Joining a running SPSA job between steps, the part of the core's state
// machine for train.mode = "spsa" (docs/control-plane.md#spsa-join). Like
// the rest of Core it is pure: events in, commands out, times from Tick.
//
//	running, a worker joins ─▶ Accept; StartWorker (the joiner, in the next
//	  member set's plan: the running ranks in place, joiners after them)
//	a joiner replays the coordinator's log, reporting how far it got
//	  (SPSAAtBoundary) until it is within spsaJoinLag steps of its end
//	rank 0 logged step s (SPSALogged) and every joiner is that close ─▶
//	  SPSAPause{After: s+2}: the members stop after step s+2 (rank 0 says
//	  so in that step's exchange; it hands step s over while it runs step
//	  s+1, so s+2 is the first step it can flag); until then they run on
//	every member of the next set at step s+3 (SPSAAtBoundary: the running
//	  ranks paused, the joiner replayed the coordinator's log) ─▶
//	  SPSAWorld: the set every member resumes with at step s+3
//	a joiner that fails, dies or misses SPSAJoinTimeout ─▶ AbortWorker to
//	  it and, once the members paused, SPSAWorld with the old set
//
// The running ranks keep their parameters; the joiner receives none (it
// replays the log). One member set change is in flight at a time; workers
// that join meanwhile wait for the next. A running rank that dies is a
// failure as before (the job fails or recovers; no shrinking between steps).

import (
	"fmt"
	"slices"
	"time"

	"github.com/moetrain/moetrain/parallel"
)

type (
	// SPSALogged: the coordinator's SPSA log holds the record of Step, which
	// worker ID (rank 0 of the running set) handed it.
	SPSALogged struct {
		ID   string
		Step int
	}
	// SPSAAtBoundary: worker ID holds the parameters after step Step-1 and
	// waits for the member set that runs Step.
	SPSAAtBoundary struct {
		ID   string
		Step int
	}
)

func (SPSALogged) isEvent()     {}
func (SPSAAtBoundary) isEvent() {}

type (
	// SPSAPause answers SPSALogged: the members stop after step After.
	SPSAPause struct{ After int }
	// SPSAWorld publishes the member set (Plan, numbered Epoch) that every
	// member of it resumes with at step Start.
	SPSAWorld struct {
		Epoch  int
		Start  int
		Plan   *Plan
		Reason string
	}
)

func (SPSAPause) isCommand() {}
func (SPSAWorld) isCommand() {}

// spsaJoinState is the member set change in flight, if any.
type spsaJoinState struct {
	epoch    int      // member sets published so far
	plan     *Plan    // the next set's plan; nil when no change is in flight
	joining  []string // the workers it adds
	boundary int      // the last step of the running set; -1 undecided
	ready    map[string]bool
	at       map[string]int // how far each joiner replayed the log (its next step)
	since    time.Duration
}

// spsaJoinLag is how close to the end of the log every joiner must have
// replayed before the running ranks pause for it: they run on while the
// joiner starts and replays, and wait only for the last few records and the
// new data plane.
const spsaJoinLag = 8

// spsaJoinTimeout is CoreConfig.SPSAJoinTimeout's default.
const spsaJoinTimeout = 2 * time.Minute

// spsaJoined admits a worker to a running SPSA job and starts the member
// set change that adds it, unless one is in flight.
func (c *Core) spsaJoined(e Joined) []Command {
	return append([]Command{c.admit(e)}, c.spsaNextSet()...)
}

// spsaNextSet starts a member set change adding every waiting worker.
func (c *Core) spsaNextSet() []Command {
	if c.sj.plan != nil || c.phase != PhaseRunning || c.plan == nil {
		return nil
	}
	var add []WorkerInfo
	for _, id := range c.order {
		if w := c.workers[id]; w.rank < 0 && w.state == wsJoined {
			add = append(add, w.info)
		}
	}
	if len(add) == 0 {
		return nil
	}
	plan, err := spsaGrowPlan(*c.plan, add)
	if err != nil {
		var cmds []Command
		for _, w := range add {
			cmds = append(cmds, AbortWorker{ID: w.ID, Reason: fmt.Sprintf("cannot join the running SPSA job: %v", err)})
			c.forget(w.ID)
		}
		return cmds
	}
	c.sj.plan, c.sj.boundary, c.sj.ready, c.sj.at, c.sj.since, c.sj.joining = &plan, -1, map[string]bool{}, map[string]int{}, c.now, nil
	var cmds []Command
	for _, w := range add {
		c.sj.joining = append(c.sj.joining, w.ID)
		r := len(plan.Ranks) - len(add) + len(c.sj.joining) - 1
		cmds = append(cmds, StartWorker{ID: w.ID, Rank: r, Plan: c.sj.plan, Generation: c.rec.gen, ResumeStep: -1})
	}
	return cmds
}

// spsaGrowPlan is the plan of old's ranks, in place, followed by add: a
// pure data-parallel mesh of whole-model replicas.
func spsaGrowPlan(old Plan, add []WorkerInfo) (Plan, error) {
	n := len(old.Ranks) + len(add)
	if len(old.Ranks) == 0 {
		return Plan{}, fmt.Errorf("the running plan has no ranks")
	}
	mesh, err := parallel.NewMesh(parallel.Config{DP: n, TP: 1, SP: 1, EP: 1}, n)
	if err != nil {
		return Plan{}, err
	}
	p := Plan{Mesh: mesh, Ranks: make([]RankAssignment, n)}
	for r := range p.Ranks {
		a := old.Ranks[0] // every SPSA rank holds every expert and head
		if r < len(old.Ranks) {
			a = old.Ranks[r]
		} else {
			a.Worker = add[r-len(old.Ranks)]
		}
		a.Rank, a.Coord, a.DataShard = r, mesh.Coord(r), r
		p.Ranks[r] = a
	}
	return p, p.Validate()
}

// spsaLogged decides the boundary of the change in flight once rank 0's
// log reaches a step and every joiner has replayed to within spsaJoinLag
// steps of it: the members pause after the step after next (rank 0's
// hand-over of a step overlaps its next step), if one step is left for the
// new set after that.
func (c *Core) spsaLogged(e SPSALogged) []Command {
	w := c.workers[e.ID]
	if c.phase != PhaseRunning || c.sj.plan == nil || w == nil || w.rank != 0 || w.state != wsRunning {
		return nil
	}
	near := true // every joiner is within spsaJoinLag steps of the log's end
	for _, id := range c.sj.joining {
		at, ok := c.sj.at[id]
		near = near && ok && at+spsaJoinLag > e.Step
	}
	if c.sj.boundary < 0 && near && e.Step+3 < c.cfg.TotalSteps {
		c.sj.boundary = e.Step + 2
	}
	if c.sj.boundary >= 0 && c.sj.boundary == e.Step+2 { // a retried append gets the same answer
		return []Command{SPSAPause{After: c.sj.boundary}}
	}
	return nil
}

// spsaAtBoundary counts a member of the next set that is ready at its
// first step and publishes the set once every member is.
func (c *Core) spsaAtBoundary(e SPSAAtBoundary) []Command {
	if c.phase == PhaseRunning && c.spsaJoiner(e.ID) {
		c.sj.at[e.ID] = e.Step
	}
	if c.phase != PhaseRunning || c.sj.plan == nil || c.sj.boundary < 0 || e.Step != c.sj.boundary+1 {
		return nil
	}
	if !slices.ContainsFunc(c.sj.plan.Ranks, func(r RankAssignment) bool { return r.Worker.ID == e.ID }) {
		return nil
	}
	c.sj.ready[e.ID] = true
	if len(c.sj.ready) < len(c.sj.plan.Ranks) {
		return nil
	}
	c.plan = c.sj.plan
	for r, id := range c.sj.joining {
		w := c.workers[id]
		w.rank, w.state = len(c.plan.Ranks)-len(c.sj.joining)+r, wsRunning
		w.progress.Step = c.sj.boundary + 1 // the slowest rank's step does not drop to 0
	}
	c.sj.epoch++
	cmds := []Command{SPSAWorld{Epoch: c.sj.epoch, Start: c.sj.boundary + 1, Plan: c.plan,
		Reason: fmt.Sprintf("%d workers joined", len(c.sj.joining))}}
	c.sj = spsaJoinState{epoch: c.sj.epoch}
	return append(cmds, c.spsaNextSet()...)
}

// spsaJoiner reports whether id is a worker the change in flight adds.
func (c *Core) spsaJoiner(id string) bool { return slices.Contains(c.sj.joining, id) }

// SPSAJoining reports whether worker id is joining a running SPSA job
// (its start is a catch-up from the log, not a start of the job).
func (c *Core) SPSAJoining(id string) bool { return c.sj.plan != nil && c.spsaJoiner(id) }

// SPSALogKeeper reports whether worker id keeps the SPSA log: rank 0 of
// the running member set (its appends alone reach the coordinator's log).
func (c *Core) SPSALogKeeper(id string) bool {
	w := c.workers[id]
	return c.phase == PhaseRunning && w != nil && w.rank == 0 && w.state == wsRunning
}

// spsaCancel gives up the change in flight: its joiners are told to abort
// and forgotten, and members already paused resume with the running set.
func (c *Core) spsaCancel(reason string) []Command {
	var cmds []Command
	for _, id := range c.sj.joining {
		if w := c.workers[id]; w != nil && w.state != wsLeft && w.state != wsLost {
			cmds = append(cmds, AbortWorker{ID: id, Reason: "SPSA join cancelled: " + reason})
		}
		c.forget(id)
	}
	if c.sj.boundary >= 0 {
		c.sj.epoch++
		cmds = append(cmds, SPSAWorld{Epoch: c.sj.epoch, Start: c.sj.boundary + 1, Plan: c.plan, Reason: "join cancelled: " + reason})
	}
	c.sj = spsaJoinState{epoch: c.sj.epoch}
	return append(cmds, c.spsaNextSet()...)
}

// spsaTick cancels a change that has not completed within the timeout.
func (c *Core) spsaTick() []Command {
	limit := c.cfg.SPSAJoinTimeout
	if limit <= 0 {
		limit = spsaJoinTimeout
	}
	if c.sj.plan == nil || c.now < c.sj.since+limit {
		return nil
	}
	return c.spsaCancel(fmt.Sprintf("the joiners were not ready within %v", limit))
}

// forget removes a worker from the job's members.
func (c *Core) forget(id string) {
	delete(c.workers, id)
	c.order = remove(c.order, id)
}
