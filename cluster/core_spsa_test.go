package cluster

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// spsaCore is testCore(2) for an SPSA job that workers may join, running.
func spsaCore(t *testing.T) *Core {
	t.Helper()
	c := testCore(2)
	c.cfg.SPSAJoin, c.cfg.SPSAJoinTimeout, c.cfg.TotalSteps = true, time.Minute, 20
	c.Step(joinEv(0))
	if cmds := c.Step(joinEv(1)); len(cmds) != 3 || c.Phase() != PhaseRunning {
		t.Fatalf("start: %v, phase %s", cmds, c.Phase())
	}
	return c
}

func kinds(cmds []Command) string {
	var out []string
	for _, c := range cmds {
		out = append(out, fmtCommand(c))
	}
	return strings.Join(out, "; ")
}

// A worker joins a running SPSA job: it is started in the next member set's
// plan (the running ranks in place, itself after them); rank 0's log
// decides the boundary (the step after the one logged, also for a retried
// append); the set is published once every member is at the step after the
// boundary, and only then does the joiner count as a rank.
func TestCoreSPSAJoin(t *testing.T) {
	c := spsaCore(t)
	old := c.Plan()
	cmds := c.Step(joinEv(2))
	if len(cmds) != 2 {
		t.Fatalf("join: %s", kinds(cmds))
	}
	st, ok := cmds[1].(StartWorker)
	if !ok || st.ID != "w2" || st.Rank != 2 || st.Plan.Mesh.World() != 3 || st.Plan.Ranks[0].Worker.ID != old.Ranks[0].Worker.ID ||
		st.Plan.Ranks[1].Worker.ID != old.Ranks[1].Worker.ID || st.Plan.Validate() != nil {
		t.Fatalf("joiner's start: %s", kinds(cmds))
	}
	if !c.SPSAJoining("w2") || c.SPSAJoining("w0") {
		t.Fatal("SPSAJoining")
	}
	// No boundary until the joiner has replayed close to the log's end:
	// the running ranks go on meanwhile.
	if cmds := c.Step(SPSALogged{ID: "w0", Step: 3}); len(cmds) != 0 {
		t.Fatalf("a boundary before the joiner reported: %s", kinds(cmds))
	}
	c.Step(SPSAAtBoundary{ID: "w2", Step: 0})
	if cmds := c.Step(SPSALogged{ID: "w0", Step: spsaJoinLag}); len(cmds) != 0 {
		t.Fatalf("a boundary with the joiner %d steps behind: %s", spsaJoinLag, kinds(cmds))
	}
	c.Step(SPSAAtBoundary{ID: "w2", Step: 3})
	if cmds := c.Step(SPSALogged{ID: "w1", Step: 3}); len(cmds) != 0 {
		t.Fatalf("a log report of rank 1 decided the boundary: %s", kinds(cmds))
	}
	for range 2 { // the retry of an append gets the same answer
		if cmds := c.Step(SPSALogged{ID: "w0", Step: 3}); !reflect.DeepEqual(cmds, []Command{SPSAPause{After: 5}}) {
			t.Fatalf("logged step 3: %s", kinds(cmds))
		}
	}
	if cmds := c.Step(SPSALogged{ID: "w0", Step: 4}); len(cmds) != 0 {
		t.Fatalf("logged step 4: %s", kinds(cmds))
	}
	for _, e := range []SPSAAtBoundary{{"w0", 6}, {"w1", 6}, {"w2", 5}, {"w9", 6}} {
		if cmds := c.Step(e); len(cmds) != 0 {
			t.Fatalf("%+v: %s", e, kinds(cmds))
		}
	}
	if st := c.Status(); len(st.Workers) != 3 || st.Workers[2].Rank != -1 || st.Mesh != old.Mesh.String() {
		t.Fatalf("before the new set: %+v", st)
	}
	cmds = c.Step(SPSAAtBoundary{ID: "w2", Step: 6})
	if len(cmds) != 1 {
		t.Fatalf("every member ready: %s", kinds(cmds))
	}
	w, ok := cmds[0].(SPSAWorld)
	if !ok || w.Epoch != 1 || w.Start != 6 || w.Plan != st.Plan || c.Plan() != st.Plan {
		t.Fatalf("published %s, want the joiner's plan from step 6", kinds(cmds))
	}
	if c.SPSAJoining("w2") {
		t.Fatal("still joining after the set was published")
	}
	c.Step(prog("w0", 7, false))
	c.Step(prog("w1", 7, false))
	if st := c.Status(); st.Step != 6 || st.Workers[2].Rank != 2 || st.Workers[2].State != wsRunning || st.Mesh != w.Plan.Mesh.String() {
		t.Fatalf("after the new set: %+v", st)
	}
	// The joiner is a rank now: the job ends when all three are done.
	c.Step(prog("w0", 20, true))
	c.Step(prog("w1", 20, true))
	if c.Phase() != PhaseRunning {
		t.Fatalf("ended without the joiner: %s", c.Phase())
	}
	c.Step(prog("w2", 20, true))
	if c.Phase() != PhaseStopping {
		t.Fatalf("phase %s after every rank is done", c.Phase())
	}
}

