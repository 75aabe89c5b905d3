package cluster

import (
	"flag"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moetrain/moetrain/checkpoint"
	"github.com/moetrain/moetrain/internal/testkit"
	"github.com/moetrain/moetrain/parallel"
)

var update = flag.Bool("update", false, "rewrite golden files")

func testCore(n int) *Core {
	return NewCore(CoreConfig{
		ExpectedWorkers: n,
		TotalSteps:      10,
		Plan: func(ws []WorkerInfo) (Plan, error) {
			return MakePlan(PlanRequest{Mesh: parallel.DefaultConfig(), Experts: 4, Heads: 2, SeqLen: 8}, ws)
		},
		JoinTimeout:   30 * time.Second,
		DrainTimeout:  5 * time.Second,
		FailureGrace:  time.Second,
		CommitTimeout: 90 * time.Second,
	})
}

func fmtEvent(e Event) string {
	switch e := e.(type) {
	case Joined:
		return fmt.Sprintf("Joined host=%s addr=%s pid=%d", e.Info.Host, e.Info.DataAddr, e.Info.Pid)
	case Tick:
		return fmt.Sprintf("Tick %v", e.Now)
	case ShardWritten:
		if e.Err != "" {
			return fmt.Sprintf("ShardWritten %s step=%d err=%q", e.ID, e.Step, e.Err)
		}
		return fmt.Sprintf("ShardWritten %s step=%d rank=%d file=%s", e.ID, e.Step, e.Shard.Rank, e.Shard.File)
	}
	return fmt.Sprintf("%T %+v", e, e)
}

func fmtCommand(c Command) string {
	switch x := c.(type) {
	case StartWorker:
		return fmt.Sprintf("StartWorker %s rank=%d mesh=%s addrs=%v", x.ID, x.Rank, x.Plan.Mesh, x.Plan.Addrs())
	case Accept:
		return fmt.Sprintf("Accept {ID:%s}", x.ID)
	case CommitCheckpoint:
		var files []string
		for _, sh := range x.Shards {
			files = append(files, fmt.Sprintf("%d:%s", sh.Rank, sh.File))
		}
		return fmt.Sprintf("CommitCheckpoint step=%d shards=%v", x.Step, files)
	}
	return strings.TrimPrefix(fmt.Sprintf("%T %+v", c, c), "cluster.")
}

func joinEv(i int) Joined {
	return Joined{Info: WorkerInfo{Host: "h", DataAddr: fmt.Sprintf("h:%d", 9000+i), Pid: 100 + i}}
}

func shard(id string, step, rank int) ShardWritten {
	return ShardWritten{ID: id, Step: step, Shard: checkpoint.ShardInfo{File: checkpoint.ShardName(rank), Rank: rank}}
}

func prog(id string, step int, done bool) Progress {
	return Progress{ID: id, Step: step, Loss: 5 - float64(step)/10, TokensPerSec: 100, Done: done}
}

