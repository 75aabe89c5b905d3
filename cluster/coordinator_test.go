package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

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

// fastGossip detects a dead member in well under a second.
func fastGossip() MembershipConfig {
	return MembershipConfig{ProbeInterval: 100 * time.Millisecond, ProbeTimeout: 50 * time.Millisecond,
		SuspicionMult: 2, GossipInterval: 50 * time.Millisecond}
}

func newTestCoordinator(t *testing.T, n int, opts ...func(*CoordinatorConfig)) *Coordinator {
	t.Helper()
	job := tinyJob()
	job.Train.Steps = 5
	b, err := JobJSON(job)
	if err != nil {
		t.Fatal(err)
	}
	cfg := CoordinatorConfig{Listen: "127.0.0.1:0", Token: "tok", JobID: t.Name(), Workers: n,
		TotalSteps: 5, Plan: PlanRequestFor(job), JobConfigJSON: b, DrainTimeout: 5 * time.Second,
		Membership: fastGossip(), Log: zerolog.Nop()}
	for _, o := range opts {
		o(&cfg)
	}
	c, err := NewCoordinator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

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

type jobRun struct {
	res    Result
	err    error
	agents []error
}

// runJob runs a coordinator and n in-process agents to the end.
func runJob(t *testing.T, n int, runner Runner, during func(c *Coordinator)) jobRun {
	t.Helper()
	return runJobWith(t, n, runner, during)
}

// runJobWith is runJob with coordinator options.
func runJobWith(t *testing.T, n int, runner Runner, during func(c *Coordinator), opts ...func(*CoordinatorConfig)) jobRun {
	t.Helper()
	c := newTestCoordinator(t, n, opts...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out jobRun
	done := make(chan struct{})
	go func() { out.res, out.err = c.Run(ctx); close(done) }()
	out.agents = make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out.agents[i] = RunAgent(ctx, AgentConfig{Coordinator: c.Addr(), Token: "tok", Host: "h", BindIP: "127.0.0.1",
				Membership: fastGossip(), Log: zerolog.Nop(), Runner: runner,
				NewDataPlane: func(string) (DataPlane, error) { return fakeData{fmt.Sprintf("127.0.0.1:%d", 1000+i)}, nil }})
		}()
	}
	if during != nil {
		during(c)
	}
	wg.Wait()
	<-done
	return out
}

func TestCoordinatorRunsJob(t *testing.T) {
	r := runJob(t, 3, stepper(-1, 0, false), nil)
	if r.err != nil || r.res.Phase != PhaseSucceeded {
		t.Fatalf("result %+v, %v", r.res, r.err)
	}
	for i, err := range r.agents {
		if err != nil {
			t.Errorf("agent %d: %v", i, err)
		}
	}
	s := r.res.Status
	if s.Step != 5 || !s.HasVal || s.ValLoss != 4 || len(s.Workers) != 3 || len(r.res.Curve) == 0 {
		t.Errorf("status %+v curve %v", s, r.res.Curve)
	}
}

func TestCoordinatorAbortsOnRunnerError(t *testing.T) {
	r := runJob(t, 3, stepper(1, 3, true), nil)
	if r.res.Phase != PhaseFailed || !strings.Contains(r.res.Reason, "(rank 1, host h") ||
		!strings.Contains(r.res.Reason, "injected failure at step 3") {
		t.Fatalf("result %s: %s", r.res.Phase, r.res.Reason)
	}
	for i, err := range r.agents {
		var ab *AbortedError
		if !errors.As(err, &ab) || ab.Reason != r.res.Reason {
			t.Errorf("agent %d: %v, want the abort with the job's reason", i, err)
		}
	}
}