// A worker that joins while a change is in flight waits for the next one,
// which starts as soon as the first set is published.
func TestCoreSPSAJoinQueued(t *testing.T) {
	c := spsaCore(t)
	c.Step(joinEv(2))
	if cmds := c.Step(joinEv(3)); len(cmds) != 1 {
		t.Fatalf("second joiner during a change: %s", kinds(cmds))
	}
	c.Step(SPSAAtBoundary{ID: "w2", Step: 0})
	c.Step(SPSALogged{ID: "w0", Step: 1})
	for _, id := range []string{"w0", "w1"} {
		c.Step(SPSAAtBoundary{ID: id, Step: 4})
	}
	cmds := c.Step(SPSAAtBoundary{ID: "w2", Step: 4})
	if len(cmds) != 2 {
		t.Fatalf("publish: %s", kinds(cmds))
	}
	if st, ok := cmds[1].(StartWorker); !ok || st.ID != "w3" || st.Rank != 3 || st.Plan.Mesh.World() != 4 {
		t.Fatalf("the queued joiner's start: %s", kinds(cmds))
	}
}

// A joiner that fails, dies or is not ready in time is told to abort and
// forgotten; members that already paused resume with the running set
// under a new epoch; the job goes on.
func TestCoreSPSAJoinCancelled(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ev    func(*Core) []Command
		pause bool
	}{
		{"failed", func(c *Core) []Command { return c.Step(Failed{ID: "w2", Message: "corrupt log"}) }, true},
		{"lost before the boundary", func(c *Core) []Command { return c.Step(Lost{ID: "w2", Reason: "killed"}) }, false},
		{"timeout", func(c *Core) []Command { return c.Step(Tick{Now: 2 * time.Minute}) }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := spsaCore(t)
			running := c.Plan()
			c.Step(joinEv(2))
			if tc.pause {
				c.Step(SPSAAtBoundary{ID: "w2", Step: 0})
				c.Step(SPSALogged{ID: "w0", Step: 1})
				c.Step(SPSAAtBoundary{ID: "w0", Step: 4})
			}
			cmds := tc.ev(c)
			got := kinds(cmds)
			if want := !strings.Contains(tc.name, "lost"); strings.Contains(got, "AbortWorker {ID:w2") != want {
				t.Fatalf("abort of the joiner %v: %s", want, got)
			}
			var world *SPSAWorld
			for _, cmd := range cmds {
				if w, ok := cmd.(SPSAWorld); ok {
					world = &w
				}
			}
			if tc.pause != (world != nil) || world != nil && (world.Plan != running || world.Start != 4 || world.Epoch != 1) {
				t.Fatalf("resume of the paused members: %s", got)
			}
			if c.Phase() != PhaseRunning || c.SPSAJoining("w2") || len(c.Status().Workers) != 2 {
				t.Fatalf("after the cancel: %s, %+v", c.Phase(), c.Status())
			}
			if cmds := c.Step(SPSALogged{ID: "w0", Step: 4}); len(cmds) != 0 {
				t.Fatalf("a pause without a change in flight: %s", kinds(cmds))
			}
		})
	}
}

// Too close to the end no boundary is set (the new set would run no step);
// without SPSAJoin a running job refuses a joiner as before.
func TestCoreSPSAJoinLimits(t *testing.T) {
	c := spsaCore(t)
	c.Step(joinEv(2))
	c.Step(SPSAAtBoundary{ID: "w2", Step: 17})
	if cmds := c.Step(SPSALogged{ID: "w0", Step: 17}); len(cmds) != 0 {
		t.Fatalf("a boundary at step 19 of 20: %s", kinds(cmds))
	}
	if cmds := c.Step(SPSALogged{ID: "w0", Step: 16}); !reflect.DeepEqual(cmds, []Command{SPSAPause{After: 18}}) {
		t.Fatalf("logged step 16 of 20 (one step left for the new set): %s", kinds(cmds))
	}
	plain := testCore(2)
	plain.Step(joinEv(0))
	plain.Step(joinEv(1))
	if cmds := plain.Step(joinEv(2)); len(cmds) != 1 || !strings.Contains(kinds(cmds), "Reject") {
		t.Fatalf("join of a job without SPSAJoin: %s", kinds(cmds))
	}
}
