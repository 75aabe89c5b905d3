package cluster

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moetrain/moetrain/internal/testkit"
	"github.com/moetrain/moetrain/parallel"
)

// recoveryCore is testCore(n) with a recovery policy and the coordinator's
// shrink planner.
func recoveryCore(n int, p RecoveryPolicy) *Core {
	req := PlanRequest{Mesh: parallel.Config{DP: n, SP: 1, TP: 1, EP: 1}, Experts: 4, Heads: 2, SeqLen: 8}
	return NewCore(CoreConfig{
		ExpectedWorkers: n,
		TotalSteps:      10,
		Plan:            func(ws []WorkerInfo) (Plan, error) { return MakePlan(req, ws) },
		ShrinkPlan:      func(ws []WorkerInfo) (Plan, error) { return shrinkPlan(req, ws) },
		JoinTimeout:     30 * time.Second,
		DrainTimeout:    5 * time.Second,
		FailureGrace:    time.Second,
		CommitTimeout:   90 * time.Second,
		Recovery:        p,
	})
}

// stepAll feeds events and returns every command.
func stepAll(c *Core, evs ...Event) []Command {
	var out []Command
	for _, e := range evs {
		out = append(out, c.Step(e)...)
	}
	return out
}

func commandsOf[T Command](cmds []Command) []T {
	var out []T
	for _, c := range cmds {
		if x, ok := c.(T); ok {
			out = append(out, x)
		}
	}
	return out
}

// rejoinEv is worker i (joinEv's host and pid) joining again.
func rejoinEv(i int) Joined { return joinEv(i) }

// A dead worker is replaced: the survivor is told to rejoin, the dead one
// evicted with a replacement; once both are back, every rank starts again
// (generation 1) from the last committed checkpoint, and the record counts
// the redone steps and the time lost until the failed step is reached.
func TestRecoveryReplacesDeadWorker(t *testing.T) {
	c := recoveryCore(2, RecoveryPolicy{MaxRestarts: 1})
	stepAll(c, joinEv(0), joinEv(1), shard("w0", 5, 0), shard("w1", 5, 1), CheckpointCommitted{Step: 5},
		prog("w0", 7, false), prog("w1", 7, false), shard("w0", 10, 0), Tick{10 * time.Second})
	cmds := c.Step(Lost{"w1", "command stream closed"})
	if c.Phase() != PhaseRecovering {
		t.Fatalf("phase %s after a death with restarts left, want recovering; commands %v", c.Phase(), cmds)
	}
	rj, ev, drop := commandsOf[RejoinWorker](cmds), commandsOf[Evict](cmds), commandsOf[DropCheckpoint](cmds)
	if len(rj) != 1 || rj[0].ID != "w0" || len(ev) != 1 || ev[0].ID != "w1" || ev[0].Pid != 101 || !ev[0].Replace ||
		len(drop) != 1 || drop[0].Step != 10 || len(commandsOf[AbortWorker](cmds)) != 0 {
		t.Fatalf("commands %v: want w0 told to rejoin, w1 evicted and replaced, step 10 dropped, no abort", cmds)
	}
	// The old IDs are forgotten: their late reports change nothing.
	if got := stepAll(c, prog("w0", 8, false), shard("w0", 10, 0), Failed{"w0", "late"}, Lost{"w0", "stream closed"}); len(got) != 0 {
		t.Fatalf("late events of forgotten workers gave %v", got)
	}
	if got := c.Step(rejoinEv(0)); len(commandsOf[StartWorker](got)) != 0 {
		t.Fatalf("started with 1 of 2 workers: %v", got)
	}
	c.Step(Tick{12 * time.Second})
	cmds = c.Step(joinEv(7)) // the replacement
	starts := commandsOf[StartWorker](cmds)
	if c.Phase() != PhaseRunning || len(starts) != 2 {
		t.Fatalf("phase %s, commands %v: want both ranks started", c.Phase(), cmds)
	}
	for _, s := range starts {
		if s.Generation != 1 || s.ResumeStep != 5 || s.Plan.Mesh.DP != 2 {
			t.Fatalf("start %+v: want generation 1, resume step 5, dp 2", s)
		}
	}
	// The new generation's IDs are w2 and w3; its shards count, the old ones did not.
	stepAll(c, Tick{20 * time.Second}, prog("w2", 7, false), prog("w3", 6, false))
	if r := c.Recoveries()[0]; r.CaughtUpS != 0 {
		t.Fatalf("record %+v caught up before the slowest rank reached step 7", r)
	}
	c.Step(prog("w3", 7, false))
	r := c.Recoveries()
	if len(r) != 1 || r[0].Generation != 1 || r[0].FailedStep != 7 || r[0].ResumedStep != 5 || r[0].StepsRedone != 2 ||
		r[0].DetectedS != 10 || r[0].RestartedS != 12 || r[0].CaughtUpS != 20 || r[0].TimeLostS != 10 ||
		!strings.Contains(r[0].Cause, "worker w1 (rank 1, host h, pid 101) died") {
		t.Fatalf("recoveries %+v", r)
	}
	if s := c.Status(); s.Generation != 1 || s.Restarts != 1 || s.LastCheckpoint != 5 {
		t.Fatalf("status generation %d restarts %d last checkpoint %d", s.Generation, s.Restarts, s.LastCheckpoint)
	}
	// The job finishes normally.
	stepAll(c, shard("w2", 10, 0), shard("w3", 10, 1), CheckpointCommitted{Step: 10}, prog("w2", 10, true), prog("w3", 10, true),
		Left{"w2", "stopped"}, Left{"w3", "stopped"})
	if c.Phase() != PhaseSucceeded {
		t.Fatalf("phase %s, want succeeded", c.Phase())
	}
}