// traceCases are deterministic event sequences whose command traces are
// compared against testdata/traces/<name>.golden (go test -update rewrites).
var traceCases = map[string]struct {
	n      int
	events []Event
	final  Phase
}{
	"success": {2, []Event{joinEv(0), joinEv(1), prog("w0", 5, false), prog("w1", 5, false),
		prog("w0", 10, true), prog("w1", 10, true), Left{"w0", "stopped"}, Lost{"w1", "stream closed"}}, PhaseSucceeded},
	"worker_killed": {3, []Event{joinEv(0), joinEv(1), joinEv(2), prog("w0", 3, false), Tick{time.Second},
		Lost{"w1", "command stream closed"}, Failed{"w0", "allreduce: peer rank 1 closed"},
		Left{"w0", "aborted"}, Left{"w2", "aborted"}}, PhaseFailed},
	"error_then_death": {3, []Event{joinEv(0), joinEv(1), joinEv(2),
		Failed{"w0", "allreduce: peer rank 1: connection reset"}, Lost{"w1", "gossip: node dead"},
		Left{"w0", "aborted"}, Left{"w2", "aborted"}}, PhaseFailed},
	"leave_before_start": {2, []Event{joinEv(0), Lost{"w0", "stream closed"}, joinEv(1), joinEv(2),
		prog("w1", 10, true), prog("w2", 10, true), Left{"w1", "done"}, Left{"w2", "done"}}, PhaseSucceeded},
	"join_while_running": {1, []Event{joinEv(0), joinEv(1), StopRequested{"operator"}, Left{"w0", "stopped"}}, PhaseStopped},
	"join_timeout":       {3, []Event{joinEv(0), Tick{10 * time.Second}, Tick{31 * time.Second}, Left{"w0", "aborted"}}, PhaseFailed},
	"drain_timeout": {2, []Event{joinEv(0), joinEv(1), Failed{"w1", "out of memory"}, Tick{500 * time.Millisecond},
		Tick{time.Second}, Left{"w1", "failed"}, Tick{6 * time.Second}, Left{"w0", "late"}}, PhaseFailed},
	"plan_error": {0, nil, ""}, // filled in below: a planner that refuses
	// Checkpoints: step 5 commits as soon as both ranks wrote it; the job
	// ends only after the final step's commit, reported after both are done.
	"checkpoint_commit": {2, []Event{joinEv(0), joinEv(1), shard("w1", 5, 1), prog("w0", 5, false), shard("w0", 5, 0),
		prog("w1", 5, false), CheckpointCommitted{Step: 5}, shard("w0", 10, 0), prog("w0", 10, true), shard("w1", 10, 1),
		prog("w1", 10, true), Tick{2 * time.Second}, CheckpointCommitted{Step: 10}, Left{"w0", "stopped"}, Left{"w1", "stopped"}}, PhaseSucceeded},
	// Rank 1 dies while writing step 10: step 5 stays the last published,
	// step 10 is dropped (its temporary directory is cleaned at next start).
	"checkpoint_worker_killed": {2, []Event{joinEv(0), joinEv(1), shard("w0", 5, 0), shard("w1", 5, 1),
		CheckpointCommitted{Step: 5}, shard("w0", 10, 0), Lost{"w1", "command stream closed"}, Left{"w0", "aborted"}}, PhaseFailed},
	// A rank's write fails: the job fails naming it.
	"checkpoint_write_failed": {2, []Event{joinEv(0), joinEv(1), shard("w1", 5, 1),
		ShardWritten{ID: "w0", Step: 5, Err: "no space left on device"}, Left{"w0", "aborted"}, Left{"w1", "aborted"}}, PhaseFailed},
	// A commit that fails, and one that hangs past CommitTimeout.
	"checkpoint_commit_failed": {2, []Event{joinEv(0), joinEv(1), shard("w0", 5, 0), shard("w1", 5, 1),
		CheckpointCommitted{Step: 5, Err: "shard-00001.mtck: checksum mismatch"}, Left{"w0", "aborted"}, Left{"w1", "aborted"}}, PhaseFailed},
	"checkpoint_commit_timeout": {2, []Event{joinEv(0), joinEv(1), shard("w0", 5, 0), shard("w1", 5, 1), Tick{time.Minute},
		Tick{2 * time.Minute}, Left{"w0", "aborted"}, Left{"w1", "aborted"}}, PhaseFailed},
	// Every rank says it is done but rank 1 never wrote its final shard.
	"checkpoint_missing_at_end": {2, []Event{joinEv(0), joinEv(1), shard("w0", 10, 0), prog("w0", 10, true),
		prog("w1", 10, true), Left{"w0", "aborted"}, Left{"w1", "aborted"}}, PhaseFailed},
}