// waitStep polls c's status (token "tok") until the job has reached step;
// false, with the error reported on t, when a query fails first.
func waitStep(ctx context.Context, t *testing.T, c *Coordinator, step int64) bool {
	t.Helper()
	for {
		s, err := QueryStatus(ctx, c.Addr(), "tok")
		if err != nil {
			t.Errorf("status: %v", err)
			return false
		}
		if s.Step >= step {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestCoordinatorStopRequest(t *testing.T) {
	r := runJob(t, 2, stepper(-1, 0, true), func(c *Coordinator) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if !waitStep(ctx, t, c, 5) {
			return
		}
		if err := RequestStop(ctx, c.Addr(), "tok", "enough"); err != nil {
			t.Error(err)
		}
	})
	if r.res.Phase != PhaseStopped || r.res.Reason != "enough" {
		t.Fatalf("result %s: %s", r.res.Phase, r.res.Reason)
	}
	for i, err := range r.agents {
		if err != nil {
			t.Errorf("agent %d: %v (a stop is a clean exit)", i, err)
		}
	}
}

func TestCoordinatorRefusals(t *testing.T) {
	c := newTestCoordinator(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() { _, _ = c.Run(ctx); close(done) }()
	agent := func(token string, runner Runner) error {
		return RunAgent(ctx, AgentConfig{Coordinator: c.Addr(), Token: token, BindIP: "127.0.0.1", Log: zerolog.Nop(),
			Membership: fastGossip(), Runner: runner, JoinTimeout: 5 * time.Second,
			NewDataPlane: func(string) (DataPlane, error) { return fakeData{"127.0.0.1:1"}, nil }})
	}
	err := agent("bad", nil)
	var ref *RefusedError
	if !errors.As(err, &ref) || !strings.Contains(err.Error(), "wrong job token") {
		t.Fatalf("wrong token: %v", err)
	}
	// A second coordinator on the same port is refused, naming the address.
	if _, err := NewCoordinator(CoordinatorConfig{Listen: c.Addr(), Token: "tok", Workers: 1}); err == nil ||
		!strings.Contains(err.Error(), "address already in use") || !strings.Contains(err.Error(), c.Addr()) {
		t.Fatalf("busy port: %v", err)
	}
	// The one expected worker joins; a late one is refused while the job runs.
	first := make(chan error, 1)
	go func() { first <- agent("tok", stepper(-1, 0, true)) }()
	for {
		s, err := QueryStatus(ctx, c.Addr(), "tok")
		if err != nil {
			t.Fatal(err)
		}
		if s.Phase == string(PhaseRunning) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := agent("tok", nil); !errors.As(err, &ref) || !strings.Contains(err.Error(), "not accepting workers") {
		t.Fatalf("late worker: %v", err)
	}
	if err := RequestStop(ctx, c.Addr(), "tok", ""); err != nil {
		t.Fatal(err)
	}
	if err := <-first; err != nil {
		t.Errorf("stopped worker: %v", err)
	}
	<-done
}

// A member that vanishes without leaving is reported by gossip.
func TestMembershipDetectsDeadNode(t *testing.T) {
	gone := make(chan string, 4)
	a, err := StartMembership("a", []byte(`{"role":"a"}`), "tok", fastGossip(), zerolog.Nop(), func(n string) { gone <- n })
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(time.Second)
	b, err := StartMembership("b", nil, "tok", fastGossip(), zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Join(a.Addr()); err != nil {
		t.Fatal(err)
	}
	// A member with another token cannot join (different gossip key).
	c, err := StartMembership("c", nil, "other", fastGossip(), zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(100 * time.Millisecond)
	if err := c.Join(a.Addr()); err == nil {
		t.Errorf("a member with another job token joined")
	}
	_ = b.ml.Shutdown() // dies: no leave message
	select {
	case n := <-gone:
		if n != "b" {
			t.Fatalf("gossip reported %q, want b", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("dead member not detected within 10 s")
	}
}

func TestGossipKey(t *testing.T) {
	k1, k2 := GossipKey("a"), GossipKey("b")
	if len(k1) != 32 || string(k1) == string(k2) || string(GossipKey("a")) != string(k1) {
		t.Fatalf("keys %x %x", k1, k2)
	}
}

// A worker that joins but never opens its command stream (it died in
// between) is dropped, so the job does not wait for it forever.
func TestCoordinatorDropsSilentJoiner(t *testing.T) {
	c := newTestCoordinator(t, 2, func(cfg *CoordinatorConfig) { cfg.StreamOpenTimeout = 200 * time.Millisecond })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() { _, _ = c.Run(ctx); close(done) }()
	conn, _, err := dialCoordinator(c.Addr(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := pb.NewCoordinatorClient(conn).Join(ctx, &pb.JoinRequest{Token: ControlCredential("tok"), Host: "h", DataAddr: "127.0.0.1:9"}); err != nil {
		t.Fatal(err)
	}
	for {
		s, err := QueryStatus(ctx, c.Addr(), "tok")
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
	if err := RequestStop(ctx, c.Addr(), "tok", ""); err != nil {
		t.Fatal(err)
	}
	<-done
}