// With no restarts left a failure aborts the job, saying so; with
// MaxRestarts 0 the abort is the one of a job without recovery.
func TestRecoveryRestartsExhausted(t *testing.T) {
	c := recoveryCore(2, RecoveryPolicy{MaxRestarts: 1})
	stepAll(c, joinEv(0), joinEv(1), Lost{"w1", "gone"}, rejoinEv(0), joinEv(5))
	if c.Phase() != PhaseRunning {
		t.Fatalf("phase %s after the first recovery", c.Phase())
	}
	cmds := c.Step(Lost{"w3", "gone again"})
	ab := commandsOf[AbortWorker](cmds)
	if c.Phase() != PhaseAborting || len(ab) != 1 || !strings.Contains(ab[0].Reason, "no restarts left (1 used, --max-restarts 1)") {
		t.Fatalf("phase %s, commands %v", c.Phase(), cmds)
	}

	plain := recoveryCore(2, RecoveryPolicy{})
	cmds = stepAll(plain, joinEv(0), joinEv(1), Lost{"w1", "gone"})
	if plain.Phase() != PhaseAborting || len(commandsOf[RejoinWorker](cmds)) != 0 || strings.Contains(fmt.Sprint(cmds), "restarts") {
		t.Fatalf("without recovery: phase %s, commands %v", plain.Phase(), cmds)
	}
}

// With AllowShrink the job goes on with the survivor alone (dp 1),
// without waiting for the replacement; the replacement waits as a standby
// and the job grows back at the next committed checkpoint, which counts
// no restart.
func TestRecoveryShrinksAndGrowsBack(t *testing.T) {
	c := recoveryCore(2, RecoveryPolicy{MaxRestarts: 2, AllowShrink: true})
	cmds := stepAll(c, joinEv(0), joinEv(1), prog("w0", 4, false), prog("w1", 4, false), Lost{"w1", "gone"})
	if ev := commandsOf[Evict](cmds); len(ev) != 1 || !ev[0].Replace {
		t.Fatalf("evictions %v: want the dead worker evicted and replaced", ev)
	}
	cmds = c.Step(rejoinEv(0))
	starts := commandsOf[StartWorker](cmds)
	if c.Phase() != PhaseRunning || len(starts) != 1 || starts[0].Plan.Mesh.DP != 1 || starts[0].ResumeStep != -1 {
		t.Fatalf("phase %s, commands %v: want the survivor started alone from the job's start", c.Phase(), cmds)
	}
	if r := c.Recoveries(); len(r) != 1 || !r[0].Shrunk || r[0].Mesh != "dp=1 sp=1 tp=1 ep=1" || r[0].StepsRedone != 4 {
		t.Fatalf("recoveries %+v", r)
	}
	// The replacement joins the running job as a standby: no start yet.
	cmds = c.Step(joinEv(9))
	if len(cmds) != 1 || len(commandsOf[Accept](cmds)) != 1 || c.Phase() != PhaseRunning {
		t.Fatalf("replacement while shrunk: %v, phase %s", cmds, c.Phase())
	}
	// A standby's progress or error changes nothing.
	if got := stepAll(c, prog("w3", 9, false), Failed{"w3", "odd"}); len(got) != 0 || c.Phase() != PhaseRunning {
		t.Fatalf("standby events gave %v, phase %s", got, c.Phase())
	}
	// Step 5 committed: the survivor rejoins, both start from step 5.
	cmds = stepAll(c, prog("w2", 5, false), shard("w2", 5, 0), CheckpointCommitted{Step: 5})
	if rj := commandsOf[RejoinWorker](cmds); len(rj) != 1 || rj[0].ID != "w2" || c.Phase() != PhaseRecovering {
		t.Fatalf("after the commit: %v, phase %s", cmds, c.Phase())
	}
	cmds = c.Step(rejoinEv(0))
	starts = commandsOf[StartWorker](cmds)
	if len(starts) != 2 || starts[0].Plan.Mesh.DP != 2 || starts[0].ResumeStep != 5 || starts[0].Generation != 2 {
		t.Fatalf("grow back: %v", cmds)
	}
	r := c.Recoveries()
	if len(r) != 2 || !r[1].Grow || r[1].Shrunk || c.Status().Restarts != 1 {
		t.Fatalf("recoveries %+v, restarts %d", r, c.Status().Restarts)
	}
}

