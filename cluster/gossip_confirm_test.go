package cluster_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/cluster/internal/jobtest"
	"github.com/moetrain/moetrain/cluster/worker"
)

// blockingAgent runs a worker of c's job with a runner that reports its
// steps 5 ms apart, then waits for the job to end it.
func blockingAgent(ctx context.Context, _ int, c *cluster.Coordinator) error {
	run := func(ctx context.Context, spec worker.StartSpec) error {
		for s := 1; s <= spec.Job.Train.Steps && ctx.Err() == nil; s++ {
			// The last step carries a validation loss, which is never dropped.
			spec.Report(worker.ProgressUpdate{Step: s, Loss: 1, HasVal: s == spec.Job.Train.Steps, ValLoss: 1})
			time.Sleep(5 * time.Millisecond)
		}
		<-ctx.Done()
		return ctx.Err()
	}
	return worker.RunAgent(ctx, worker.AgentConfig{Coordinator: c.Addr(), Token: jobtest.Token, Host: "h",
		BindIP: "127.0.0.1", Membership: jobtest.FastGossip(), Log: zerolog.Nop(), Runner: run})
}

// A worker that gossip declares dead but that refutes it in time (it was
// starved, not dead) keeps the job running; one that does not refute within
// GossipConfirm is taken for dead, and the abort names it.
func TestCoordinatorGossipDeathNeedsConfirmation(t *testing.T) {
	const window = 300 * time.Millisecond
	r := jobtest.RunJob(t, 3, blockingAgent, func(c *cluster.Coordinator) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if !jobtest.WaitStep(ctx, t, c, 5) {
			return
		}
		c.GossipDead("w0")
		time.Sleep(window / 3)
		c.GossipAlive("w0") // refuted
		time.Sleep(2 * window)
		if s, err := cluster.QueryStatus(ctx, c.Addr(), "tok"); err != nil || s.Phase != string(cluster.PhaseRunning) {
			t.Errorf("after a refuted gossip death: phase %v, err %v; want running", s.GetPhase(), err)
		}
		t0 := time.Now()
		c.GossipDead("w2") // never refutes
		for {
			s, err := cluster.QueryStatus(ctx, c.Addr(), "tok")
			if err != nil || s.Phase != string(cluster.PhaseRunning) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if d := time.Since(t0); d < window {
			t.Errorf("unrefuted gossip death acted on after %v, before the %v window", d, window)
		}
	}, func(cfg *cluster.CoordinatorConfig) { cfg.GossipConfirm = window })
	if r.Res.Phase != cluster.PhaseFailed || !strings.Contains(r.Res.Reason, "worker w2") ||
		!strings.Contains(r.Res.Reason, "did not refute its death within 300ms") || strings.Contains(r.Res.Reason, "worker w0") {
		t.Fatalf("result %s: %s", r.Res.Phase, r.Res.Reason)
	}
}
