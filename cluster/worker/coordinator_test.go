package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/cluster/internal/jobtest"
	pb "github.com/moetrain/moetrain/cluster/proto"
	"github.com/moetrain/moetrain/collective"
)

// fakeData is a data plane that is never connected (the fake runners do not
// communicate).
type fakeData struct{ addr string }

func (f fakeData) Addr() string { return f.addr }
func (f fakeData) Connect(context.Context, int, []string, string, DataPlaneLimits) (collective.Transport, error) {
	return nil, errors.New("fake data plane")
}
func (f fakeData) Close() error { return nil }

// stepper is a fake runner: it reports steps 1..Steps, failing at failStep
// on failRank, then returns; with block it waits for cancellation instead.
func stepper(failRank, failStep int, block bool) Runner {
	return func(ctx context.Context, spec StartSpec) error {
		for s := 1; s <= spec.Job.Train.Steps; s++ {
			if spec.Rank == failRank && s == failStep {
				return fmt.Errorf("injected failure at step %d", s)
			}
			spec.Report(ProgressUpdate{Step: s, Loss: 5 - float64(s)/10, TokensPerSec: 100, HasVal: s%5 == 0, ValLoss: 4})
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(5 * time.Millisecond):
			}
		}
		if block {
			<-ctx.Done()
			return ctx.Err()
		}
		return nil
	}
}

// runJobWith runs a coordinator and n in-process agents with runner to the
// end of the job (jobtest.RunJob), with coordinator options.
func runJobWith(t *testing.T, n int, runner Runner, during func(c *cluster.Coordinator), opts ...func(*cluster.CoordinatorConfig)) jobtest.Run {
	t.Helper()
	return jobtest.RunJob(t, n, func(ctx context.Context, i int, c *cluster.Coordinator) error {
		return RunAgent(ctx, AgentConfig{Coordinator: c.Addr(), Token: jobtest.Token, Host: "h", BindIP: "127.0.0.1",
			Membership: jobtest.FastGossip(), Log: zerolog.Nop(), Runner: runner,
			NewDataPlane: func(string) (DataPlane, error) { return fakeData{fmt.Sprintf("127.0.0.1:%d", 1000+i)}, nil }})
	}, during, opts...)
}

func TestCoordinatorRunsJob(t *testing.T) {
	r := runJobWith(t, 3, stepper(-1, 0, false), nil)
	if r.Err != nil || r.Res.Phase != cluster.PhaseSucceeded {
		t.Fatalf("result %+v, %v", r.Res, r.Err)
	}
	for i, err := range r.Agents {
		if err != nil {
			t.Errorf("agent %d: %v", i, err)
		}
	}
	s := r.Res.Status
	if s.Step != 5 || !s.HasVal || s.ValLoss != 4 || len(s.Workers) != 3 || len(r.Res.Curve) == 0 {
		t.Errorf("status %+v curve %v", s, r.Res.Curve)
	}
}

func TestCoordinatorAbortsOnRunnerError(t *testing.T) {
	r := runJobWith(t, 3, stepper(1, 3, true), nil)
	if r.Res.Phase != cluster.PhaseFailed || !strings.Contains(r.Res.Reason, "(rank 1, host h") ||
		!strings.Contains(r.Res.Reason, "injected failure at step 3") {
		t.Fatalf("result %s: %s", r.Res.Phase, r.Res.Reason)
	}
	for i, err := range r.Agents {
		var ab *AbortedError
		if !errors.As(err, &ab) || ab.Reason != r.Res.Reason {
			t.Errorf("agent %d: %v, want the abort with the job's reason", i, err)
		}
	}
}

func TestCoordinatorStopRequest(t *testing.T) {
	r := runJobWith(t, 2, stepper(-1, 0, true), func(c *cluster.Coordinator) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if !jobtest.WaitStep(ctx, t, c, 5) {
			return
		}
		if err := cluster.RequestStop(ctx, c.Addr(), "tok", "enough"); err != nil {
			t.Error(err)
		}
	})
	if r.Res.Phase != cluster.PhaseStopped || r.Res.Reason != "enough" {
		t.Fatalf("result %s: %s", r.Res.Phase, r.Res.Reason)
	}
	for i, err := range r.Agents {
		if err != nil {
			t.Errorf("agent %d: %v (a stop is a clean exit)", i, err)
		}
	}
}

func TestCoordinatorRefusals(t *testing.T) {
	c := jobtest.NewCoordinator(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() { _, _ = c.Run(ctx); close(done) }()
	agent := func(token string, runner Runner) error {
		return RunAgent(ctx, AgentConfig{Coordinator: c.Addr(), Token: token, BindIP: "127.0.0.1", Log: zerolog.Nop(),
			Membership: jobtest.FastGossip(), Runner: runner, JoinTimeout: 5 * time.Second,
			NewDataPlane: func(string) (DataPlane, error) { return fakeData{"127.0.0.1:1"}, nil }})
	}
	err := agent("bad", nil)
	var ref *RefusedError
	if !errors.As(err, &ref) || !strings.Contains(err.Error(), "wrong job token") {
		t.Fatalf("wrong token: %v", err)
	}
	// A second coordinator on the same port is refused, naming the address.
	if _, err := cluster.NewCoordinator(cluster.CoordinatorConfig{Listen: c.Addr(), Token: "tok", Workers: 1}); err == nil ||
		!strings.Contains(err.Error(), "address already in use") || !strings.Contains(err.Error(), c.Addr()) {
		t.Fatalf("busy port: %v", err)
	}
	// The one expected worker joins; a late one is refused while the job runs.
	first := make(chan error, 1)
	go func() { first <- agent("tok", stepper(-1, 0, true)) }()
	for {
		s, err := cluster.QueryStatus(ctx, c.Addr(), "tok")
		if err != nil {
			t.Fatal(err)
		}
		if s.Phase == string(cluster.PhaseRunning) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := agent("tok", nil); !errors.As(err, &ref) || !strings.Contains(err.Error(), "not accepting workers") {
		t.Fatalf("late worker: %v", err)
	}
	if err := cluster.RequestStop(ctx, c.Addr(), "tok", ""); err != nil {
		t.Fatal(err)
	}
	if err := <-first; err != nil {
		t.Errorf("stopped worker: %v", err)
	}
	<-done
}

// A worker that joins but never opens its command stream (it died in
// between) is dropped, so the job does not wait for it forever.
func TestCoordinatorDropsSilentJoiner(t *testing.T) {
	c := jobtest.NewCoordinator(t, 2, func(cfg *cluster.CoordinatorConfig) { cfg.StreamOpenTimeout = 200 * time.Millisecond })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() { _, _ = c.Run(ctx); close(done) }()
	conn, _, err := cluster.DialCoordinator(c.Addr(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := pb.NewCoordinatorClient(conn).Join(ctx, &pb.JoinRequest{Token: cluster.ControlCredential("tok"), Host: "h", DataAddr: "127.0.0.1:9"}); err != nil {
		t.Fatal(err)
	}
	for {
		s, err := cluster.QueryStatus(ctx, c.Addr(), "tok")
		if err != nil {
			t.Fatal(err)
		}
		if len(s.Workers) == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the silent worker was never dropped")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := cluster.RequestStop(ctx, c.Addr(), "tok", ""); err != nil {
		t.Fatal(err)
	}
	<-done
}