// Shrinking needs a plan: when the last worker dies there is none, and the
// core asks for replacements once, then waits for them.
func TestRecoveryNothingToShrinkTo(t *testing.T) {
	c := recoveryCore(2, RecoveryPolicy{MaxRestarts: 3, AllowShrink: true})
	stepAll(c, joinEv(0), joinEv(1), Lost{"w1", "gone"}, rejoinEv(0))
	cmds := c.Step(Lost{"w2", "gone"})
	if ev := commandsOf[Evict](cmds); len(ev) != 1 || ev[0].Pid != 100 {
		t.Fatalf("commands %v", cmds)
	}
	cmds = stepAll(c, Tick{16 * time.Second})
	if ev := commandsOf[Evict](cmds); len(ev) != 0 {
		t.Fatalf("asked again: %v", cmds)
	}
	cmds = c.Step(joinEv(9))
	if starts := commandsOf[StartWorker](cmds); len(starts) != 1 || starts[0].Plan.Mesh.DP != 1 {
		t.Fatalf("a replacement alone: %v", cmds)
	}
}

// A survivor that does not rejoin (hung) is evicted after the straggler
// timeout and replaced; a recovery that runs past the rejoin timeout fails
// the job.
func TestRecoveryStragglerAndTimeout(t *testing.T) {
	c := recoveryCore(3, RecoveryPolicy{MaxRestarts: 3, RejoinTimeout: time.Minute, StragglerTimeout: 5 * time.Second})
	stepAll(c, joinEv(0), joinEv(1), joinEv(2), Tick{time.Second}, Lost{"w2", "gone"}, rejoinEv(0))
	if got := c.Step(Tick{5 * time.Second}); len(got) != 0 {
		t.Fatalf("evicted before the straggler timeout: %v", got)
	}
	cmds := c.Step(Tick{6 * time.Second})
	ev := commandsOf[Evict](cmds)
	if len(ev) != 1 || ev[0].Pid != 101 || ev[0].Host != "h" || !ev[0].Replace {
		t.Fatalf("commands %v: want worker pid 101 evicted and replaced", cmds)
	}
	cmds = c.Step(Tick{62 * time.Second})
	ab := commandsOf[AbortWorker](cmds)
	if c.Phase() != PhaseAborting || len(ab) != 1 || !strings.Contains(ab[0].Reason, "only 1 of 3 workers joined within --rejoin-timeout 1m0s") {
		t.Fatalf("phase %s, commands %v", c.Phase(), cmds)
	}
}

// A commit in flight when the failure happens is finished, and the next
// generation resumes from it; a complete step waiting behind it is
// committed too.
func TestRecoveryWaitsForCommits(t *testing.T) {
	c := recoveryCore(2, RecoveryPolicy{MaxRestarts: 1})
	stepAll(c, joinEv(0), joinEv(1), shard("w0", 5, 0), shard("w1", 5, 1), // commit of 5 in flight
		shard("w0", 10, 0), shard("w1", 10, 1), // 10 complete, queued
		Lost{"w1", "gone"}, rejoinEv(0))
	cmds := c.Step(joinEv(4))
	if len(commandsOf[StartWorker](cmds)) != 0 {
		t.Fatalf("started while a commit was in flight: %v", cmds)
	}
	cmds = c.Step(CheckpointCommitted{Step: 5})
	if cc := commandsOf[CommitCheckpoint](cmds); len(cc) != 1 || cc[0].Step != 10 {
		t.Fatalf("commands %v: want the queued step 10 committed", cmds)
	}
	cmds = c.Step(CheckpointCommitted{Step: 10})
	starts := commandsOf[StartWorker](cmds)
	if len(starts) != 2 || starts[0].ResumeStep != 10 {
		t.Fatalf("commands %v: want both ranks resumed from step 10", cmds)
	}
}