func TestCoreTraces(t *testing.T) {
	for name, tc := range traceCases {
		t.Run(name, func(t *testing.T) {
			c := testCore(tc.n)
			events, final := tc.events, tc.final
			if name == "plan_error" {
				c = NewCore(CoreConfig{ExpectedWorkers: 2, TotalSteps: 10, DrainTimeout: time.Second,
					Plan: func(ws []WorkerInfo) (Plan, error) {
						return MakePlan(PlanRequest{Mesh: parallel.Config{TP: 2, SP: 1, EP: 1}, Experts: 4, Heads: 3, SeqLen: 8}, ws)
					}})
				events, final = []Event{joinEv(0), joinEv(1), Left{"w0", "aborted"}, Left{"w1", "aborted"}}, PhaseFailed
			}
			var b strings.Builder
			for _, e := range events {
				fmt.Fprintf(&b, "→ %s\n", fmtEvent(e))
				for _, cmd := range c.Step(e) {
					fmt.Fprintf(&b, "  ← %s\n", fmtCommand(cmd))
				}
				fmt.Fprintf(&b, "  = %s\n", c.Phase())
			}
			if c.Phase() != final {
				t.Errorf("final phase %s, want %s", c.Phase(), final)
			}
			testkit.Golden(t, filepath.Join("testdata", "traces", name+".golden"), b.String(), *update, "go test ./cluster -update")
		})
	}
}

// The same events always give the same commands.
func TestCoreDeterministic(t *testing.T) {
	tc := traceCases["worker_killed"]
	run := func() string {
		c := testCore(tc.n)
		var b strings.Builder
		for _, e := range tc.events {
			for _, cmd := range c.Step(e) {
				b.WriteString(fmtCommand(cmd) + "\n")
			}
		}
		return b.String()
	}
	if a, b := run(), run(); a != b {
		t.Fatalf("two runs differ:\n%s\n%s", a, b)
	}
}

func TestCoreNamesDeadWorker(t *testing.T) {
	c := testCore(3)
	for i := 0; i < 3; i++ {
		c.Step(joinEv(i))
	}
	// The survivors' collective errors arrive before the death is noticed.
	c.Step(Failed{"w0", "allreduce: peer rank 2 closed the connection"})
	c.Step(Lost{"w2", "command stream closed"})
	c.Step(Left{"w0", "aborted"})
	cmds := c.Step(Left{"w1", "aborted"})
	if len(cmds) != 1 {
		t.Fatalf("commands %v", cmds)
	}
	f := cmds[0].(Finish)
	if f.Phase != PhaseFailed || !strings.HasPrefix(f.Reason, "worker w2 (rank 2, host h, pid 102) died") {
		t.Fatalf("finish %+v does not name the dead worker first", f)
	}
}

func TestCoreStatus(t *testing.T) {
	c := testCore(2)
	c.Step(joinEv(0))
	c.Step(joinEv(1))
	c.Step(prog("w0", 4, false))
	c.Step(prog("w1", 3, false))
	c.Step(Progress{ID: "w0", Step: 4, Loss: 4.6, TokensPerSec: 100, HasVal: true, ValLoss: 4.5})
	s := c.Status()
	if s.Phase != PhaseRunning || s.Step != 3 || s.TokensPerSec != 200 || !s.HasVal || s.ValLoss != 4.5 ||
		len(s.Workers) != 2 || s.Workers[1].Rank != 1 || s.Mesh != "dp=2 sp=1 tp=1 ep=1" || s.LastCheckpoint != -1 {
		t.Fatalf("status %+v", s)
	}
}

// A rank that reports its shard of a step twice (a repeated RPC) while that
// step waits behind another step's commit does not queue a second commit.
func TestCoreRepeatedShardReportCommitsOnce(t *testing.T) {
	c := testCore(2)
	commits := map[int]int{}
	for _, e := range []Event{joinEv(0), joinEv(1), shard("w0", 5, 0), shard("w1", 5, 1), // commit 5 in flight
		shard("w0", 10, 0), shard("w1", 10, 1), shard("w1", 10, 1), // step 10 complete, waiting; reported twice
		CheckpointCommitted{Step: 5}, CheckpointCommitted{Step: 10}} {
		for _, cmd := range c.Step(e) {
			if cc, ok := cmd.(CommitCheckpoint); ok {
				commits[cc.Step]++
			}
		}
	}
	if commits[5] != 1 || commits[10] != 1 {
		t.Fatalf("commits issued per step: %v, want one each of 5 and 10", commits)
	}
	if c.Phase() != PhaseRunning {
		t.Fatalf("phase %s after a repeated report, want running", c.Phase())
	}
}