// A launched process's exit is its worker's death; an exit the core
// cannot place is no news with recovery on and fails the job without.
func TestRecoveryProcessExited(t *testing.T) {
	c := recoveryCore(2, RecoveryPolicy{MaxRestarts: 1})
	stepAll(c, joinEv(0), joinEv(1))
	if got := c.Step(ProcessExited{Pid: 999, Reason: "exit 1"}); len(got) != 0 || c.Phase() != PhaseRunning {
		t.Fatalf("unknown pid: %v, phase %s", got, c.Phase())
	}
	c.Step(ProcessExited{Pid: 101, Reason: "worker process 1 (pid 101) exited with signal killed"})
	if c.Phase() != PhaseRecovering || !strings.Contains(c.Recoveries()[0].Cause, "pid 101) died (worker process 1") {
		t.Fatalf("phase %s, recoveries %+v", c.Phase(), c.Recoveries())
	}
	// w0 (pid 100) was told to rejoin and dies before it does: replaced now.
	cmds := c.Step(ProcessExited{Pid: 100, Reason: "exit 1"})
	if ev := commandsOf[Evict](cmds); len(ev) != 1 || ev[0].Pid != 100 || !ev[0].Replace {
		t.Fatalf("commands %v: want pid 100 evicted and replaced", cmds)
	}
	plain := recoveryCore(2, RecoveryPolicy{})
	stepAll(plain, joinEv(0))
	if plain.Step(ProcessExited{Pid: 999, Reason: "worker process 3 exited with code 1"}); plain.Phase() != PhaseAborting {
		t.Fatalf("without recovery, a process exit before joining: phase %s", plain.Phase())
	}
}

// A core taking over a job starts its next generation from the last
// committed checkpoint and counts the takeover as a restart.
func TestRecoveryTakeover(t *testing.T) {
	req := PlanRequest{Mesh: parallel.Config{DP: 2, SP: 1, TP: 1, EP: 1}, Experts: 4, Heads: 2, SeqLen: 8}
	c := NewCore(CoreConfig{ExpectedWorkers: 2, TotalSteps: 10, Plan: func(ws []WorkerInfo) (Plan, error) { return MakePlan(req, ws) },
		DrainTimeout: time.Second, Recovery: RecoveryPolicy{MaxRestarts: 1},
		Takeover: &JobState{Phase: PhaseRunning, Generation: 2, Restarts: 2, LastCheckpoint: 5, Step: 8,
			Recoveries: []RecoveryRecord{{Generation: 1}, {Generation: 2}}}})
	cmds := stepAll(c, joinEv(0), joinEv(1))
	starts := commandsOf[StartWorker](cmds)
	if len(starts) != 2 || starts[0].Generation != 3 || starts[0].ResumeStep != 5 {
		t.Fatalf("starts %+v", starts)
	}
	r := c.Recoveries()
	if len(r) != 3 || r[2].Generation != 3 || r[2].StepsRedone != 3 || !strings.HasPrefix(r[2].Cause, "coordinator restarted") {
		t.Fatalf("recoveries %+v", r)
	}
	if s := c.Status(); s.Restarts != 3 || s.LastCheckpoint != 5 {
		t.Fatalf("status %+v", s)
	}
	// Restarts are counted across coordinators: none left (3 used of 1).
	c.Step(Lost{"w1", "gone"})
	if c.Phase() != PhaseAborting {
		t.Fatalf("phase %s, want aborting (no restarts left)", c.Phase())
	}
}

// The recovery traces against testdata/traces/recovery_*.golden (review
// aids: the assertions are in the tests above).
func TestRecoveryTraces(t *testing.T) {
	cases := map[string]struct {
		p      RecoveryPolicy
		n      int
		events []Event
	}{
		"replace": {RecoveryPolicy{MaxRestarts: 1}, 2, []Event{joinEv(0), joinEv(1), shard("w0", 5, 0), shard("w1", 5, 1),
			CheckpointCommitted{Step: 5}, prog("w0", 6, false), prog("w1", 6, false), Tick{time.Second},
			Lost{"w1", "command stream closed"}, rejoinEv(0), joinEv(5), prog("w2", 6, false), prog("w3", 6, false)}},
		"shrink": {RecoveryPolicy{MaxRestarts: 1, AllowShrink: true}, 3, []Event{joinEv(0), joinEv(1), joinEv(2),
			Failed{"w0", "receive from rank 2: timeout"}, Tick{2 * time.Second}, rejoinEv(0), rejoinEv(1), Tick{18 * time.Second}}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c := recoveryCore(tc.n, tc.p)
			var b strings.Builder
			for _, e := range tc.events {
				fmt.Fprintf(&b, "→ %s\n", fmtEvent(e))
				for _, cmd := range c.Step(e) {
					fmt.Fprintf(&b, "  ← %s\n", fmtCommand(cmd))
				}
				fmt.Fprintf(&b, "  = %s\n", c.Phase())
			}
			testkit.Golden(t, filepath.Join("testdata", "traces", "recovery_"+name+".golden"), b.String(), *update, "go test ./cluster -update")
		})
	}
}

// Random event sequences (logged seeds) never break the core's invariants:
// no more recoveries than allowed, generations only grow, every start of a
// generation resumes from the newest committed checkpoint, no worker of a
// forgotten generation is ever started, and the phase is a known one.
func TestRecoveryRandomEvents(t *testing.T) {
	for seed := uint64(1); seed <= 300; seed++ {
		rng := rand.New(rand.NewPCG(seed, 7))
		n := 1 + rng.IntN(4)
		p := RecoveryPolicy{MaxRestarts: rng.IntN(4), AllowShrink: rng.IntN(2) == 0, RejoinTimeout: 20 * time.Second, StragglerTimeout: 5 * time.Second}
		c := recoveryCore(n, p)
		now := time.Duration(0)
		gen, lastCommitted := 0, -1
		current := map[string]bool{} // IDs accepted and not forgotten
		var inFlight []int
		for i := 0; i < 200 && !c.Phase().Final(); i++ {
			var ev Event
			id := fmt.Sprintf("w%d", rng.IntN(3*n+6))
			switch k := rng.IntN(10); {
			case k < 2:
				ev = joinEv(rng.IntN(2 * n))
			case k < 3:
				ev = Lost{ID: id, Reason: "random"}
			case k < 4:
				ev = Failed{ID: id, Message: "random"}
			case k < 6:
				ev = prog(id, rng.IntN(11), rng.IntN(8) == 0)
			case k < 7:
				ev = shard(id, 5*(1+rng.IntN(2)), rng.IntN(n))
			case k < 8 && len(inFlight) > 0:
				ev = CheckpointCommitted{Step: inFlight[0]}
			case k < 9:
				ev = ProcessExited{Pid: 100 + rng.IntN(2*n), Reason: "random"}
			default:
				now += time.Duration(rng.IntN(4000)) * time.Millisecond
				ev = Tick{Now: now}
			}
			if cc, ok := ev.(CheckpointCommitted); ok {
				inFlight = inFlight[1:]
				lastCommitted = max(lastCommitted, cc.Step)
			}
			before := c.Phase()
			cmds := c.Step(ev)
			if c.Phase() == PhaseRecovering && before != PhaseRecovering {
				// Every ranked member was forgotten; only unranked
				// standbys (of a shrunk job) stay.
				kept := map[string]bool{}
				for _, w := range c.Status().Workers {
					if w.Rank >= 0 {
						t.Fatalf("seed %d: ranked worker %s kept into recovery", seed, w.Info.ID)
					}
					kept[w.Info.ID] = current[w.Info.ID]
				}
				current = kept
			}
			for _, cmd := range cmds {
				switch x := cmd.(type) {
				case Accept:
					current[x.ID] = true
				case CommitCheckpoint:
					inFlight = append(inFlight, x.Step)
				case StartWorker:
					if x.Generation < gen {
						t.Fatalf("seed %d: generation went back from %d to %d", seed, gen, x.Generation)
					}
					gen = x.Generation
					if x.Generation > 0 && x.ResumeStep != lastCommitted {
						t.Fatalf("seed %d: generation %d resumes from %d, last committed %d", seed, x.Generation, x.ResumeStep, lastCommitted)
					}
					if !current[x.ID] {
						t.Fatalf("seed %d: started %s, not a member of the current generation", seed, x.ID)
					}
				}
			}
			switch c.Phase() {
			case PhaseWaiting, PhaseRunning, PhaseRecovering, PhaseAborting, PhaseStopping, PhaseSucceeded, PhaseFailed, PhaseStopped:
			default:
				t.Fatalf("seed %d: unknown phase %q", seed, c.Phase())
			}
			failures := 0
			for _, r := range c.Recoveries() {
				if !r.Grow {
					failures++
				}
			}
			if s := c.Status(); s.Restarts > p.MaxRestarts || failures != s.Restarts {
				t.Fatalf("seed %d: %d restarts, %d failure records, policy %d", seed, s.Restarts, failures, p.MaxRestarts)
			}
		}
	}
}

// A mesh with expert parallelism shrinks to a layout it allows: of three
// survivors of dp=4 ep=2, two run (dp=2 ep=2) and the third waits as a
// standby, which the job grows back onto with the replacement.
func TestRecoveryShrinkExpertParallel(t *testing.T) {
	req := PlanRequest{Mesh: parallel.Config{DP: 4, SP: 1, TP: 1, EP: 2}, Experts: 4, Heads: 2, SeqLen: 8}
	c := NewCore(CoreConfig{ExpectedWorkers: 4, TotalSteps: 10, DrainTimeout: time.Second,
		Plan:       func(ws []WorkerInfo) (Plan, error) { return MakePlan(req, ws) },
		ShrinkPlan: func(ws []WorkerInfo) (Plan, error) { return shrinkPlan(req, ws) },
		Recovery:   RecoveryPolicy{MaxRestarts: 1, AllowShrink: true}})
	stepAll(c, joinEv(0), joinEv(1), joinEv(2), joinEv(3), Lost{"w3", "gone"}, rejoinEv(0), rejoinEv(1))
	cmds := c.Step(rejoinEv(2))
	starts := commandsOf[StartWorker](cmds)
	if len(starts) != 2 || starts[0].Plan.Mesh.String() != "dp=2 sp=1 tp=1 ep=2" || len(commandsOf[StopWorker](cmds)) != 0 {
		t.Fatalf("shrunk start: %v", cmds)
	}
	st := c.Status()
	if len(st.Workers) != 3 || st.Workers[2].Rank != -1 || st.Workers[2].State != wsJoined {
		t.Fatalf("status workers %+v: want the third survivor as an unranked standby", st.Workers)
	}
	cmds = stepAll(c, joinEv(9), shard("w4", 5, 0), shard("w5", 5, 1), CheckpointCommitted{Step: 5})
	if rj := commandsOf[RejoinWorker](cmds); len(rj) != 2 {
		t.Fatalf("grow back: %v", cmds)
	}
	cmds = stepAll(c, rejoinEv(0), rejoinEv(1))
	if starts := commandsOf[StartWorker](cmds); len(starts) != 4 || starts[0].Plan.Mesh.String() != "dp=4 sp=1 tp=1 ep=2" || starts[0].ResumeStep != 5 {
		t.Fatalf("grown start: %v", cmds)
	}
}

// Every generation has its own data-plane key; the first keeps the job's.
func TestDataPlaneTokenPerGeneration(t *testing.T) {
	if DataPlaneToken("tok", 0) != "tok" {
		t.Fatalf("generation 0 changed the token: %q", DataPlaneToken("tok", 0))
	}
	seen := map[string]int{}
	for g := 0; g < 5; g++ {
		k := DataPlaneKey(DataPlaneToken("tok", g))
		if prev, dup := seen[k]; dup {
			t.Fatalf("generations %d and %d share a data-plane key", prev, g)
		}
		seen[k] = g
	}
}

// The status text names the generation and restarts of a recovered job
// only.
func TestFormatStatusRestarts(t *testing.T) {
	c := recoveryCore(2, RecoveryPolicy{MaxRestarts: 2})
	stepAll(c, joinEv(0), joinEv(1))
	var plain strings.Builder
	if err := FormatStatus(&plain, statusToProto("j", c.Status())); err != nil {
		t.Fatal(err)
	}
	stepAll(c, Lost{"w1", "gone"}, rejoinEv(0), joinEv(5))
	var recovered strings.Builder
	if err := FormatStatus(&recovered, statusToProto("j", c.Status())); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(plain.String(), "generation") || !strings.Contains(recovered.String(), "generation 1 (1 restarts)") {
		t.Fatalf("status texts:\n%s\n%s", plain.String(), recovered.String())
	}
}
